"""Shared fixtures: real Ray clusters (1 node, 2 nodes) and the shared public data."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMBEDFORGE_SHARED_DATA", ROOT.parent / "shared" / "data"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# repository tooling (dashboards/) is imported by tests but is not installed
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read-only public data). Without it, tests needing it are skipped on a
    developer's machine and fail under CI (``CI`` set), where a silent skip would hide them."""
    if not (SHARED_DATA / "README.md").exists():
        message = f"shared data not found at {SHARED_DATA} (set EMBEDFORGE_SHARED_DATA)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="module")
def ray_local():
    """A private 1-node Ray cluster in its own temp dir (never joins another cluster)."""
    import ray

    from embedforge.cluster import short_temp_dir

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = short_temp_dir()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
             log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_two_nodes():
    """A 2-node cluster (``ray.cluster_utils.Cluster``): head + one worker node, 1 CPU each."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("EMBEDFORGE_UPDATE_GOLDEN", "").lower() not in ("", "0", "false")


class Golden:
    """The recorded values of one ``tests/golden/NAME.json``: what a deterministic path learnt.

    ``check(key, value)`` compares ``value`` with the recorded one (floats, and lists of them,
    within ``rel``/``abs``; everything else exactly). With ``EMBEDFORGE_UPDATE_GOLDEN=1`` it
    records ``value`` instead, and the test then fails on purpose: a changed golden value must
    reach a commit through ``git diff tests/golden``, read and explained, never by a green run.
    """

    def __init__(self, name: str):
        self.path = GOLDEN_DIR / f"{name}.json"
        self.recorded = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.updated: dict[str, object] = {}

    def check(self, key: str, value: object, *, rel: float = 0.0, abs: float = 0.0) -> None:
        if UPDATE_GOLDEN:
            self.updated[key] = value
            return
        if key not in self.recorded:
            pytest.fail(f"{self.path.name} records no {key!r}: run this test with "
                        "EMBEDFORGE_UPDATE_GOLDEN=1 and commit the new value with the reason")
        want = self.recorded[key]
        same = value == pytest.approx(want, rel=rel, abs=abs) if (rel or abs) else value == want
        assert same, (f"golden value {key!r} of {self.path.name} moved: recorded {want!r}, now "
                      f"{value!r}. If the change is meant, rerun with EMBEDFORGE_UPDATE_GOLDEN=1 "
                      "and commit tests/golden with the reason")

    def finish(self) -> None:
        if not self.updated:
            return
        merged = {**self.recorded, **self.updated}
        GOLDEN_DIR.mkdir(exist_ok=True)
        self.path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
        changed = sorted(k for k, v in self.updated.items() if self.recorded.get(k) != v)
        pytest.fail(f"golden values recorded in {self.path} (changed: {', '.join(changed) or 'none'})"
                    "; review `git diff tests/golden`, then rerun without EMBEDFORGE_UPDATE_GOLDEN")


@pytest.fixture(scope="module")
def golden(request):
    """The module's :class:`Golden` file, named after the test module."""
    g = Golden(Path(request.module.__file__).stem.removeprefix("test_"))
    yield g
    g.finish()
