"""Grafana dashboards for the platform's Ray metrics, defined as Python panels.

Why Python and not hand-edited JSON: every query is built from the metric registry in
:mod:`embedforge.metrics` through :func:`series`, so a panel cannot name a metric that the code
does not record (building raises ``KeyError``), and ``tests/test_dashboards.py`` checks the
generated JSON against the registry both ways. ``dashboards/build.py`` writes the JSON files;
:mod:`dashboards.checks` holds the validator.

Tooling, not library: nothing in ``platform/embedforge`` imports it, so it lives next to
``build.py`` and the JSON it generates, not inside the package users install.

How Ray exports the metrics (observed with Ray 2.60 on ``/metrics`` of the node's
``metrics_export_port``, see ``dashboards/README.md``):

* every name gets the prefix ``ray_``; a counter gets ``_total`` appended unless its name
  already ends with it (all ours do, so ``embedforge_serve_requests_total`` is exported as
  ``ray_embedforge_serve_requests_total``); gauges keep their name;
* a histogram is exported as ``_bucket`` (with ``le``), ``_sum`` and ``_count``. Ray computes
  ``_sum`` from bucket midpoints, not from the observed values, so the panels use quantiles
  over ``_bucket`` and never ``_sum / _count`` as a "mean";
* Ray adds the labels ``SessionName`` (one per ``ray start``/private cluster, so one per
  pipeline job started without ``RAY_ADDRESS``), ``NodeAddress``, ``WorkerId``, ``Component``,
  ``Version`` (plus ``otel_scope_*``); KubeRay's PodMonitor adds ``ray_io_cluster``. Every
  process keeps its own series (``WorkerId``), hence every query aggregates with ``sum by`` /
  ``max by`` over the platform's own tags.

Two dashboards, because they are read by different people at different time scales: serving
is a long-lived, on-call service (minutes, refresh every 10 s, filter by route) while
synthesis, mining and training are batch jobs followed per run (hours, filter by
``SessionName``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from embedforge.metrics import ALL_METRICS

EXPORT_PREFIX = "ray_"
"""What Ray puts in front of every application metric name in the Prometheus export."""

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x; newer Grafana migrates it on import
GRID_WIDTH = 24

# the selector every panel query carries: the Ray session (one run) and the KubeRay cluster
FILTERS = 'SessionName=~"$SessionName",ray_io_cluster=~"$Cluster"'
RATE = "$__rate_interval"

PanelKind = Literal["timeseries", "stat", "bargauge"]


# ----------------------------------------------------------------------------------- names
def exported_name(name: str) -> str:
    """The Prometheus name Ray exports for registered metric ``name`` (``KeyError`` if the
    platform does not register it); for a histogram the base of ``_bucket/_sum/_count``."""
    kind = ALL_METRICS[name][0]
    if kind == "counter" and not name.endswith("_total"):
        name += "_total"
    return EXPORT_PREFIX + name


def exported_series(name: str) -> tuple[str, ...]:
    """Every series name that registered metric ``name`` appears under in a scrape."""
    base = exported_name(name)
    if ALL_METRICS[name][0] == "histogram":
        return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
    return (base,)


def series_to_metric() -> dict[str, str]:
    """Exported series name -> registered metric name, for every metric in ALL_METRICS."""
    return {s: name for name in ALL_METRICS for s in exported_series(name)}


def series(name: str, suffix: str = "", extra: str = "") -> str:
    """A PromQL selector of registered metric ``name`` filtered by session and cluster.

    ``suffix`` picks a histogram series (``_bucket``); ``extra`` adds label matchers.
    """
    kind = ALL_METRICS[name][0]
    if (kind == "histogram") != bool(suffix):
        raise ValueError(f"{name} is a {kind}: suffix {suffix!r} does not fit")
    matchers = FILTERS + (f",{extra}" if extra else "")
    return f"{exported_name(name)}{suffix}{{{matchers}}}"


def _by(labels: tuple[str, ...]) -> str:
    return f"sum by ({', '.join(labels)}) " if labels else "sum"


def rate(name: str, by: tuple[str, ...] = (), extra: str = "") -> str:
    """Per-second rate of a counter, summed over Ray workers."""
    return f"{_by(by)}(rate({series(name, extra=extra)}[{RATE}]))"


def total(name: str, by: tuple[str, ...] = (), extra: str = "") -> str:
    """What a counter counted over the dashboard's time range, summed over workers.

    Sums each worker's largest value instead of ``increase()``: Ray exports a worker's counter
    only after its first increments, so ``increase()`` would drop everything counted before the
    first scrape, which for a short batch job is most of it. Exact for workers that start and
    end inside the range (a run), an overestimate for one that started before it.
    """
    return f"{_by(by)}(max_over_time({series(name, extra=extra)}[$__range]))"


def gauge(name: str, by: tuple[str, ...], how: str = "max", extra: str = "") -> str:
    """A gauge aggregated over Ray workers (train gauges come from rank 0 only)."""
    return f"{how} by ({', '.join(by)}) ({series(name, extra=extra)})"


def quantile(q: float, name: str, by: tuple[str, ...] = (), extra: str = "") -> str:
    """Quantile ``q`` of a histogram over the rate window, from its ``_bucket`` series."""
    labels = ", ".join(("le", *by))
    sel = series(name, "_bucket", extra)
    return f"histogram_quantile({q}, sum by ({labels}) (rate({sel}[{RATE}])))"


# ---------------------------------------------------------------------------------- panels
@dataclass(frozen=True)
class Query:
    """One PromQL expression and its legend (Grafana ``legendFormat``, e.g. ``{{route}}``)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A Grafana panel: ``stat`` and ``bargauge`` run instant queries (totals, current
    values), ``timeseries`` range queries. ``width``/``height`` are grid units (24 columns)."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: PanelKind = "timeseries"
    width: int = 8
    height: int = 8
    stack: bool = False


