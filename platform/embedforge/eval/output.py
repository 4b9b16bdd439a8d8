"""Write a run's files and read earlier runs back (baseline, comparisons).

``results/`` is written by mteb's own ``ResultCache.save_to_cache`` (its layout:
``results/<org__model>/<revision>/<Task>.json`` + ``model_meta.json``), so any mteb tool reads
it. ``scores.json`` is the compact view the gate and other stages read. A remote output
(``s3://…``) is written locally first and uploaded with fsspec.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import io as eio
from ..config import ConfigError
from ..redact import redact, redact_obj
from . import report
from .report import Regression, RunScores
from .run import EvalRun


@contextlib.contextmanager
def local_dir(output: str) -> Iterator[Path]:
    """A local folder for ``output``: itself, or a temp folder uploaded on success."""
    if "://" not in output or output.startswith("file://"):
        path = Path(output.removeprefix("file://"))
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="ef-eval-"))
    try:
        yield tmp
        import fsspec

        fs, _, (root,) = fsspec.get_fs_token_paths(output)
        fs.put(str(tmp) + "/", root, recursive=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _nan_to_none(v: float) -> float | None:
    return None if v is None or math.isnan(v) else v


def scores_document(run: EvalRun, model_path: str | None = None,
                    gate: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of scores.json (main scores in 0-1, as mteb; NaN written as null)."""
    rs = run.run_scores()
    means = report.summary(rs)
    tasks = {}
    for o in run.outcomes:
        tasks[o.name] = {
            "main_score": _nan_to_none(o.main_score), "main_metric": o.main_metric,
            "type": o.type, "seconds": o.seconds, "instructions": o.prefixes,
            "spec": o.spec, **({"error": o.error} if o.error else {}),
            **({"dims": {str(d): _nan_to_none(v) for d, v in o.dim_scores.items()}}
               if o.dim_scores else {}),
        }
    meta = run.model_meta
    return {
        "model": {"name": meta.name, "revision": meta.revision, "path": model_path,
                  "instructions": run.instructions, "embed_dim": meta.embed_dim},
        "tasks": tasks,
        "mean_task": _nan_to_none(means["mean_task"]),  # type: ignore[arg-type]
        "mean_task_type": _nan_to_none(means["mean_task_type"]),  # type: ignore[arg-type]
        "type_means": {k: _nan_to_none(v) for k, v in means["type_means"].items()},  # type: ignore[union-attr]
        "seconds": run.seconds,
        "gate": gate,
        **({"dims": _dims_summary(run)} if run.dim_scores else {}),
    }


def _dims_summary(run: EvalRun) -> dict[str, Any]:
    """Mean(Task) per scored size (full size included): the curve at a glance."""
    full = int(run.model_meta.embed_dim)
    sizes = [*sorted({d for by in run.dim_scores.values() for d in by}), full]
    rows = {t: {**by, full: run.scores[t]} for t, by in run.dim_scores.items()}
    return {"sizes": sizes, "full": full,
            "mean_task": {str(d): _nan_to_none(report.mean_task(
                {t: r.get(d, math.nan) for t, r in rows.items()})) for d in sizes}}


def gate_section(regressions: Sequence[Regression], baseline: RunScores, tolerance: float,
                 mismatches: Sequence[str] = ()) -> str:
    lines = ["", "## Regression gate", "",
             f"Baseline: {baseline.model}; tolerance {100 * tolerance:.2f} points per task.", ""]
    if regressions:
        lines += [f"**FAILED**: {len(regressions)} task(s) regressed:", ""]
        lines += [f"- {r.line()}" for r in regressions]
    else:
        lines.append("**PASSED**: no task dropped by more than the tolerance.")
    if mismatches:
        lines += ["", "Warning: these tasks were scored on different data in the baseline:", ""]
        lines += [f"- {m}" for m in mismatches]
    return "\n".join(lines) + "\n"


