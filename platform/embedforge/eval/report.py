"""Pure reporting: Mean(Task), Mean(TaskType), Markdown tables, bar chart, regression gate.

Means follow the MTEB leaderboard (and the QZhou-Embedding report): Mean(Task) averages every
task's main score; Mean(TaskType) first averages the tasks of each type, then the types, so a
benchmark heavy in one type (e.g. classification) does not dominate. Scores are mteb's
``main_score`` in 0-1; tables show them ×100 like the leaderboard. No mteb, no torch here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# leaderboard column order; other types follow alphabetically
TYPE_ORDER = ("Classification", "Clustering", "PairClassification", "Reranking", "Retrieval",
              "STS", "Summarization", "MultilabelClassification", "BitextMining",
              "InstructionRetrieval", "InstructionReranking")


@dataclass
class RunScores:
    """One model's scores: ``{task: main_score}`` and ``{task: task type}``."""

    model: str
    scores: dict[str, float]
    types: dict[str, str] = field(default_factory=dict)
    specs: dict[str, dict[str, object]] = field(default_factory=dict)

    def type_of(self, task: str) -> str:
        return self.types.get(task, "Unknown")


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def mean_task(scores: Mapping[str, float]) -> float:
    """Mean over tasks (NaN when any task has no score: a failed task must not raise the mean)."""
    vals = list(scores.values())
    if not vals or len(_finite(vals)) != len(vals):
        return math.nan
    return sum(vals) / len(vals)


def type_means(scores: Mapping[str, float], types: Mapping[str, str]) -> dict[str, float]:
    """Mean main score per task type."""
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for task, score in scores.items():
        groups[types.get(task, "Unknown")][task] = score
    return {t: mean_task(g) for t, g in groups.items()}


def mean_task_type(scores: Mapping[str, float], types: Mapping[str, str]) -> float:
    """Mean over task types of the per-type means."""
    return mean_task(type_means(scores, types))


def ordered_types(types: Sequence[str]) -> list[str]:
    known = [t for t in TYPE_ORDER if t in types]
    return known + sorted(set(types) - set(known))


def task_order(runs: Sequence[RunScores]) -> list[str]:
    """Every task of any run, grouped by type in leaderboard order, then by name."""
    types: dict[str, str] = {}
    for run in runs:
        for task in run.scores:
            types.setdefault(task, run.type_of(task))
    order = ordered_types(sorted(set(types.values())))
    return sorted(types, key=lambda t: (order.index(types[t]), t))


def fmt_points(v: float | None) -> str:
    """A 0-1 score as leaderboard points (×100, 2 decimals); "—" when missing or NaN."""
    return "—" if v is None or math.isnan(v) else f"{100 * v:.2f}"


_fmt = fmt_points


def summary(run: RunScores) -> dict[str, object]:
    """Means for scores.json (0-1, as mteb)."""
    return {"mean_task": mean_task(run.scores),
            "mean_task_type": mean_task_type(run.scores, run.types),
            "type_means": type_means(run.scores, run.types)}