@dataclass(frozen=True)
class Row:
    """A titled row of panels, one per pipeline stage (or serving area)."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A Grafana query variable over label values (multi-select, ``All`` = any value)."""

    name: str
    label: str
    query: str
    description: str
    sort: int = 1  # 1: alphabetical ascending, 2: descending


@dataclass(frozen=True)
class Dashboard:
    """One Grafana dashboard. ``uid`` stays fixed: re-importing then replaces the dashboard
    instead of adding a copy, links to it keep working, and it names the JSON file."""

    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...]
    tags: tuple[str, ...] = ("embedforge", "ray")
    time_from: str = "now-1h"
    refresh: str = "30s"

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


def _or0(expr: str) -> str:
    """``expr`` or 0: ``metrics.inc`` skips zero increments, so a counter that never counted
    (no cache hit, no error) has no series, and a ratio over it would show "No data"."""
    return f"({expr} or vector(0))"


def _q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def _quantiles(name: str, by: tuple[str, ...] = (), extra: str = "") -> tuple[Query, ...]:
    """p50/p90/p99 of a histogram, one query each, legend ``{{label}} pNN``."""
    prefix = "".join(f"{{{{{label}}}}} " for label in by)
    return tuple(_q(quantile(q, name, by, extra), f"{prefix}p{round(q * 100)}")
                 for q in (0.5, 0.9, 0.99))


def _session_variable(anchor: str) -> Variable:
    return Variable(
        "SessionName", "Ray session", f'label_values({anchor}, SessionName)',
        "One per Ray cluster start: a pipeline job without RAY_ADDRESS starts its own cluster, "
        "so a session is one run. Newest first.", sort=2)


def _cluster_variable(anchor: str) -> Variable:
    return Variable(
        "Cluster", "Cluster", f"label_values({anchor}, ray_io_cluster)",
        "KubeRay cluster (label ray_io_cluster, set by the PodMonitor/ServiceMonitor); "
        "empty outside Kubernetes, where All matches everything.")


