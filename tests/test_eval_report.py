"""Pure evaluation report: leaderboard means, Markdown, chart, regression gate."""

from __future__ import annotations

import json
import math

import pytest

from embedforge.eval import report
from embedforge.eval.report import Regression, RunScores

TYPES = {"a": "Retrieval", "b": "Retrieval", "c": "STS", "d": "Classification"}


def test_mean_task_and_mean_task_type_follow_the_leaderboard():
    scores = {"a": 0.2, "b": 0.4, "c": 0.9, "d": 0.6}
    assert report.mean_task(scores) == pytest.approx(0.525)
    assert report.type_means(scores, TYPES) == pytest.approx(
        {"Retrieval": 0.3, "STS": 0.9, "Classification": 0.6})
    # mean of the per-type means, not of the tasks: two retrieval tasks weigh as one type
    assert report.mean_task_type(scores, TYPES) == pytest.approx(0.6)


def test_a_failed_task_makes_the_means_nan_like_mteb():
    scores = {"a": 0.2, "c": math.nan}
    assert math.isnan(report.mean_task(scores))
    assert math.isnan(report.mean_task_type(scores, TYPES))
    assert math.isnan(report.mean_task({}))


def test_markdown_has_summary_and_one_table_per_type_in_leaderboard_order():
    runs = [RunScores("m1", {"a": 0.2, "b": 0.4, "c": 0.9, "d": 0.6}, TYPES),
            RunScores("m2", {"a": 0.1, "c": 0.8}, TYPES)]
    md = report.markdown(runs, title="T")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert header == ("| model | tasks | Mean(Task) | Mean(TaskType) | Classification | "
                      "Retrieval | STS |")
    assert "| m1 | 4 | 52.50 | 60.00 | 60.00 | 30.00 | 90.00 |" in lines
    assert "| m2 | 2 | 45.00 | 45.00 | — | 10.00 | 80.00 |" in lines
    sections = [line for line in lines if line.startswith("## ")]
    assert sections == ["## Classification", "## Retrieval", "## STS"]
    assert "| b | 40.00 | — |" in lines


def test_bar_chart_writes_a_png_with_negative_scores(tmp_path):
    runs = [RunScores("m1", {"a": 0.5, "c": -0.2}, TYPES), RunScores("m2", {"a": 0.3}, TYPES)]
    out = tmp_path / "chart.png"
    report.bar_chart(runs, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5000


def test_gate_flags_drops_beyond_tolerance_only():
    base = {"a": 0.50, "b": 0.70, "c": 0.80}
    cur = {"a": 0.495, "b": 0.68, "c": 0.90}
    regs = report.compare(base, cur, tolerance=0.01)
    assert [(r.task, r.reason) for r in regs] == [("b", "dropped")]
    assert regs[0].delta == pytest.approx(-0.02)
    assert regs[0].line() == "b: 70.00 -> 68.00 (-2.00 points)"
    # an exact drop of the tolerance passes; per-task overrides win
    assert report.compare({"a": 0.5}, {"a": 0.49}, tolerance=0.01) == []
    assert report.compare(base, cur, tolerance=0.01, per_task={"b": 0.05}) == []


def test_gate_fails_missing_and_failed_tasks_unless_allowed():
    base = {"a": 0.5, "b": 0.6}
    regs = report.compare(base, {"a": math.nan}, tolerance=0.01)
    assert {(r.task, r.reason) for r in regs} == {("a", "failed"), ("b", "missing")}
    assert [r.reason for r in report.compare(base, {"a": 0.5}, 0.01, allow_missing=True)] == []
    # tasks only in the current run are not compared; NaN baselines are skipped
    assert report.compare({"a": math.nan}, {"a": 0.1, "z": 0.0}, 0.01) == []


def test_regression_line_for_missing_task():
    assert Regression("x", 0.5, None, "missing").line() == "x: missing (baseline 50.00)"


def test_spec_mismatch_names_the_differing_options():
    a = RunScores("m", {"s": 0.5}, specs={"s": {"path": "p", "max_corpus": 1000}})
    b = RunScores("m", {"s": 0.5}, specs={"s": {"path": "p", "max_corpus": 500}})
    assert report.spec_mismatches(a, b) == ["s: max_corpus 1000 vs 500"]
    assert report.spec_mismatches(a, a) == []


def test_load_scores_reads_scores_json_and_rejects_other_json(tmp_path):
    from embedforge.config import ConfigError
    from embedforge.eval.output import load_scores

    doc = {"model": {"name": "m"}, "tasks": {
        "a": {"main_score": 0.5, "type": "STS", "spec": {"path": "x"}},
        "b": {"main_score": None, "type": "Retrieval"}}}
    (tmp_path / "scores.json").write_text(json.dumps(doc))
    run = load_scores(str(tmp_path))
    assert run.model == "m" and run.scores["a"] == 0.5 and math.isnan(run.scores["b"])
    assert run.types == {"a": "STS", "b": "Retrieval"} and run.specs["a"] == {"path": "x"}
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"not an embedforge scores\.json"):
        load_scores(str(tmp_path / "other.json"))
    with pytest.raises(ConfigError, match="not found"):
        load_scores(str(tmp_path / "missing"))


def test_dims_table_has_a_column_per_size_full_last_and_mean_row():
    from embedforge.eval.report import dims_table

    md = dims_table({"a": {64: 0.5, 128: 0.6}, "b": {64: 0.3, 128: 0.4}}, {"a": 0.7, "b": 0.5}, 256)
    lines = md.strip().splitlines()
    assert "| task | 64 | 128 | 256 (full) |" in lines
    assert "| a | 50.00 | 60.00 | 70.00 |" in lines
    assert lines[-1] == "| Mean(Task) | 40.00 | 50.00 | 60.00 |"


def test_eval_dims_option_sorted_unique_positive():
    from pydantic import ValidationError

    from embedforge.config import parse_config
    from embedforge.eval.config import EvalConfig

    cfg = parse_config(EvalConfig, ["--encoder.model", "m", "--output", "o", "--dims", "128,64,64"])
    assert cfg.dims == [64, 128]
    with pytest.raises(ValidationError, match="positive"):
        EvalConfig(encoder={"model": "m"}, output="o", dims=[0, 64])
