"""The demo: the pipeline end to end on the bundled sample data (`make demo`).

Stages so far: prepare. Each later stage appends itself here, reading the previous
stage's folder, so the demo always shows every stage running for real.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from embedforge import io as eio
from embedforge.config import parse_config, run_cli
from embedforge.prepare import PrepareConfig, run_prepare
from embedforge.prepare.stage import format_report

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--output", default="runs/demo", help="run folder (default: runs/demo)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    args = ap.parse_args(argv)
    out = args.output

    print("== stage 1/1: prepare (raw sample files -> unified samples)")
    prep_argv = ["--config", str(ROOT / "jobs/configs/prepare-sample.yaml"),
                 "--output", eio.join(out, "prepared")]
    if args.num_cpus:
        prep_argv += ["--num-cpus", str(args.num_cpus)]
    cfg = parse_config(PrepareConfig, prep_argv)
    # sample paths in the config are relative to the repo root
    for src in cfg.sources:
        if not Path(src.path).is_absolute():
            src.path = str(ROOT / src.path)
    stats = run_prepare(cfg)
    print(format_report(stats))
    table = eio.read_samples(cfg.output).to_pylist()
    print("\nOne sample of each kind:")
    for kind in ("retrieval", "pair", "classification"):
        row = next(r for r in table if r["kind"] == kind)
        shown = {k: row[k] for k in ("dataset", "kind", "instruction", "query", "positive",
                                     "score", "label")}
        print(json.dumps(shown, ensure_ascii=False)[:400])
    if stats["unusable_sources"]:
        print(f"error: unusable sources: {stats['unusable_sources']}", file=sys.stderr)
        return 1
    print(f"\ndemo finished: {stats['total_samples']} samples in {cfg.output}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