# ----------------------------------------------------------------------------- definitions
SYNTH_ROW = Row("Synthesis (LLM data generation)", (
    Panel("LLM calls /s", "HTTP requests sent to the LLM API (retries included), and the "
          "completions that finally succeeded or failed.", (
              _q(rate("embedforge_synth_llm_requests_total", ("model",)), "{{model}} HTTP calls"),
              _q(rate("embedforge_synth_llm_ok_total", ("model",)), "{{model}} ok"),
              _q(rate("embedforge_synth_llm_failed_total", ("model",)), "{{model}} failed")),
          unit="reqps"),
    Panel("LLM tokens /s by type", "Prompt and completion tokens of uncached LLM calls "
          "(cache hits cost nothing and are not counted).", (
              _q(rate("embedforge_synth_tokens_total", ("model", "type")), "{{model}} {{type}}"),),
          stack=True),
    Panel("LLM cost (time range)", "Estimated USD cost (llm.prices x tokens) of the runs in the "
          "time range; 0 when no price is configured for the model.", (
              _q(total("embedforge_synth_cost_usd_total", ("model",)), "{{model}}"),),
          unit="currencyUSD", kind="stat", width=4),
    Panel("LLM tokens (time range)", "Tokens by type of the runs in the time range.", (
        _q(total("embedforge_synth_tokens_total", ("type",)), "{{type}}"),),
        kind="stat", width=4),
    Panel("LLM cost USD /h", "Spending rate, estimated from token counts.", (
        _q(rate("embedforge_synth_cost_usd_total", ("model",)) + " * 3600", "{{model}}"),),
        unit="currencyUSD"),
    Panel("LLM cache hit rate", "Completions served from the response cache / all completion "
          "lookups (cache hits + completions that were sent: ok + failed), all models. HTTP "
          "retries are not lookups, so embedforge_synth_llm_requests_total is not the "
          "denominator.", (
              _q(f'{_or0(rate("embedforge_synth_cache_hits_total"))} / ('
                 f'{_or0(rate("embedforge_synth_cache_hits_total"))} + '
                 f'{_or0(rate("embedforge_synth_llm_ok_total"))} + '
                 f'{_or0(rate("embedforge_synth_llm_failed_total"))})', "cache hits"),),
          unit="percentunit"),
    Panel("LLM retries and errors /s", "Retried HTTP attempts, and errors by kind "
          "(rate_limit, timeout, http_5xx ...) before or without a retry.", (
              _q(rate("embedforge_synth_llm_retries_total", ("model",)), "{{model}} retries"),
              _q(rate("embedforge_synth_llm_errors_total", ("model", "kind")),
                 "{{model}} {{kind}}")),
          unit="reqps"),
    Panel("Rejections by reason (time range)", "Generated outputs rejected by the quality rules, "
          "by technique and rule.", (
              _q(total("embedforge_synth_rejections_total", ("technique", "reason")),
                 "{{technique}}: {{reason}}"),),
          kind="bargauge"),
    Panel("Rows written /s by source", "Rows of the synthesized dataset, by source (original, "
          "or the technique that generated them).", (
              _q(rate("embedforge_synth_rows_total", ("source",)), "{{source}}"),),
          stack=True),
))

MINE_ROW = Row("Hard-negative mining", (
    Panel("Texts embedded and queries searched /s", "Recorded by the mining driver once per "
          "phase (after embedding, after searching), so a run shows as a step, not a curve: the "
          "totals on the right are the numbers to read.", (
              _q(rate("embedforge_mine_embeddings_total", ("model",)), "{{model}} embedded"),
              _q(rate("embedforge_mine_queries_total"), "queries searched")),
          width=12),
    Panel("Texts embedded (time range)", "Texts embedded for mining (cache misses).", (
        _q(total("embedforge_mine_embeddings_total", ("model",)), "{{model}}"),),
        kind="stat", width=6),
    Panel("Queries searched (time range)", "Queries searched in the index.", (
        _q(total("embedforge_mine_queries_total"), "queries"),),
        kind="stat", width=6),
    Panel("Negatives kept by source (time range)", "Negatives written per source (mined, "
          "original, ...).", (
              _q(total("embedforge_mine_negatives_total", ("source",)), "{{source}}"),),
          kind="bargauge", width=12),
    Panel("Candidates dropped by reason (time range)", "Mined candidates discarded by the "
          "selection rules (false-negative threshold, duplicates, ...).", (
              _q(total("embedforge_mine_dropped_total", ("reason",)), "{{reason}}"),),
          kind="bargauge", width=12),
))

