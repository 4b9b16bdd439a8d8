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

from embedforge.config import ConfigError, parse_config, run_cli
from embedforge.eval.config import EvalConfig
from embedforge.eval.output import load_scores, run_gate, write_outputs
from embedforge.eval.report import fmt_points, mean_task, mean_task_type
from embedforge.eval.run import run_evaluation


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv)
    # read the baseline and comparison runs first: a typo must not cost a whole evaluation
    others = [load_scores(p) for p in ([cfg.baseline] if cfg.baseline else []) + cfg.compare]
    run = run_evaluation(cfg)
    regressions, gate, gate_md = ([], None, "")
    gate_error: ConfigError | None = None
    if cfg.baseline:
        try:
            regressions, gate, gate_md = run_gate(run, cfg.baseline, cfg.tolerance,
                                                  cfg.task_tolerance, cfg.allow_missing)
        except ConfigError as exc:  # keep the scores of the run, then report the mistake
            gate_error = exc
    paths = write_outputs(cfg.output, run, others, model_path=cfg.encoder.model, gate=gate,
                          gate_md=gate_md, config=cfg.model_dump(mode="json"))
    if gate_error is not None:
        raise gate_error
    rs = run.run_scores()
    print(f"[evaluate] {rs.model}: Mean(Task) {fmt_points(mean_task(rs.scores))}, "
          f"Mean(TaskType) {fmt_points(mean_task_type(rs.scores, rs.types))} over "
          f"{len(rs.scores)} task(s) in {run.seconds}s; wrote {', '.join(paths)} to {cfg.output}")
    failed = run.errors
    for name, err in failed.items():
        print(f"[evaluate] task {name} failed: {err}", file=sys.stderr)
    if cfg.baseline:
        if regressions:
            print(f"[gate] FAILED against {cfg.baseline} (tolerance {cfg.tolerance}):",
                  file=sys.stderr)
            for r in regressions:
                print(f"[gate]   {r.line()}", file=sys.stderr)
        else:
            print(f"[gate] passed against {cfg.baseline} (tolerance {cfg.tolerance})")
        for m in (gate or {}).get("spec_mismatches", []):
            print(f"[gate] warning: scored on different data than the baseline: {m}",
                  file=sys.stderr)
    return 1 if (regressions or failed) else 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
