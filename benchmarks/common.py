"""What every benchmark here shares: repeated-run statistics and sampled memory of a process tree.

A comparison is only as good as its spread: every figure a benchmark reports is the
min/median/max over repeated runs of each side, and peak memory is the sampled PSS of the
whole process tree (shared pages counted once), so Ray's helper processes are not hidden.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
from collections.abc import Iterable, Iterator

import psutil


def spread(values: Iterable[float], digits: int = 2) -> dict[str, float]:
    """``{"min", "median", "max", "n"}`` of repeated measurements."""
    v = sorted(values)
    return {"min": round(v[0], digits), "median": round(statistics.median(v), digits),
            "max": round(v[-1], digits), "n": len(v)}


def fmt(s: dict[str, float], unit: str = "") -> str:
    """``median (min–max)`` for tables and logs."""
    return f"{s['median']:g}{unit} ({s['min']:g}–{s['max']:g})"


def tree_pss(pid: int) -> int:
    """PSS bytes of ``pid`` and all its descendants (0 once it is gone)."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            total += q.memory_full_info().pss
    return total


@contextlib.contextmanager
def peak_memory(pid: int, every_s: float = 1.0) -> Iterator[dict[str, float]]:
    """Sample the tree's PSS every ``every_s`` while the block runs; yields ``{"peak_mb"}``.

    Sampling is gentle on purpose: reading smaps of ~15 Ray processes costs CPU that the
    measured work would otherwise get.
    """
    out = {"peak_mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak_mb"] = max(out["peak_mb"], tree_pss(pid) / 2**20)
            stop.wait(every_s)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        yield out
    finally:
        stop.set()
        th.join()
        out["peak_mb"] = round(out["peak_mb"], 1)


def rotated(items: list[str], run: int) -> list[str]:
    """The order of the sides in run ``run``: rotated, so no side always runs first or last."""
    k = run % len(items)
    return items[k:] + items[:k]
