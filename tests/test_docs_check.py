"""docs/check.py (`make docs-check`): the repository's docs pass, and planted mistakes fail it:
a broken link, a missing anchor, a flag the job does not have, a missing path or module, and
a layout tree that puts a folder in the wrong place."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# docs/ is a folder of pages, not a package: load the script by path
_spec = importlib.util.spec_from_file_location("ef_docs_check", ROOT / "docs" / "check.py")
assert _spec is not None and _spec.loader is not None
check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = check  # its dataclasses look their module up
_spec.loader.exec_module(check)


def problems(tmp_path: Path, text: str, name: str = "page.md") -> list[str]:
    page = tmp_path / "docs" / name
    page.parent.mkdir(exist_ok=True)
    page.write_text(text, encoding="utf-8")
    return check.check([page]).problems


def test_the_repository_docs_pass():
    report = check.check(check.default_pages())
    assert report.problems == []
    pages = {check._rel(p) for p in check.default_pages()}
    assert {"README.md", "docs/index.md", "docs/train.md", "benchmarks/README.md"} <= pages
    assert report.counts["links"] > 30 and report.counts["flags"] > 100


def test_readmes_in_hidden_folders_are_not_our_docs(monkeypatch, tmp_path):
    """A second `make test` in one clone found .pytest_cache/README.md (pytest's, naming
    --lf/--ff) and failed: only our folders' READMEs are pages."""
    for folder in ("benchmarks", ".pytest_cache", "docs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.md").write_text("# x\n")
    (tmp_path / "README.md").write_text("# x\n")
    monkeypatch.setattr(check, "ROOT", tmp_path)
    pages = {p.relative_to(tmp_path).as_posix() for p in check.default_pages()}
    assert pages == {"README.md", "docs/README.md", "benchmarks/README.md"}


