"""The Grafana dashboards: committed JSON equals a fresh build, every query names a series Ray
exports for a metric the code registers (and the key metrics all have a panel), histogram
panels read ``_bucket`` by ``le``, and the JSON is structurally sound. The checks are also run
against broken dashboards, to show they catch what they claim to."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from dashboards import checks
from dashboards import panels as dash

from embedforge.metrics import (
    ALL_METRICS,
    HISTOGRAM_BOUNDARIES,
    MINE_METRICS,
    SERVE_METRICS,
    SYNTH_METRICS,
    TRAIN_METRICS,
)

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "dashboards"

# the metrics the product issue asks a panel for (all of serving, the key ones of the rest)
REQUIRED = {
    *SERVE_METRICS,
    "embedforge_train_loss", "embedforge_train_examples_per_second",
    "embedforge_train_tokens_per_second",
    "embedforge_synth_llm_requests_total", "embedforge_synth_tokens_total",
    "embedforge_synth_cost_usd_total", "embedforge_synth_cache_hits_total",
    "embedforge_synth_rejections_total",
    "embedforge_mine_embeddings_total", "embedforge_mine_dropped_total",
    "embedforge_mine_negatives_total",
}


@pytest.fixture(scope="module")
def built() -> dict[str, dict]:
    return {d.uid: dash.build(d) for d in dash.DASHBOARDS}


# --------------------------------------------------------------------- committed == built
@pytest.mark.parametrize("d", dash.DASHBOARDS, ids=lambda d: d.uid)
def test_committed_json_equals_fresh_build(d):
    path = DASHBOARD_DIR / d.filename
    assert path.is_file(), f"{path} missing: run .venv/bin/python dashboards/build.py"
    assert path.read_text(encoding="utf-8") == dash.render(d), (
        f"{path} is stale: run .venv/bin/python dashboards/build.py")


def test_no_stray_dashboard_files():
    expected = {d.filename for d in dash.DASHBOARDS}
    assert {p.name for p in DASHBOARD_DIR.glob("*.json")} == expected


def test_render_is_deterministic_and_sorted():
    for d in dash.DASHBOARDS:
        text = dash.render(d)
        assert text == dash.render(d)
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True,
                                  ensure_ascii=False) + "\n"


def load_build_script():
    """dashboards/build.py as a module (under a name that cannot clash with PyPI's ``build``)."""
    spec = importlib.util.spec_from_file_location("ef_dashboards_build", DASHBOARD_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_runs_and_check_passes():
    ok = subprocess.run([sys.executable, str(DASHBOARD_DIR / "build.py"), "--check"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr


def test_build_script_check_detects_stale(tmp_path, capsys):
    script = load_build_script()
    assert script.main(["--check", "--dir", str(tmp_path)]) == 1  # nothing there yet
    assert script.main(["--dir", str(tmp_path)]) == 0
    assert script.main(["--check", "--dir", str(tmp_path)]) == 0
    victim = tmp_path / dash.SERVING.filename
    victim.write_text(victim.read_text().replace("p99", "p98"))
    capsys.readouterr()
    assert script.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert dash.SERVING.filename in err and dash.PIPELINE.filename not in err


# --------------------------------------------------------------------------- metric names
def test_exported_names_follow_ray():
    """Ray 2.60 (verified by tests/integration/test_metrics_scrape.py): prefix ray_, counters
    end in _total exactly once, histograms as _bucket/_sum/_count."""
    assert dash.exported_name("embedforge_serve_requests_total") == \
        "ray_embedforge_serve_requests_total"
    assert dash.exported_name("embedforge_train_loss") == "ray_embedforge_train_loss"
    assert dash.exported_series("embedforge_serve_latency_seconds") == (
        "ray_embedforge_serve_latency_seconds_bucket", "ray_embedforge_serve_latency_seconds_sum",
        "ray_embedforge_serve_latency_seconds_count")
    with pytest.raises(KeyError):
        dash.exported_name("embedforge_serve_no_such_metric")
    with pytest.raises(ValueError):
        dash.series("embedforge_serve_latency_seconds")  # a histogram needs a suffix


def test_registry_is_consistent():
    """The dashboards assume what metrics.py promises: counters end in _total (else Ray would
    rename them), every histogram has boundaries, every name has the embedforge_ prefix."""
    for name, (kind, _, _) in ALL_METRICS.items():
        assert name.startswith("embedforge_")
        assert kind in ("counter", "gauge", "histogram")
        if kind == "counter":
            assert name.endswith("_total"), name
    assert {n for n, v in ALL_METRICS.items() if v[0] == "histogram"} == set(HISTOGRAM_BOUNDARIES)


def test_every_queried_series_is_registered(built):
    known = dash.series_to_metric()
    for uid, model in built.items():
        queried = checks.queried_series(model)
        assert queried, uid
        unknown = sorted(queried - set(known))
        assert not unknown, f"{uid} queries series no code records: {unknown}"


def test_required_metrics_have_a_panel(built):
    queried = set().union(*(checks.queried_metrics(m) for m in built.values()))
    missing = sorted(REQUIRED - queried)
    assert not missing, f"no panel reads {missing}"


def test_every_registered_metric_has_a_panel(built):
    """Stricter than the issue: a metric added to metrics.py without a panel fails here."""
    queried = set().union(*(checks.queried_metrics(m) for m in built.values()))
    assert sorted(set(ALL_METRICS) - queried) == []


def test_each_dashboard_reads_its_own_stages(built):
    serving = checks.queried_metrics(built["embedforge-serving"])
    pipeline = checks.queried_metrics(built["embedforge-pipeline"])
    assert serving == set(SERVE_METRICS)
    assert pipeline == {*SYNTH_METRICS, *MINE_METRICS, *TRAIN_METRICS}


def test_series_parser_ignores_label_values_and_regexes():
    expr = ('sum(rate(ray_embedforge_serve_requests_total{route="ray_embedforge_fake"}[1m])) '
            '/ count({__name__=~"ray_embedforge_.+"}) + ray_embedforge_x_total')
    assert checks.series_in(expr) == {"ray_embedforge_serve_requests_total",
                                    "ray_embedforge_x_total"}


# ------------------------------------------------------------------------------ histograms
def test_histogram_panels_use_buckets_with_le(built):
    histograms = {n for n, v in ALL_METRICS.items() if v[0] == "histogram"}
    seen = set()
    for model in built.values():
        for expr in checks.expressions(model):
            for name in checks.series_in(expr):
                metric = dash.series_to_metric()[name]
                if metric not in histograms:
                    continue
                seen.add(metric)
                assert name.endswith("_bucket"), expr  # no _sum: Ray fills it with midpoints
                assert expr.startswith("histogram_quantile("), expr
                assert "sum by (le" in expr and f"rate({name}{{" in expr, expr
    assert seen == histograms


def test_serving_latency_has_p50_p90_p99(built):
    panel = next(p for p in checks.iter_panels(built["embedforge-serving"])
                 if p["title"] == "Request latency")
    qs = [t["expr"].split(",")[0] for t in panel["targets"]]
    assert qs == ["histogram_quantile(0.5", "histogram_quantile(0.9", "histogram_quantile(0.99"]
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"


# ------------------------------------------------------------------------------ structure
def test_dashboards_validate(built):
    for uid, model in built.items():
        assert checks.validate(model) == [], uid


def test_structure(built):
    uids = [m["uid"] for m in built.values()]
    assert len(set(uids)) == len(uids)
    for model in built.values():
        assert model["schemaVersion"] >= 36  # panels' datasource as {type, uid}
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["SessionName"]["type"] == "query"
        panels = checks.iter_panels(model)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids))
        rows = [p for p in panels if p["type"] == "row"]
        assert rows
        for p in panels:
            if p["type"] == "row":
                continue
            assert p["type"] in ("timeseries", "stat", "bargauge")
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
            assert 'SessionName=~"$SessionName"' in " ".join(t["expr"] for t in p["targets"])
            assert p["description"]


def test_rows_per_stage(built):
    titles = [p["title"] for p in checks.iter_panels(built["embedforge-pipeline"])
              if p["type"] == "row"]
    assert [t.split()[0] for t in titles] == ["Synthesis", "Hard-negative", "Training"]


# ------------------------------------------------------- the checks catch broken dashboards
def _first_panel(model: dict) -> dict:
    return next(p for p in model["panels"] if p["type"] != "row")


@pytest.mark.parametrize("breakage, message", [
    (lambda m: _first_panel(m)["targets"][0].update(
        expr="rate(ray_embedforge_serve_nope_total[1m])"), "not a series the platform exports"),
    (lambda m: _first_panel(m)["targets"][0].update(
        expr="sum(ray_embedforge_serve_requests_total)"), "inside rate()"),
    (lambda m: _first_panel(m)["targets"][0].update(
        expr="histogram_quantile(0.9, sum by (route) "
             "(rate(ray_embedforge_serve_latency_seconds_bucket[1m])))"), "without keeping 'le'"),
    (lambda m: _first_panel(m)["targets"][0].update(
        expr="sum(rate(ray_embedforge_serve_latency_seconds_bucket[1m]))"),
     "outside histogram_quantile"),
    (lambda m: _first_panel(m)["targets"][0].update(
        expr="sum(rate(ray_embedforge_serve_requests_total{code=\"$nope\"}[1m]))"),
     "undefined variable $nope"),
    (lambda m: _first_panel(m)["targets"][0].update(
        expr="sum(rate(ray_embedforge_serve_requests_total[1m])"), "unbalanced"),
    (lambda m: _first_panel(m).update(targets=[]), "no targets"),
    (lambda m: _first_panel(m).pop("datasource"), "datasource is not"),
    (lambda m: m["panels"][2].update(id=m["panels"][1]["id"]), "duplicate panel ids"),
    (lambda m: m["panels"][2].update(gridPos=dict(m["panels"][1]["gridPos"])), "overlaps"),
    (lambda m: m["panels"][1]["gridPos"].update(x=20), "off the 24-column grid"),
    (lambda m: m["templating"]["list"].pop(0), "no 'datasource' template variable"),
    (lambda m: m.update(uid="x" * 41), "uid"),
])
def test_validate_catches(built, breakage, message):
    model = copy.deepcopy(built["embedforge-serving"])
    breakage(model)
    problems = checks.validate(model)
    assert any(message in p for p in problems), problems


def test_unregistered_metric_cannot_be_built():
    with pytest.raises(KeyError):
        dash.rate("embedforge_serve_not_registered_total")


def test_build_refuses_invalid_dashboard(tmp_path, monkeypatch):
    """build.py never writes a dashboard that fails validate()."""
    build_script = load_build_script()
    broken = dash.Dashboard("broken", "b", "b", (dash.Row("r", (dash.Panel(
        "p", "d", (dash.Query("sum(ray_embedforge_serve_requests_total)"),)),)),), ())
    monkeypatch.setattr(build_script, "DASHBOARDS", (broken,))
    assert build_script.main(["--dir", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())