TRAIN_ROW = Row("Training", (
    Panel("Loss by task", "Loss of the last logged step, by training stage and task (rank 0); "
          "averaged over the datasets of a task, each holding the loss of its last batch.", (
              _q(gauge("embedforge_train_loss", ("stage", "task"), how="avg"),
                 "stage {{stage}} {{task}}"),),
          width=12),
    Panel("Optimizer step", "Steps done in the current stage.", (
        _q(gauge("embedforge_train_step", ("stage",)), "stage {{stage}}"),),
        kind="stat", width=6),
    Panel("Examples / tokens (time range)", "Training examples and non-padding tokens consumed.", (
        _q(total("embedforge_train_examples_total", ("stage",)), "stage {{stage}} examples"),
        _q(total("embedforge_train_tokens_total", ("stage",)), "stage {{stage}} tokens")),
        kind="stat", width=6),
    Panel("Examples /s", "Throughput over all ranks at the last logged step (gauge), and the "
          "rate of the examples counter.", (
              _q(gauge("embedforge_train_examples_per_second", ("stage",)),
                 "stage {{stage}}"),
              _q(rate("embedforge_train_examples_total", ("stage",)),
                 "stage {{stage}} (counter rate)")),
          width=8),
    Panel("Tokens /s", "Non-padding tokens per second over all ranks at the last logged step, "
          "and the rate of the tokens counter.", (
              _q(gauge("embedforge_train_tokens_per_second", ("stage",)), "stage {{stage}}"),
              _q(rate("embedforge_train_tokens_total", ("stage",)),
                 "stage {{stage}} (counter rate)")),
          width=8),
    Panel("Learning rate", "Scheduler learning rate at the last logged step.", (
        _q(gauge("embedforge_train_lr", ("stage",)), "stage {{stage}}"),),
        unit="sci", width=8),
))


ROUTE = 'route=~"$route"'

SERVE_OVERVIEW = Row("Serving: overview", (
    Panel("Requests /s", "All status codes of the selected routes.", (
        _q(rate("embedforge_serve_requests_total", extra=ROUTE), "req/s"),),
        unit="reqps", kind="stat", width=6, height=4),
    Panel("Error ratio", "Requests answered with a 4xx/5xx status / all requests.", (
        _q(f'{_or0(rate("embedforge_serve_errors_total", extra=ROUTE))} / '
           f'{rate("embedforge_serve_requests_total", extra=ROUTE)}', "errors"),),
        unit="percentunit", kind="stat", width=6, height=4),
    Panel("Latency p99", "99th percentile of request latency in the replica, selected routes.", (
        _q(quantile(0.99, "embedforge_serve_latency_seconds", extra=ROUTE), "p99"),),
        unit="s", kind="stat", width=6, height=4),
    Panel("Tokens embedded /s", "Tokens of the embedded texts (usage.prompt_tokens).", (
        _q(rate("embedforge_serve_tokens_total", extra=ROUTE), "tokens/s"),),
        kind="stat", width=6, height=4),
))

