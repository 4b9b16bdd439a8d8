"""Prepare: raw sources -> unified multi-task samples (Parquet), as a Ray Data job.

    python jobs/prepare.py --source scifact=beir:../shared/data/scifact:train \
        --source stsb=sts:data/sts.tsv --output runs/prepared
    ray job submit --working-dir . -- python jobs/prepare.py --config my.yaml
"""

from __future__ import annotations

import sys

from embedforge.config import parse_config, run_cli
from embedforge.prepare import PrepareConfig, run_prepare
from embedforge.prepare.stage import format_report


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PrepareConfig, argv)
    stats = run_prepare(cfg)
    print(format_report(stats))
    print(f"[prepare] wrote {stats['total_samples']} samples to {cfg.output} "
          f"in {stats['seconds']}s (stats.json, rejected/)")
    if stats["unusable_sources"]:
        names = ", ".join(sorted(stats["unusable_sources"]))
        print(f"error: unusable source(s): {names} (see {cfg.output}/stats.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
