"""Where jobs/mine.py's time goes on bench_mine.py's data: py-spy over the job and every process it starts.

Builds the benchmark's data (300 SciFact queries, 2,000-doc corpus), runs jobs/mine.py once
(fp32, cold cache) under ``py-spy record --subprocesses`` and prints the wall time, the share
of samples per process and under a few named frames, and the top leaf frames. Only busy
threads are sampled, so the shares say where the CPU went.

    .venv/bin/python benchmarks/profile_mine.py [--queries 300] [--corpus 2000]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_mine import ROOT, make_data, mine_command
from common import summarise

MARKERS = {"model forward": "forward (torch", "tokenizer": "tokeniz", "faiss": "faiss",
           "ray.init / start-up": "ray/_private/node.py", "parquet / arrow IO": "pyarrow",
           "selection": "mine/select.py", "imports": "_find_and_load"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--corpus", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=20, help="py-spy samples per second")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ef-prof-mine-"))
    make_data(work, args.queries, args.corpus)
    cmd = [*mine_command(work, 11, 50, 5, 0.95), "--output", str(work / "out"), "--cache", str(work / "emb")]
    raw = work / "profile.txt"
    spy = str(Path(sys.executable).parent / "py-spy")
    t0 = time.perf_counter()
    subprocess.run([spy, "record", "--subprocesses", "--rate", str(args.rate), "--format", "raw",
                    "-o", str(raw), "--", *cmd], cwd=ROOT, check=True, capture_output=True)
    print(f"jobs/mine.py under py-spy: {time.perf_counter() - t0:.1f} s (profile {raw})")
    per_proc: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            procs = [f for f in stack.split(";") if f.startswith("process ")]
            per_proc[procs[-1].split(":", 1)[-1][:100] if procs else "?"] += int(n)
    total, share, leaves = summarise(raw, MARKERS, by_process=True)
    print(f"{total} samples; share under {share}")
    print("samples per process:")
    for proc, n in per_proc.most_common(12):
        print(f"  {n / total:6.1%}  {proc}")
    print("top leaf frames:")
    for leaf, f in leaves:
        print(f"  {f:6.1%}  {leaf[:150]}")


if __name__ == "__main__":
    main()