SERVE_TRAFFIC = Row("Serving: traffic", (
    Panel("Requests /s by route and code", "Every HTTP request the replicas answered. Routes: "
          "openai (/v1/embeddings), tei (/embed), models, info.", (
              _q(rate("embedforge_serve_requests_total", ("route", "code"), ROUTE),
                 "{{route}} {{code}}"),),
          unit="reqps", stack=True),
    Panel("Errors /s by code", "Requests answered with an error: 401 bad API key, 413 body too "
          "large, 422 invalid input, 500 internal error.", (
              _q(rate("embedforge_serve_errors_total", ("route", "code"), ROUTE),
                 "{{route}} {{code}}"),),
          unit="reqps", stack=True),
    Panel("Texts and tokens embedded /s", "Texts (inputs) and tokens embedded by route.", (
        _q(rate("embedforge_serve_tokens_total", ("route",), ROUTE), "{{route}} tokens"),
        _q(rate("embedforge_serve_texts_total", ("route",), ROUTE), "{{route}} texts")),
    ),
))

SERVE_LATENCY = Row("Serving: latency and batching", (
    Panel("Request latency", "p50/p90/p99 of the time a replica spends on a request (parse, "
          "queue, forward, encode), from the histogram buckets.",
          _quantiles("embedforge_serve_latency_seconds", ("route",), ROUTE), unit="s", width=12),
    Panel("Queue wait", "p50/p90/p99 of the time a text waits for its model batch (a sample of "
          "up to 16 texts per batch; all routes, the route filter does not apply).",
          _quantiles("embedforge_serve_queue_wait_seconds"), unit="s", width=12),
    Panel("Batch size (texts)", "p50/p90/p99 of texts per model forward pass: low values under "
          "load mean batching does not kick in.",
          _quantiles("embedforge_serve_batch_texts"), width=12),
    Panel("Batch size (tokens)", "p50/p90/p99 of tokens per model forward pass (the batch "
          "budget is in tokens).",
          _quantiles("embedforge_serve_batch_tokens"), width=12),
))

SERVE_KEYS = Row("Serving: per API key", (
    Panel("Requests /s by key and code", "Requests per API key (the key's sha256 prefix, "
          "`printf %s KEY | sha256sum | cut -c1-8`; `anonymous` when serving without keys) and "
          "status code: 429 is the key's rate limit, 401 a request without a valid key "
          "(counted as anonymous). All routes.", (
              _q(rate("embedforge_serve_key_requests_total", ("key", "code")),
                 "{{key}} {{code}}"),),
          unit="reqps", stack=True),
    Panel("Tokens embedded /s by key", "Tokens of the texts each API key had embedded "
          "(usage.prompt_tokens): who uses the model's capacity.", (
              _q(rate("embedforge_serve_key_tokens_total", ("key",)), "{{key}}"),),
          stack=True),
))

_SERVE_ANCHOR = exported_name("embedforge_serve_requests_total")
# any series of the batch stages, to list the sessions (runs) that recorded one
_PIPELINE_ANCHOR = f'{{__name__=~"{EXPORT_PREFIX}embedforge_(synth|mine|train)_.+"}}'

SERVING = Dashboard(
    uid="embedforge-serving",
    title="embedforge: serving",
    description="The embedding endpoint (Ray Serve): traffic, errors, latency, batching. "
                "Generated by dashboards/build.py from dashboards/panels.py.",
    rows=(SERVE_OVERVIEW, SERVE_TRAFFIC, SERVE_LATENCY, SERVE_KEYS),
    variables=(
        _cluster_variable(_SERVE_ANCHOR),
        _session_variable(f'{_SERVE_ANCHOR}{{ray_io_cluster=~"$Cluster"}}'),
        Variable("route", "Route", f"label_values({_SERVE_ANCHOR}{{{FILTERS}}}, route)",
                 "HTTP route: openai (/v1/embeddings), tei (/embed), models, info."),
    ),
    time_from="now-30m",
    refresh="10s",
)

PIPELINE = Dashboard(
    uid="embedforge-pipeline",
    title="embedforge: pipeline (synthesis, mining, training)",
    description="The batch stages of the pipeline, one row each; pick a run with the Ray "
                "session variable. Generated by dashboards/build.py from "
                "dashboards/panels.py.",
    rows=(SYNTH_ROW, MINE_ROW, TRAIN_ROW),
    variables=(
        _cluster_variable(_PIPELINE_ANCHOR),
        _session_variable(_PIPELINE_ANCHOR[:-1] + ',ray_io_cluster=~"$Cluster"}'),
    ),
    time_from="now-6h",
    refresh="30s",
)