def test_planted_broken_link_fails_the_command(tmp_path):
    good = tmp_path / "docs" / "ok.md"
    good.parent.mkdir()
    good.write_text("# Ok\n\n## Some section\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text("See [ok](ok.md#some-section), [the same](./ok.md) and "
                    "[a page that is not there](missing.md).\n")
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "check.py"), "--pages", str(page)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert f"{page}:1: link to missing.md" in res.stderr and "FAILED, 1 problem" in res.stderr
    page.write_text("See [ok](ok.md#some-section).\n")
    ok = subprocess.run([sys.executable, str(ROOT / "docs" / "check.py"), "--pages", str(page)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_anchor_must_be_a_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "t.md").write_text("# T\n\n## Synthesis: LLM fan-out\n")
    assert problems(tmp_path, "[a](t.md#synthesis-llm-fan-out)\n") == []
    [p] = problems(tmp_path, "[a](t.md#synthesis)\n")
    assert "no heading #synthesis" in p


@pytest.mark.parametrize(("text", "expected"), [
    # a job's flags, in a command line (continued over lines) and inline
    ("```bash\npython jobs/train.py --config jobs/configs/local-cpu.yaml \\\n"
     "    --stage1.steps 3 --tracking.enabled false --no-tracking.enabled\n```\n", None),
    ("```bash\npython jobs/train.py \\\n    --stage1.stepz 3\n```\n",
     "flag --stage1.stepz is not a flag of jobs/train.py"),
    ("```bash\nray job submit --working-dir . -- python jobs/evaluate.py --task x --ray\n```\n",
     None),  # ray's flags are ray's; the job's are checked
    ("```bash\nray job submit -- python jobs/evaluate.py --tasks x\n```\n",
     "flag --tasks is not a flag of jobs/evaluate.py"),
    ("```bash\n.venv/bin/python dashboards/build.py --check --dry\n```\n",
     "flag --dry is not a flag of dashboards/build.py"),
    ("Use `--local-llm.*` or `--llm.limiter partitioned`.\n", None),
    ("Use `--llm.limitr partitioned`.\n", "flag --llm.limitr is not a flag of any job"),
    ("```bash\npython jobs/mine.py  # then --selection.rank-rang 1-2\n```\n",
     "flag --selection.rank-rang"),
    # paths and modules
    ("Read `platform/embedforge/tracking.py` and `jobs/configs/*.yaml`.\n", None),
    ("Read `platform/embedforge/data/instructions.py`.\n",
     "path platform/embedforge/data/instructions.py does not exist"),
    ("Shipped as `embedforge/eval/instructions.yaml`.\n",
     "path embedforge/eval/instructions.yaml does not exist"),
    ("`embedforge.instructions.resolve_instruction`, `embedforge.io`, tag `embedforge.gate`\n",
     None),
    ("`embedforge.eval.instructions.InstructionMap`\n",
     "embedforge.eval.instructions.InstructionMap is neither a module"),
    ("```yaml\nconfig: jobs/configs/nope.yaml\n```\n", "path jobs/configs/nope.yaml"),
    # the layout tree the issue found wrong: library folders listed under jobs/
    ("```\nplatform/embedforge/   lib\n  schema.py   x\njobs/   entrypoints\n  llm/   gateway\n```\n",
     "layout: jobs/llm/ does not exist"),
])
def test_planted_mistakes(tmp_path, text, expected):
    found = problems(tmp_path, text)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def test_a_stage_page_checks_its_own_jobs_flags(tmp_path):
    # --selection.margin is mining's, not training's
    [p] = problems(tmp_path, "Set `--selection.margin`.\n", name="train.md")
    assert "--selection.margin is not a flag of the page's job" in p
    assert problems(tmp_path, "Set `--selection.margin`.\n", name="mine.md") == []


def test_a_script_has_the_flags_of_the_argument_helpers_it_imports_and_no_others():
    """trial_matryoshka.py takes its Matryoshka and recipe flags from bench_quality.py's helpers;
    bench_quality.py's own main-only flags (--seeds, --grid) are not the trial's."""
    flags = check.script_flags("benchmarks/trial_matryoshka.py")
    assert {"--matryoshka-dims", "--matryoshka-weights", "--stage1-steps", "--work", "--seed"} <= flags
    assert "--seeds" not in flags and "--grid" not in flags


def _bench_root(tmp_path: Path, monkeypatch, results: dict, readme: str) -> list[str]:
    """A repository with ``benchmarks/results-x.json`` = ``results`` and ``benchmarks/README.md``."""
    import json

    bench = tmp_path / "benchmarks"
    bench.mkdir(parents=True)
    (bench / "results-x.json").write_text(json.dumps(results))
    (bench / "README.md").write_text(readme)
    monkeypatch.setattr(check, "ROOT", tmp_path)
    check.results_values.cache_clear()
    try:
        return check.check([bench / "README.md"]).problems
    finally:
        check.results_values.cache_clear()


README_FIGURES = """# Benchmarks

## Quality

Measured (`benchmarks/results-x.json`):

| model | SciFact | gain |
|---|---|---|
| stage 1 | {s1} | +{gain} |

## Elsewhere

| a figure no results file holds | 0.1234 |
"""
RESULTS = {"commit": "f5d5b6c", "scores": {"stage1": 0.78418}, "gain_points": 3.82}


def test_readme_figures_match_the_results_file_they_cite(tmp_path, monkeypatch):
    """Issue #32: the README kept 0.7842 after the benchmark gave 0.7737. A section citing a
    results file may show only that file's values (rounded, or in points); sections citing none
    are not compared."""
    ok = README_FIGURES.format(s1="0.7842", gain="3.82")
    assert _bench_root(tmp_path, monkeypatch, RESULTS, ok) == []
    moved = {**RESULTS, "scores": {"stage1": 0.77372}, "gain_points": 2.77}
    found = _bench_root(tmp_path / "b", monkeypatch, moved, ok)
    assert len(found) == 2, found
    assert "README.md:9: figure 0.7842 is in none of results-x.json" in found[0]
    assert "figure +3.82 is in none of results-x.json" in found[1]


def test_a_results_file_must_name_its_commit(tmp_path, monkeypatch):
    readme = README_FIGURES.format(s1="0.7842", gain="3.82")
    for commit in (None, "unknown", "HEAD"):
        results = {k: v for k, v in RESULTS.items() if k != "commit"}
        if commit:
            results["commit"] = commit
        found = _bench_root(tmp_path / str(commit), monkeypatch, results, readme)
        assert found == ["benchmarks/results-x.json:1: names no "
                         "commit it was measured on (a \"commit\" key, hex)"], found


def test_a_cited_results_file_must_exist(tmp_path, monkeypatch):
    readme = README_FIGURES.format(s1="0.7842", gain="3.82").replace("results-x.json", "results-y.json")
    found = _bench_root(tmp_path, monkeypatch, RESULTS, readme)
    assert any("benchmarks/results-y.json does not exist" in p for p in found), found


def test_a_before_after_results_file_names_each_runs_commit(tmp_path, monkeypatch):
    """A file holding runs of two commits (a before/after) names the commit of each; a table
    may show its milliseconds in seconds."""
    readme = "# B\n\n## Serve\n\n(`benchmarks/results-x.json`)\n\n| run | p99 |\n|---|---|\n| before | 1.66 s |\n"
    runs = {"main@483625e": {"commit": "483625e", "p99_ms": 1660.0},
            "branch@fbea6d8": {"commit": "fbea6d8", "p99_ms": 2120.0}}
    assert _bench_root(tmp_path / "a", monkeypatch, runs, readme) == []
    runs["branch@fbea6d8"].pop("commit")
    found = _bench_root(tmp_path / "b", monkeypatch, runs, readme)
    assert found == ["benchmarks/results-x.json:1: names no commit it was measured on "
                     "(a \"commit\" key, hex)"], found
