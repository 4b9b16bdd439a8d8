"""What every benchmark here shares: repeated-run statistics and sampled memory of a process tree.

A comparison is only as good as its spread: every figure a benchmark reports is the
min/median/max over repeated runs of each side, and peak memory is the sampled PSS of the
whole process tree (shared pages counted once), so Ray's helper processes are not hidden.
"""

from __future__ import annotations

import collections
import contextlib
import json
import statistics
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def provenance() -> dict[str, object]:
    """The commit the figures are measured on, and whether tracked files differed from it.

    Why: a figure is only comparable with the code that produced it. A results file that
    names no commit cannot say whether the README's numbers still hold (issue #32: the training
    benchmark moved 1.3 points and its file did not say which code had measured the old one).
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError) as exc:  # not a git checkout
        print(f"warning: cannot name the commit measured ({exc}); docs-check will refuse "
              "this results file until it names one", flush=True)
        return {"commit": "unknown", "dirty": True}


def write_results(path: str | Path, result: Mapping[str, object]) -> None:
    """``result`` as JSON at ``path``, with :func:`provenance` first (written even when git
    cannot say the commit: an hour of measurement is not thrown away for want of a name)."""
    Path(path).write_text(json.dumps({**provenance(), **result}, indent=2) + "\n")


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


def summarise(path: Path, markers: Mapping[str, str], by_process: bool = False
              ) -> tuple[int, dict[str, float], list[tuple[str, float]]]:
    """A py-spy ``--format raw`` profile: samples, the share under each marker (a substring
    of the stack) and the top leaf frames; with ``by_process`` the leaves are keyed by the
    stack's first frame too (py-spy ``--subprocesses`` puts the process there)."""
    total, marks, leaves = 0, collections.Counter(), collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for name, needle in markers.items():
            if needle in stack:
                marks[name] += int(n)
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        owner = procs[-1].split(":", 1)[-1][:60] if procs else "?"
        leaves[(owner + " | " if by_process else "") + frames[-1]] += int(n)
    share = {k: round(v / max(total, 1), 3) for k, v in marks.items()}
    return total, share, [(k, round(v / max(total, 1), 3)) for k, v in leaves.most_common(10)]