DASHBOARDS: tuple[Dashboard, ...] = (PIPELINE, SERVING)


# ------------------------------------------------------------------------------------ JSON
def _target(query: Query, ref: str, instant: bool) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "editorMode": "code", "expr": query.expr,
            "instant": instant, "legendFormat": query.legend or "__auto", "range": not instant,
            "refId": ref}


def _panel_json(panel: Panel, pid: int, pos: dict[str, int]) -> dict[str, Any]:
    instant = panel.kind != "timeseries"
    defaults: dict[str, Any] = {"unit": panel.unit, "min": 0}
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if panel.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line", "fillOpacity": 25 if panel.stack else 10, "lineWidth": 1,
            "showPoints": "never", "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if panel.stack else "none"}}
        options: dict[str, Any] = {
            "legend": {"calcs": ["mean", "max", "lastNotNull"], "displayMode": "table",
                       "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"}}
    elif panel.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
        options = {"colorMode": "value", "graphMode": "none", "justifyMode": "auto",
                   "orientation": "auto", "reduceOptions": reduce, "textMode": "auto"}
    else:  # bargauge
        defaults["color"] = {"mode": "palette-classic"}
        options = {"displayMode": "gradient", "orientation": "horizontal",
                   "reduceOptions": reduce, "showUnfilled": True, "valueMode": "color"}
    refs = [chr(ord("A") + i) for i in range(len(panel.queries))]
    return {"datasource": DATASOURCE, "description": panel.description,
            "fieldConfig": {"defaults": defaults, "overrides": []}, "gridPos": pos, "id": pid,
            "options": options, "targets": [_target(q, r, instant)
                                            for q, r in zip(panel.queries, refs, strict=True)],
            "title": panel.title, "type": panel.kind}


def _variable_json(var: Variable) -> dict[str, Any]:
    return {"allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "datasource": DATASOURCE, "definition": var.query, "description": var.description,
            "hide": 0, "includeAll": True, "label": var.label, "multi": True, "name": var.name,
            "options": [], "query": {"query": var.query, "refId": "StandardVariableQuery"},
            "refresh": 2, "regex": "", "skipUrlSync": False, "sort": var.sort, "type": "query"}


def build(dash: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard JSON model (import it, or provision it from a file).

    Ids count up in layout order and panels flow left to right in 24 columns, wrapping to a
    new line, so the output only changes when the definitions do.
    """
    panels: list[dict[str, Any]] = []
    y = 0
    for row in dash.rows:
        panels.append({"collapsed": False, "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                       "id": len(panels) + 1, "panels": [], "title": row.title, "type": "row"})
        y += 1
        x = line_height = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            pos = {"h": panel.height, "w": panel.width, "x": x, "y": y}
            panels.append(_panel_json(panel, len(panels) + 1, pos))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    datasource_var = {"current": {}, "hide": 0, "includeAll": False, "label": "Data source",
                      "multi": False, "name": "datasource", "options": [], "query": "prometheus",
                      "refresh": 1, "regex": "", "skipUrlSync": False, "type": "datasource"}
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": dash.description, "editable": True, "fiscalYearStartMonth": 0,
        "graphTooltip": 1, "id": None, "links": [], "panels": panels, "refresh": dash.refresh,
        "schemaVersion": SCHEMA_VERSION, "tags": list(dash.tags),
        "templating": {"list": [datasource_var, *(_variable_json(v) for v in dash.variables)]},
        "time": {"from": dash.time_from, "to": "now"}, "timepicker": {}, "timezone": "",
        "title": dash.title, "uid": dash.uid, "version": 1, "weekStart": "",
    }


def render(dash: Dashboard) -> str:
    """Deterministic file content: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(build(dash), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
