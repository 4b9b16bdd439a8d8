"""Pipeline: prepare -> synthesize -> mine -> train stage 1 -> train stage 2 -> merge (optional
grid of t, best on dev tasks) -> evaluate (gate) -> serve, as one resumable job.

    python jobs/pipeline.py --config jobs/configs/demo.yaml            # what `make demo` runs
    python jobs/pipeline.py --config my.yaml --stages train1,train2,evaluate --force train2
    ray job submit --working-dir . -- python jobs/pipeline.py --config my.yaml

Each stage reads the previous stage's folder under --output; a stage whose output is complete
for the same config and inputs is skipped, so re-running the command resumes a stopped run.
OUTPUT/manifest.json records inputs, configs, versions, outputs and metrics of every stage.
Exit codes: 0 finished, 1 the gate failed (nothing served), 2 bad config or input.
"""

from __future__ import annotations

import sys

from embedforge.config import parse_config, run_cli
from embedforge.pipeline.config import PipelineConfig
from embedforge.pipeline.run import run_pipeline
from embedforge.pipeline.stages import GateFailed


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PipelineConfig, argv)
    try:
        run_pipeline(cfg, log=lambda m: print(m, flush=True))
    except GateFailed as exc:
        print(f"[gate] {exc}", file=sys.stderr)
        return 1
    print(f"\n[pipeline] finished: {cfg.output}/manifest.json")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
