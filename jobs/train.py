"""Train: two-stage contrastive fine-tuning on Ray Train + DeepSpeed, then export.

    python jobs/train.py --config jobs/configs/local-cpu.yaml            # laptop, CPU, gloo
    python jobs/train.py --config jobs/configs/qzhou-7b.yaml --run 2     # cluster, stage 2 only
    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/qzhou-7b.yaml

Re-running the same command resumes an interrupted stage from its last checkpoint and skips
finished ones (a stage whose config, starting model or input files changed runs again). The
final model (OUTPUT/stage2/model, or OUTPUT/stage1/model with --run 1) loads in
sentence-transformers and transformers.
"""

from __future__ import annotations

import sys

from embedforge.config import parse_config, run_cli
from embedforge.train.config import TrainConfig
from embedforge.train.run import run_train


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv)
    summary = run_train(cfg)
    for s in summary["stages"]:
        final = s.get("final") or {}
        print(f"[train] stage {s['stage']}: {s['steps']} steps, final loss {final.get('loss')}, "
              f"{final.get('examples_per_s')} ex/s, {s['seconds']} s -> {s['model']}")
    print(f"[train] model: {summary['model']}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