def write_outputs(output: str, run: EvalRun, others: Sequence[RunScores] = (),
                  model_path: str | None = None, gate: dict[str, Any] | None = None,
                  gate_md: str = "", config: dict[str, Any] | None = None) -> dict[str, str]:
    """results/ (mteb JSON), scores.json, report.md, chart.png [, dims.png, config.json];
    returns paths."""
    from mteb.cache import ResultCache

    with local_dir(output) as root:
        cache = ResultCache(cache_path=root)
        for o in run.outcomes:
            if o.result is not None:
                cache.save_to_cache(o.result, run.model_meta)
        doc = scores_document(run, model_path, gate)
        (root / "scores.json").write_text(json.dumps(redact_obj(doc), indent=2, ensure_ascii=False))
        runs = [run.run_scores(), *others]
        md = report.markdown(runs, title=f"Evaluation of {run.model_meta.name}")
        errors = run.errors
        if errors:
            md += "\n## Failed tasks\n\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items()) + "\n"
        full_dim = int(run.model_meta.embed_dim)
        if run.dim_scores:
            md += report.dims_table(run.dim_scores, run.scores, full_dim)
            report.dims_chart(run.dim_scores, run.scores, full_dim, str(root / "dims.png"))
        (root / "report.md").write_text(redact(md + gate_md))
        report.bar_chart(runs, str(root / "chart.png"))
        if config is not None:
            (root / "config.json").write_text(json.dumps(redact_obj(config), indent=2, default=str))
    names = ["results", "scores.json", "report.md", "chart.png", *(["dims.png"] if run.dim_scores else [])]
    return {name: eio.join(output, name) for name in names}


def load_scores(path: str) -> RunScores:
    """Scores of an earlier run: its folder, its scores.json, or a folder of mteb result JSON.

    mteb result files are read with mteb's ``TaskResult`` (their ``main_score``).
    """
    if not eio.exists(path):
        raise ConfigError(f"baseline/compare run not found: {path}")
    candidates = [path] if path.endswith(".json") else [eio.join(path, "scores.json")]
    for cand in candidates:
        if eio.exists(cand):
            doc = eio.read_json(cand)
            if not isinstance(doc, dict) or "tasks" not in doc:
                raise ConfigError(f"{cand} is not an embedforge scores.json (no `tasks`)")
            return RunScores(
                model=str((doc.get("model") or {}).get("name") or cand),
                scores={k: math.nan if v.get("main_score") is None else float(v["main_score"])
                        for k, v in doc["tasks"].items()},
                types={k: str(v.get("type") or "Unknown") for k, v in doc["tasks"].items()},
                specs={k: dict(v.get("spec") or {}) for k, v in doc["tasks"].items()})
    return _load_mteb_results(path)


def _load_mteb_results(path: str) -> RunScores:
    from mteb.results import TaskResult

    if "://" in path and not path.startswith("file://"):
        raise ConfigError(f"{path}: remote mteb result folders are not supported; "
                          f"point at the run's scores.json")
    root = Path(path.removeprefix("file://"))
    files = [p for p in root.rglob("*.json")
             if p.name not in ("model_meta.json", "scores.json", "config.json")]
    if not files:
        raise ConfigError(f"{path}: no scores.json and no mteb result JSON files found")
    folders = {f.parent for f in files}
    if len(folders) > 1:
        raise ConfigError(f"{path}: results of several models/revisions "
                          f"({', '.join(sorted(str(f) for f in folders)[:4])}): point at one")
    folder = folders.pop()
    meta_file = folder / "model_meta.json"
    name = (json.loads(meta_file.read_text()).get("name") if meta_file.exists()
            else None) or os.path.basename(str(folder.parent))
    scores, types = {}, {}
    for f in sorted(files):
        try:
            tr = TaskResult.from_disk(f)
        except Exception as exc:
            raise ConfigError(f"{f}: not an mteb result file ({type(exc).__name__})") from None
        scores[tr.task_name] = float(tr.main_score)
        types[tr.task_name] = _mteb_type(tr.task_name)
    return RunScores(model=str(name), scores=scores, types=types)


def _mteb_type(task_name: str) -> str:
    import mteb

    try:
        return str(mteb.get_task(task_name).metadata.type)
    except Exception:
        return "Unknown"


def run_gate(run: EvalRun, baseline_path: str, tolerance: float,
             per_task: dict[str, float] | None = None,
             allow_missing: bool = False) -> tuple[list[Regression], dict[str, Any], str]:
    """Compare ``run`` with the baseline run: (regressions, scores.json entry, report section).

    A baseline sharing no task with this run is an error, not a pass: a gate that compared
    nothing would let any model ship.
    """
    base = load_scores(baseline_path)
    current = run.scores
    if not set(base.scores) & set(current):
        raise ConfigError(f"baseline {baseline_path} shares no task with this run "
                          f"(baseline: {', '.join(sorted(base.scores)[:5])}; "
                          f"this run: {', '.join(sorted(current)[:5])})")
    regressions = report.compare(base.scores, current, tolerance, per_task, allow_missing)
    mismatches = report.spec_mismatches(base, run.run_scores())
    entry = {"baseline": baseline_path, "baseline_model": base.model, "tolerance": tolerance,
             "passed": not regressions, "spec_mismatches": mismatches,
             "regressions": [{"task": r.task, "baseline": r.baseline,
                              "current": r.current, "reason": r.reason} for r in regressions]}
    return regressions, entry, gate_section(regressions, base, tolerance, mismatches)
