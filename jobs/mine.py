"""Mine: fill `negatives` of retrieval samples with hard negatives (Ray + faiss).

    python jobs/mine.py --input runs/synth --corpus ../shared/data/scifact \
        --encoder.model PATH --output runs/mined --selection.rank-range 10-100 --num-shards 2
    ray job submit --working-dir . -- python jobs/mine.py --config mine.yaml
"""

from __future__ import annotations

import sys

from embedforge.config import parse_config, run_cli
from embedforge.mine.config import MineConfig
from embedforge.mine.stage import format_report, run_mine


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(MineConfig, argv)
    summary = run_mine(cfg)
    print(format_report(summary))
    print(f"[mine] wrote {summary['samples']} samples to {cfg.output} in {summary['seconds']}s "
          f"(audit/, audit.png, summary.json)")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
