"""jobs/prepare.py as a user runs it: plain python, `ray job submit`, and a 2-node cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedforge import io as eio
from embedforge.cluster import LocalCluster
from embedforge.config import parse_config
from embedforge.prepare import PrepareConfig, run_prepare

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], env: dict[str, str] | None = None, timeout: int = 300):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("RAY_ADDRESS", None) if env is None or "RAY_ADDRESS" not in env else None
    return subprocess.run([sys.executable, "jobs/prepare.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_fields_and_source_flags():
    out = _run(["--help"])
    assert out.returncode == 0
    for flag in ("--source", "--map", "--option", "--output", "--chunk-mb", "--resume", "--config"):
        assert flag in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--output", "x", "--source", "a=nosuch:/tmp/x"], "unknown format 'nosuch'"),
    (["--output", "x", "--source", "oops"], "NAME=FORMAT:PATH"),
    (["--output", "x", "--source", "a=qa:/tmp/x", "--map", "b.query=q"], "names source 'b'"),
    (["--output", "x", "--source", "a=qa:/tmp/x", "--option", "a.colour=red"], "unknown key 'sources.0.colour'"),
    (["--source", "a=qa:/tmp/x"], "output"),
    (["--output", "x"], "no sources"),
])
def test_user_mistakes_are_one_clear_line(args, message):
    out = _run(args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_unusable_source_exits_nonzero_but_keeps_the_rest(tmp_path, fixtures_dir):
    out_dir = tmp_path / "out"
    res = _run(["--source", f"good=title_body:{fixtures_dir}/broken_articles.jsonl",
                "--source", f"gone=qa:{tmp_path}/missing.jsonl",
                "--source", f"junk=title_body:{fixtures_dir}/garbage.jsonl",
                "--output", str(out_dir), "--num-cpus", "1"])
    assert res.returncode == 1, res.stderr[-2000:]
    assert "unusable source(s): gone, junk" in res.stderr and "Traceback" not in res.stderr
    stats = json.loads((out_dir / "stats.json").read_text())
    assert stats["datasets"]["good"]["samples"] == 3
    assert set(stats["unusable_sources"]) == {"gone", "junk"}
    assert eio.read_samples(str(out_dir)).num_rows == 3


@pytest.mark.slow
def test_ray_job_submit_against_a_local_cluster(tmp_path, fixtures_dir):
    out_dir = tmp_path / "submitted"
    with LocalCluster(num_cpus=2) as cluster:
        res = cluster.submit(
            ["python", "jobs/prepare.py",
             "--source", f"arts=title_body:{fixtures_dir}/broken_articles.jsonl",
             "--source", f"sts=sts:{fixtures_dir}/broken_sts.tsv",
             "--output", str(out_dir)],
            cwd=str(ROOT), timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "succeeded" in (res.stdout + res.stderr).lower()
    stats = json.loads((out_dir / "stats.json").read_text())
    assert stats["datasets"]["arts"]["samples"] == 3 and stats["datasets"]["sts"]["samples"] == 4
    # the job joined the submitted-to cluster instead of starting its own
    assert stats["ray_address"].endswith(f":{cluster.port}")


def test_two_node_cluster_spreads_units_and_matches_single_node(ray_two_nodes, shared_data, tmp_path):
    argv = ["--source", f"snli=nli:{shared_data}/zh_sts/Chinese-SNLI/dev.txt",
            "--source", f"lcqmc=pair_label:{shared_data}/zh_sts/LCQMC/dev.txt",
            "--chunk-mb", "0.1", "--output", str(tmp_path / "two")]
    stats = run_prepare(parse_config(PrepareConfig, argv), log=lambda *_: None)
    assert stats["units"] >= 8
    assert len(stats["nodes"]) == 2, stats["nodes"]
    two = eio.read_samples(str(tmp_path / "two")).to_pandas()
    # the same data as one unit per file must give the same samples
    one_argv = [*argv[:-2], "--output", str(tmp_path / "one")]
    one_argv[one_argv.index("0.1")] = "1000"
    one_stats = run_prepare(parse_config(PrepareConfig, one_argv), log=lambda *_: None)
    assert one_stats["units"] == 2
    one = eio.read_samples(str(tmp_path / "one")).to_pandas()
    assert sorted(one.id) == sorted(two.id)
