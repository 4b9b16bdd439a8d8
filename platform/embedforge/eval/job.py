"""One evaluation as a job runs it: score, gate against the baseline, write the outputs.

Shared by ``jobs/evaluate.py`` and the pipeline, so both gate the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import io as eio
from .. import tracking
from ..config import ConfigError
from ..safety import check_paths, claim_output
from .config import EvalConfig
from .output import load_scores, run_gate, write_outputs
from .report import Regression, fmt_points, mean_task, mean_task_type
from .run import EvalRun, Log, run_evaluation


@dataclass
class EvalOutcome:
    run: EvalRun
    paths: list[str]
    regressions: list[Regression] = field(default_factory=list)
    gate: dict[str, Any] | None = None

    @property
    def failed(self) -> dict[str, str]:
        return self.run.errors

    @property
    def passed(self) -> bool:
        return not (self.regressions or self.failed)

    def headline(self) -> str:
        rs = self.run.run_scores()
        return (f"{rs.model}: Mean(Task) {fmt_points(mean_task(rs.scores))}, Mean(TaskType) "
                f"{fmt_points(mean_task_type(rs.scores, rs.types))} over {len(rs.scores)} task(s) "
                f"in {self.run.seconds}s")


def evaluate_and_gate(cfg: EvalConfig, log: Log = print) -> EvalOutcome:
    """Evaluate; gate when ``cfg.baseline`` is set; write results/, scores.json, report.md.

    The baseline and comparison runs are read first: a typo must not cost a whole evaluation.
    A gate that cannot be computed still leaves the scores of the run on disk, then raises.
    """
    check_paths(cfg)
    others = [load_scores(p) for p in ([cfg.baseline] if cfg.baseline else []) + cfg.compare]
    claim_output(cfg.output, "evaluate", cfg.force)
    with tracking.job_run(cfg.tracking, cfg.output, "evaluate", {"embedforge.job": "evaluate"}) as trk:
        trk.log_params(cfg.model_dump(mode="json"))
        run = run_evaluation(cfg, log)
        regressions, gate, gate_md = [], None, ""
        gate_error: ConfigError | None = None
        if cfg.baseline:
            try:
                regressions, gate, gate_md = run_gate(run, cfg.baseline, cfg.tolerance,
                                                      cfg.task_tolerance, cfg.allow_missing)
            except ConfigError as exc:
                gate_error = exc
        paths = write_outputs(cfg.output, run, others, model_path=cfg.encoder.model, gate=gate,
                              gate_md=gate_md, config=cfg.model_dump(mode="json"))
        outcome = EvalOutcome(run, paths, regressions, gate)
        _track(trk, cfg, outcome)
        if gate_error is not None:
            raise gate_error
    return outcome


def _track(trk: tracking.AnyRun, cfg: EvalConfig, out: EvalOutcome) -> None:
    """Main score per task, the means and the gate verdict as metrics and tags; the report,
    scores.json and chart as artifacts (what a reader of the experiment tracker looks for)."""
    rs = out.run.run_scores()
    trk.log_metrics(tracking.numbers({"score": rs.scores, "mean_task": mean_task(rs.scores),
                                      "mean_task_type": mean_task_type(rs.scores, rs.types),
                                      "seconds": out.run.seconds}))
    verdict = "none" if not cfg.baseline else ("passed" if out.passed else "failed")
    trk.set_tags({"embedforge.gate": verdict, "embedforge.model": cfg.encoder.model,
                  **({"embedforge.failed_tasks": ", ".join(out.failed)} if out.failed else {})})
    files = ["report.md", "scores.json", "chart.png", *(["dims.png"] if out.run.dim_scores else [])]
    trk.log_files([eio.join(cfg.output, f) for f in files])
