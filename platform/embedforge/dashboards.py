"""Grafana dashboards for the platform's Ray metrics, defined as Python panels.

Why Python and not hand-edited JSON: every query is built from the metric registry in
:mod:`embedforge.metrics` through :func:`series`, so a panel cannot name a metric that the code
does not record (building raises ``KeyError``), and ``tests/test_dashboards.py`` checks the
generated JSON against the registry both ways. ``dashboards/build.py`` writes the JSON files.

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
import re
from dataclasses import dataclass
from typing import Any, Literal

from .metrics import ALL_METRICS

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
                "Generated by dashboards/build.py from platform/embedforge/dashboards.py.",
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
                "platform/embedforge/dashboards.py.",
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


# ------------------------------------------------------------------------- query analysis
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(rf"(?<![A-Za-z0-9_:]){EXPORT_PREFIX}embedforge_[A-Za-z0-9_:]*")
_VARIABLE = re.compile(r"\$\{(\w+)[^}]*\}|\$(\w+)")
_BUILTIN_VARIABLES = {"__rate_interval", "__range", "__interval", "__range_s", "__interval_ms"}
_COUNTER_FUNCS = ("rate", "irate", "increase", "max_over_time")


def iter_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, also those nested in collapsed rows."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text the dashboard sends: panel targets and variable queries."""
    exprs = [t.get("expr", "") for p in iter_panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            exprs.append(query.get("query", "") if isinstance(query, dict) else str(query))
    return exprs


def series_in(expr: str) -> set[str]:
    """Platform series names (``ray_embedforge_...``) in a PromQL expression, label values and
    other string literals left out (a ``__name__`` regex is not a name)."""
    return set(_NAME.findall(_STRING.sub('""', expr)))


def queried_series(dashboard: dict[str, Any]) -> set[str]:
    """Every platform series name the dashboard queries, as written (exported names)."""
    return {name for expr in expressions(dashboard) for name in series_in(expr)}


def queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    """Registered metric names (ALL_METRICS keys) the dashboard reads; unknown names are left
    out here and reported by :func:`validate`."""
    known = series_to_metric()
    return {known[s] for s in queried_series(dashboard) if s in known}


def _balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in _STRING.sub('""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def _check_expr(expr: str, where: str, variables: set[str], labels_only: bool = False
                ) -> list[str]:
    problems = []
    known = series_to_metric()
    bare = _STRING.sub('""', expr)
    if not _balanced(expr):
        problems.append(f"{where}: unbalanced brackets in {expr!r}")
    for name in sorted(series_in(expr)):
        metric = known.get(name)
        if metric is None:
            problems.append(f"{where}: {name} is not a series the platform exports "
                            "(not in embedforge.metrics.ALL_METRICS after Ray's renaming)")
            continue
        kind = ALL_METRICS[metric][0]
        wrapped = re.search(rf"\b(?:{'|'.join(_COUNTER_FUNCS)})\(\s*{name}\b", bare)
        if (kind == "counter" or name.endswith("_bucket")) and not wrapped and not labels_only:
            problems.append(f"{where}: {name} is cumulative; query it inside rate()/increase()")
        if name.endswith("_bucket") and not labels_only:
            if "histogram_quantile(" not in bare:
                problems.append(f"{where}: {name} outside histogram_quantile()")
            groups = [g.replace(" ", "").split(",") for g in re.findall(r"by\s*\(([^)]*)\)", bare)]
            if not any("le" in g for g in groups):
                problems.append(f"{where}: {name} aggregated without keeping 'le'")
    for match in _VARIABLE.finditer(expr):
        var = match.group(1) or match.group(2)
        if var not in variables and var not in _BUILTIN_VARIABLES:
            problems.append(f"{where}: uses undefined variable ${var}")
    return problems


def validate(dashboard: dict[str, Any]) -> list[str]:
    """Structural and query problems of a dashboard JSON model; empty when it is sound.

    Checks what Grafana would silently accept but show wrongly: duplicate panel ids, panels
    without a data source or queries, overlapping or off-grid panels, names Ray does not export,
    counters or histogram buckets read without rate(), quantiles that drop ``le``, undefined
    template variables.
    """
    problems: list[str] = []
    uid = dashboard.get("uid", "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid or ""):
        problems.append(f"uid {uid!r}: 1-40 letters, digits, '-' or '_'")
    if not isinstance(dashboard.get("schemaVersion"), int):
        problems.append("schemaVersion missing")
    variables = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
    if "datasource" not in variables:
        problems.append("no 'datasource' template variable")
    panels = iter_panels(dashboard)
    ids = [p.get("id") for p in panels]
    dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if dupes:
        problems.append(f"duplicate panel ids {dupes}")
    boxes = []
    for p in panels:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        pos = p.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) for k in "xywh"):
            problems.append(f"{where}: gridPos missing")
        elif pos["x"] < 0 or pos["w"] < 1 or pos["x"] + pos["w"] > GRID_WIDTH or pos["h"] < 1:
            problems.append(f"{where}: gridPos {pos} is off the {GRID_WIDTH}-column grid")
        else:
            boxes.append((where, pos))
        if p.get("type") == "row":
            continue
        if p.get("datasource") != DATASOURCE:
            problems.append(f"{where}: datasource is not the ${{datasource}} variable")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{where}: duplicate refIds {refs}")
        for t in targets:
            if t.get("datasource") != DATASOURCE:
                problems.append(f"{where}: target {t.get('refId')} has no ${{datasource}}")
            if not t.get("expr", "").strip():
                problems.append(f"{where}: target {t.get('refId')} has an empty expr")
    for i, (w1, a) in enumerate(boxes):
        for w2, b in boxes[i + 1:]:
            if (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                    and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]):
                problems.append(f"{w1} overlaps {w2}")
    for p in panels:
        for t in p.get("targets", []):
            problems += _check_expr(t.get("expr", ""), f"panel {p.get('id')} {p.get('title')!r}",
                                    variables)
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query)
            problems += _check_expr(text, f"variable {var.get('name')}", variables,
                                    labels_only=True)
    return problems


def panel_table(dashboards: tuple[Dashboard, ...] = DASHBOARDS) -> str:
    """Markdown table: which panel reads which exported series (kept in dashboards/README.md
    by ``build.py``, so the documentation cannot drift from the panels either)."""
    lines = ["| Dashboard | Row | Panel | Series read |", "|---|---|---|---|"]
    for d in dashboards:
        for row in d.rows:
            for panel in row.panels:
                names = sorted(set().union(*(series_in(q.expr) for q in panel.queries)))
                lines.append(f"| {d.uid} | {row.title} | {panel.title} | "
                             f"{'<br>'.join(f'`{n}`' for n in names)} |")
    return "\n".join(lines) + "\n"
