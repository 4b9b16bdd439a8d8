"""What the pipeline remembers between runs: per-stage completion markers and the manifest.

A stage is complete when its marker under ``OUTPUT/.pipeline/`` carries the same key as now
and its output's own completion file exists. The key hashes the stage's resolved config
(paths and all) and the keys of the stages it reads, so changing a stage's config, or
re-running anything upstream, re-runs it and everything after it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import io as eio

# fields that decide where a stage runs, not what it produces
VOLATILE = frozenset({"ray_address", "num_cpus", "num_cpus_cluster", "force"})
PACKAGES = ("embedforge", "ray", "torch", "transformers", "sentence-transformers", "deepspeed",
            "peft", "mteb", "faiss-cpu", "faiss-gpu-cu12", "openai", "pydantic", "pyarrow")


def _untracked(obj: Any) -> Any:
    """``obj`` without ``tracking`` sections at any depth: where a stage's run is recorded
    (MLflow) is not what it produces, so changing it must not re-run the stage."""
    if isinstance(obj, dict):
        return {k: _untracked(v) for k, v in obj.items() if k != "tracking"}
    if isinstance(obj, list):
        return [_untracked(v) for v in obj]
    return obj


def stage_key(config: dict[str, Any], upstream: list[str]) -> str:
    stable = {k: v for k, v in _untracked(config).items() if k not in VOLATILE}
    blob = json.dumps({"config": stable, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def marker_path(output: str, stage: str) -> str:
    return eio.join(output, ".pipeline", f"{stage}.json")


def is_complete(output: str, stage: str, key: str, done_file: str | None) -> bool:
    path = marker_path(output, stage)
    if not eio.exists(path):
        return False
    if eio.read_json(path).get("key") != key:
        return False
    return done_file is None or eio.exists(done_file)


def mark_complete(output: str, stage: str, key: str, record: dict[str, Any]) -> None:
    eio.write_json({"key": key, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record},
                   marker_path(output, stage))


def read_marker(output: str, stage: str) -> dict[str, Any]:
    return eio.read_json(marker_path(output, stage))


def versions() -> dict[str, Any]:
    """Python, platform, package versions and the git commit: enough to rebuild the run."""
    pkgs = {}
    for name in PACKAGES:
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    commit = None
    try:
        root = Path(__file__).resolve().parents[3]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": pkgs,
            "git_commit": commit}


class Manifest:
    """OUTPUT/manifest.json, rewritten after every stage so a stopped run still has one."""

    def __init__(self, output: str, pipeline: dict[str, Any]):
        self.path = eio.join(output, "manifest.json")
        self.data: dict[str, Any] = {"pipeline": pipeline, "versions": versions(),
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     "stages": {}}

    def record(self, stage: str, entry: dict[str, Any]) -> None:
        self.data["stages"][stage] = entry
        self.save()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()

    def save(self) -> None:
        eio.write_json(self.data, self.path)
