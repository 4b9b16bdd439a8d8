"""Evaluate: score a model with mteb (local tasks or hub benchmarks) and gate on a baseline.

    python jobs/evaluate.py --encoder.model PATH --output runs/eval \
        --task stsb=sts:../shared/data/stsb/sts-test.csv \
        --task scifact=beir:../shared/data/scifact:dev --option scifact.max_corpus=1000 \
        [--baseline runs/eval-before] [--no-instructions]
    python jobs/evaluate.py --encoder.model PATH --benchmark "MTEB(eng, v2)" --ray --output DIR
    ray job submit --working-dir . -- python jobs/evaluate.py --config eval.yaml

Exit codes: 0 passed, 1 a task failed or regressed beyond the tolerance, 2 bad input.
"""

from __future__ import annotations

import sys

from embedforge.config import parse_config, run_cli
from embedforge.eval.config import EvalConfig
from embedforge.eval.job import evaluate_and_gate


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv)
    out = evaluate_and_gate(cfg)
    print(f"[evaluate] {out.headline()}; wrote {', '.join(out.paths)} to {cfg.output}")
    for name, err in out.failed.items():
        print(f"[evaluate] task {name} failed: {err}", file=sys.stderr)
    if cfg.baseline:
        if out.regressions:
            print(f"[gate] FAILED against {cfg.baseline} (tolerance {cfg.tolerance}):",
                  file=sys.stderr)
            for r in out.regressions:
                print(f"[gate]   {r.line()}", file=sys.stderr)
        else:
            print(f"[gate] passed against {cfg.baseline} (tolerance {cfg.tolerance})")
        for m in (out.gate or {}).get("spec_mismatches", []):
            print(f"[gate] warning: scored on different data than the baseline: {m}",
                  file=sys.stderr)
    return 0 if out.passed else 1


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
