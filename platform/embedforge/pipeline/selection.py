"""Pure choice of the model the pipeline evaluates and serves after a merge grid.

No Ray, no torch: the merge stage scores stage 2 and each merge on the dev tasks, then asks
these functions which one to keep and how to say so in the stage table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def _usable(score: float | None) -> bool:
    return score is not None and not math.isnan(score)


def choose_t(stage2: float, merges: Mapping[float, float | None]) -> float | None:
    """The ``t`` of the merge to keep, or None to keep stage 2.

    A merge must strictly beat stage 2: a tie keeps the model that training produced (no
    extra artefact to explain for no gain). Between tied merges the first in grid order wins,
    so the result does not depend on float noise in how the grid was written. A merge whose
    dev score is missing or NaN (a task failed) is never chosen. Stage 2's own score must be
    usable: without it there is nothing to compare against.
    """
    if not _usable(stage2):
        raise ValueError(f"stage 2 has no usable dev score ({stage2}): cannot choose")
    best_t, best = None, stage2
    for t, score in merges.items():
        if _usable(score) and score > best:  # type: ignore[operator]
            best_t, best = t, score  # type: ignore[assignment]
    return best_t


def describe_choice(summary: Mapping[str, object]) -> str:
    """The merge stage's line in the pipeline's stage table."""
    if summary.get("skipped"):
        return f"skipped ({summary['skipped']})"
    s2 = float(summary["stage2"])  # type: ignore[arg-type]
    grid: Mapping[str, float | None] = summary.get("grid") or {}  # type: ignore[assignment]
    t = summary.get("t")
    if t is not None:
        return f"t={t:g} chosen: {grid[f'{t:g}']:.4f} vs stage2 {s2:.4f}"
    scored = {k: v for k, v in grid.items() if _usable(v)}
    if not scored:
        return f"stage2 kept: {s2:.4f} (no merge scored)"
    k = max(scored, key=lambda x: scored[x])  # type: ignore[arg-type,return-value]
    return f"stage2 kept: {s2:.4f} (best merge t={k} {scored[k]:.4f})"
