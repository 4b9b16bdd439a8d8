"""Checks of a Grafana dashboard JSON model: structure, and every PromQL query against the
series Ray exports for the platform's registered metrics.

Works on the JSON (not on the Python definitions), so it validates what Grafana receives,
including a file someone edited by hand; ``dashboards/build.py`` refuses to write a dashboard
that fails :func:`validate`, and ``tests/test_dashboards.py`` runs it on deliberately broken
dashboards to show it catches what it claims to.
"""

from __future__ import annotations

import re
from typing import Any

from embedforge.metrics import ALL_METRICS

from .panels import DATASOURCE, EXPORT_PREFIX, GRID_WIDTH, series_to_metric

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
