"""Merge: average a training stage's last checkpoints, or interpolate two exported models.

    python jobs/merge.py --method average --stage runs/train/stage2 --checkpoints 3 \
        --output runs/merged-avg
    python jobs/merge.py --method slerp --a runs/train/stage1/model --b runs/train/stage2/model \
        --t 0.5 --output runs/merged-slerp

The output is a normal export folder (sentence-transformers + embedforge.json) with a
merge.json saying how it was made. Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import sys

from embedforge.config import parse_config, run_cli
from embedforge.train.merge_job import MergeConfig, run_merge


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(MergeConfig, argv)
    record = run_merge(cfg)
    print(f"[merge] {cfg.method}: wrote {cfg.output} in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