def markdown(runs: Sequence[RunScores], title: str = "Evaluation") -> str:
    """Leaderboard-style summary (one row per model) and one table per task type.

    Means are computed over the tasks each run has; a task a run lacks shows as "—".
    """
    types: dict[str, str] = {}
    for run in runs:
        for task in run.scores:
            types.setdefault(task, run.type_of(task))
    tlist = ordered_types(sorted(set(types.values())))
    lines = [f"# {title}", "", "Scores are mteb main scores ×100. Mean(Task) averages tasks; "
             "Mean(TaskType) averages the per-type means (MTEB leaderboard).", "",
             "| model | tasks | Mean(Task) | Mean(TaskType) | " + " | ".join(tlist) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(tlist)]
    for run in runs:
        tm = type_means(run.scores, run.types)
        lines.append(f"| {run.model} | {len(run.scores)} | {_fmt(mean_task(run.scores))} | "
                     f"{_fmt(mean_task_type(run.scores, run.types))} | "
                     + " | ".join(_fmt(tm.get(t)) for t in tlist) + " |")
    for ttype in tlist:
        tasks = sorted(t for t, ty in types.items() if ty == ttype)
        lines += ["", f"## {ttype}", "", "| task | " + " | ".join(r.model for r in runs) + " |",
                  "|---|" + "---:|" * len(runs)]
        for task in tasks:
            lines.append(f"| {task} | " + " | ".join(_fmt(r.scores.get(task)) for r in runs) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(runs: Sequence[RunScores], path: str, title: str = "mteb main score") -> None:
    """Grouped bars: one group per task plus Mean(Task) / Mean(TaskType), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = task_order(runs)
    groups = [*tasks, "Mean(Task)", "Mean(TaskType)"]
    n = max(1, len(runs))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.5))
    lowest = 0.0
    for i, run in enumerate(runs):
        vals = [run.scores.get(t, math.nan) for t in tasks]
        vals += [mean_task(run.scores), mean_task_type(run.scores, run.types)]
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        heights = [0 if math.isnan(v) else 100 * v for v in vals]
        lowest = min(lowest, *heights)
        bars = ax.bar(xs, heights, width, label=run.model)
        for bar, v in zip(bars, vals, strict=True):
            if not math.isnan(v):
                ax.annotate(f"{100 * v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel("score ×100")
    ax.set_ylim(lowest - 5 if lowest < 0 else 0, 105)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dims_table(dim_scores: Mapping[str, Mapping[int, float]], full_scores: Mapping[str, float],
               full_dim: int) -> str:
    """Markdown: one row per task, one column per Matryoshka size (full size last), plus the
    mean over tasks, so the quality a smaller index costs is read off one line."""
    dims = sorted({d for by in dim_scores.values() for d in by})
    cols = [*dims, full_dim]
    tasks = sorted(dim_scores)
    lines = ["", "## Score by embedding size (Matryoshka)", "",
             "Each task scored with embeddings truncated to the first N dimensions and "
             "renormalised; the full size is the main score the gate uses.", "",
             "| task | " + " | ".join(f"{d}" + (" (full)" if d == full_dim else "") for d in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for task in tasks:
        row = {**dim_scores[task], full_dim: full_scores.get(task, math.nan)}
        lines.append(f"| {task} | " + " | ".join(_fmt(row.get(d)) for d in cols) + " |")
    means = [mean_task({t: ({**dim_scores[t], full_dim: full_scores.get(t, math.nan)}).get(d, math.nan)
                        for t in tasks}) for d in cols]
    lines.append("| Mean(Task) | " + " | ".join(_fmt(m) for m in means) + " |")
    return "\n".join(lines) + "\n"


def dims_chart(dim_scores: Mapping[str, Mapping[int, float]], full_scores: Mapping[str, float],
               full_dim: int, path: str, title: str = "score vs embedding size") -> None:
    """One line per task (and Mean(Task)): main score against the truncated size, log-2 x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({d for by in dim_scores.values() for d in by} | {full_dim})
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    rows = {t: {**dim_scores[t], full_dim: full_scores.get(t, math.nan)} for t in sorted(dim_scores)}
    for task, row in rows.items():
        ax.plot(dims, [100 * row.get(d, math.nan) for d in dims], marker="o", label=task)
    means = [100 * mean_task({t: r.get(d, math.nan) for t, r in rows.items()}) for d in dims]
    ax.plot(dims, means, marker="s", color="black", linewidth=2, label="Mean(Task)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims)
    ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("embedding dimensions")
    ax.set_ylabel("score ×100")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class Regression:
    """A task that fails the gate, and why."""

    task: str
    baseline: float
    current: float | None
    reason: str  # "dropped" | "missing" | "failed"

    @property
    def delta(self) -> float:
        return math.nan if self.current is None else self.current - self.baseline

    def line(self) -> str:
        if self.reason == "dropped":
            return (f"{self.task}: {_fmt(self.baseline)} -> {_fmt(self.current)} "
                    f"({100 * self.delta:+.2f} points)")
        return f"{self.task}: {self.reason} (baseline {_fmt(self.baseline)})"


def compare(baseline: Mapping[str, float], current: Mapping[str, float], tolerance: float,
            per_task: Mapping[str, float] | None = None,
            allow_missing: bool = False) -> list[Regression]:
    """Tasks of the baseline whose current score dropped by more than the tolerance.

    ``tolerance`` is absolute in main-score units (0.01 = 1 leaderboard point), overridable per
    task. A baseline task without a current score is a regression ("missing", unless
    ``allow_missing``) and one whose score is NaN is one too ("failed"): a gate that silently
    compares nothing would let anything ship.
    """
    per_task = per_task or {}
    out: list[Regression] = []
    for task in sorted(baseline):
        base = baseline[task]
        if base is None or math.isnan(base):
            continue
        if task not in current:
            if not allow_missing:
                out.append(Regression(task, base, None, "missing"))
            continue
        cur = current[task]
        if cur is None or math.isnan(cur):
            out.append(Regression(task, base, None, "failed"))
            continue
        if cur < base - per_task.get(task, tolerance) - 1e-12:
            out.append(Regression(task, base, cur, "dropped"))
    return out


def spec_mismatches(baseline: RunScores, current: RunScores) -> list[str]:
    """Tasks scored on different data (path, split, caps, seed…) in the two runs.

    Names alone do not make scores comparable: SciFact on a 1,000-doc corpus is not SciFact on
    5,183. The gate still runs; the mismatch is reported next to its verdict.
    """
    out = []
    for task in sorted(set(baseline.specs) & set(current.specs)):
        a, b = baseline.specs[task], current.specs[task]
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if keys:
            out.append(f"{task}: " + ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys))
    return out
