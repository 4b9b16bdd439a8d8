"""Run tasks with mteb: in process, or fanned out over Ray actors (one task per actor call).

An :class:`EvalSession` loads the model once and evaluates tasks one after another; the Ray
path starts one session per actor (one per GPU by default) and hands each a task at a time,
so a 41-task benchmark loads a 7B model once per GPU, not once per task. Scores are read
from the ``TaskResult`` objects ``mteb.evaluate`` returns (``main_score``), never recomputed.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError
from ..instructions import InstructionMap
from ..model.encoder import EncoderSettings
from .config import EvalConfig
from .readers import check_spec
from .report import RunScores
from .spec import TaskSpec, spec_from_any

Log = Callable[[str], None]


@dataclass
class TaskOutcome:
    """One task's result: mteb's TaskResult (None when the task failed) and what we need of it."""

    name: str
    type: str
    main_score: float
    main_metric: str
    result: Any = None  # mteb TaskResult
    error: str | None = None
    seconds: float = 0.0
    prefixes: dict[str, str] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    dim_scores: dict[int, float] = field(default_factory=dict)  # Matryoshka: size -> main score


@dataclass
class EvalRun:
    """A model's outcomes on every task, plus its mteb ModelMeta (for the results layout)."""

    model_meta: Any
    outcomes: list[TaskOutcome]
    instructions: bool = True
    seconds: float = 0.0

    @property
    def scores(self) -> dict[str, float]:
        return {o.name: o.main_score for o in self.outcomes}

    @property
    def types(self) -> dict[str, str]:
        return {o.name: o.type for o in self.outcomes}

    @property
    def dim_scores(self) -> dict[str, dict[int, float]]:
        """``{task: {dim: main score}}`` for the truncated sizes scored (``--dims``)."""
        return {o.name: o.dim_scores for o in self.outcomes if o.dim_scores}

    @property
    def errors(self) -> dict[str, str]:
        return {o.name: o.error for o in self.outcomes if o.error}

    def run_scores(self) -> RunScores:
        return RunScores(model=self.model_meta.name, scores=self.scores, types=self.types,
                         specs={o.name: o.spec for o in self.outcomes})


@dataclass
class RaySettings:
    """How to fan out over Ray (``None`` anywhere: decide from the cluster)."""

    address: str | None = None
    num_cpus: int | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None


class EvalSession:
    """The model, loaded once, evaluating one task at a time (in the driver or a Ray actor)."""

    def __init__(self, settings: EncoderSettings, instructions: InstructionMap | None,
                 devices: Sequence[str] = (), model_name: str | None = None,
                 spec_instructions: Mapping[str, str] | None = None, dims: Sequence[int] = ()):
        import datasets

        from .model import MTEBEncoder

        datasets.disable_progress_bars()  # one line per task from us instead
        self.model = MTEBEncoder(settings, instructions, devices=devices, name=model_name,
                                 spec_instructions=dict(spec_instructions or {}))
        self.batch_size = settings.batch_size
        full = self.model.encoders[0].dim
        too_big = [d for d in dims if d > full]
        if too_big:
            raise ConfigError(f"--dims {','.join(map(str, too_big))}: more than the model's "
                              f"embedding size {full}")
        self.dims = [d for d in dims if d < full]  # the full size is scored anyway

    def meta(self) -> Any:
        return self.model.mteb_model_meta

    def run(self, spec: TaskSpec) -> TaskOutcome:
        from .tasks import build_task

        t0 = time.time()
        metric = ""
        ttype = ""
        try:
            task = build_task(spec)
            metric, ttype = task.metadata.main_score, str(task.metadata.type)
            self.model.start_task(cache=bool(self.dims))
            tr = self._evaluate(task, spec.name)
            dim_scores = {}
            for dim in self.dims:  # the same task again on the cached full vectors, truncated
                self.model.truncate_dim = dim
                dim_scores[dim] = float(self._evaluate(build_task(spec), spec.name).main_score)
            self.model.start_task(cache=False)
            return TaskOutcome(spec.name, ttype, float(tr.main_score), metric, result=tr,
                               seconds=round(time.time() - t0, 2),
                               prefixes=self.model.prefixes_used.get(task.metadata.name, {}),
                               spec=spec.model_dump(mode="json", exclude_defaults=True),
                               dim_scores=dim_scores)
        except Exception as exc:  # one failed task must not lose the others' results
            self.model.start_task(cache=False)
            return TaskOutcome(spec.name, ttype or "Unknown", math.nan, metric,
                               error=f"{type(exc).__name__}: {exc}",
                               seconds=round(time.time() - t0, 2),
                               spec=spec.model_dump(mode="json", exclude_defaults=True))


    def _evaluate(self, task: Any, name: str) -> Any:
        import mteb

        with warnings.catch_warnings():
            # k-shot classifiers on capped data leave some labels unpredicted: sklearn
            # warns once per label and experiment, burying our lines
            warnings.filterwarnings("ignore", module=r"sklearn\.")
            res = mteb.evaluate(self.model, task, cache=None, show_progress_bar=False,
                                encode_kwargs={"batch_size": self.batch_size,
                                               "show_progress_bar": False})
        if not res.task_results:
            raise RuntimeError(f"mteb returned no result for {name}")
        return res.task_results[0]


def resolve_specs(tasks: Iterable[TaskSpec], benchmarks: Iterable[str] = (),
                  mteb_tasks: Iterable[str] = ()) -> list[TaskSpec]:
    """Local specs (files checked now) + benchmark tasks + single mteb tasks, names unique."""
    from .tasks import benchmark_task_names, get_hub_task

    specs: list[TaskSpec] = []
    seen: set[str] = set()

    def add(spec: TaskSpec) -> None:
        if spec.name in seen:
            if spec.kind == "mteb":  # the same hub task in two benchmarks: once is enough
                return
            raise ConfigError(f"task name {spec.name!r} is used twice")
        seen.add(spec.name)
        specs.append(spec)

    for spec in tasks:
        check_spec(spec)
        add(spec)
    hub = [(n, b) for b in benchmarks for n in benchmark_task_names(b)]
    hub += [(n, None) for n in mteb_tasks]
    for name, bench in hub:
        get_hub_task(name, bench)  # unknown names fail here, before any model is loaded
        add(TaskSpec(name=name, kind="mteb", path=name, benchmark=bench))
    if not specs:
        raise ConfigError("nothing to evaluate: give --task, --benchmark or --mteb-task")
    return specs


def check_model(path: str) -> None:
    """A missing local model folder is a one-line error, not a transformers traceback.

    ``org/name`` that is not a local folder is left to transformers (a hub id)."""
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not os.path.exists(path) and "://" not in path and not looks_like_hub_id:
        raise ConfigError(f"model folder not found: {path}")


def run_tasks(settings: EncoderSettings, specs: Sequence[TaskSpec], *,
              instructions: InstructionMap | None, devices: Sequence[str] = (),
              model_name: str | None = None, ray: RaySettings | None = None,
              log: Log = print, dims: Sequence[int] = ()) -> EvalRun:
    """Evaluate ``specs``; on Ray when ``ray`` is given and there is more than one task.
    ``dims``: Matryoshka sizes each task is also scored at (truncated, renormalised)."""
    t0 = time.time()
    kwargs = dict(settings=settings, instructions=instructions, devices=list(devices),
                  model_name=model_name, dims=list(dims),
                  spec_instructions={s.name: s.instruction for s in specs if s.instruction})
    if ray is not None and len(specs) > 1:
        meta, outcomes = _run_on_ray(kwargs, specs, ray, log)
    else:
        session = EvalSession(**kwargs)
        meta, outcomes = session.meta(), []
        for spec in specs:
            outcome = session.run(spec)
            _log_outcome(outcome, log)
            outcomes.append(outcome)
    return EvalRun(meta, outcomes, instructions=instructions is not None,
                   seconds=round(time.time() - t0, 2))


def _log_outcome(o: TaskOutcome, log: Log) -> None:
    if o.error:
        log(f"[evaluate] {o.name}: FAILED after {o.seconds}s: {o.error}")
    else:
        at = "".join(f", {d}: {v:.4f}" for d, v in o.dim_scores.items())
        log(f"[evaluate] {o.name} ({o.type}): {o.main_metric} = {o.main_score:.4f}{at} in {o.seconds}s")


def _run_on_ray(kwargs: dict[str, Any], specs: Sequence[TaskSpec], rs: RaySettings,
                log: Log) -> tuple[Any, list[TaskOutcome]]:
    import ray
    from ray.util import ActorPool

    from ..cluster import connect

    with connect(rs.address, rs.num_cpus):
        gpus = ray.cluster_resources().get("GPU", 0)
        per = rs.gpus_per_worker if rs.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        workers = rs.workers or (max(1, int(gpus // per)) if per else 1)
        workers = min(workers, len(specs))
        log(f"[evaluate] {len(specs)} tasks on {workers} Ray actor(s) "
            f"({rs.cpus_per_worker} CPU, {per} GPU each)")
        actor_cls = ray.remote(num_cpus=rs.cpus_per_worker, num_gpus=per)(EvalSession)
        actors = [actor_cls.remote(**kwargs) for _ in range(workers)]
        meta = ray.get(actors[0].meta.remote())
        pool = ActorPool(actors)
        done: dict[str, TaskOutcome] = {}
        for outcome in pool.map_unordered(lambda a, s: a.run.remote(s), list(specs)):
            _log_outcome(outcome, log)
            done[outcome.name] = outcome
        for a in actors:
            ray.kill(a)
    return meta, [done[s.name] for s in specs]


def run_evaluation(cfg: EvalConfig, log: Log = print) -> EvalRun:
    """The job's run: resolve tasks and instructions from the config, then evaluate."""
    check_model(cfg.encoder.model)
    specs = resolve_specs(cfg.tasks, cfg.benchmarks, cfg.mteb_tasks)
    instr = (InstructionMap.load(cfg.instruction_file, cfg.instruction_map)
             if cfg.instructions else None)
    ray = (RaySettings(cfg.ray_address, cfg.num_cpus, cfg.workers, cfg.cpus_per_worker,
                       cfg.gpus_per_worker) if cfg.ray else None)
    log(f"[evaluate] {cfg.encoder.model}: {len(specs)} task(s), instructions "
        f"{'on' if instr else 'off'}")
    return run_tasks(cfg.encoder, specs, instructions=instr, devices=cfg.devices,
                     model_name=cfg.model_name, ray=ray, log=log, dims=cfg.dims or ())


def evaluate_model(
    model: str | EncoderSettings,
    tasks: Sequence[str | TaskSpec | Mapping[str, Any]],
    *,
    instructions: bool = True,
    instruction_map: Mapping[str, str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    model_name: str | None = None,
    use_ray: bool = False,
    output: str | None = None,
    dims: Sequence[int] = (),
    log: Log = lambda _msg: None,
) -> dict[str, float]:
    """``{task name: mteb main_score}`` for a model folder on task specs — for other code.

    ``tasks`` are ``NAME=KIND:PATH[:SPLIT]`` strings, dicts or TaskSpecs; ``options`` adds
    per-task options (``{"scifact": {"max_corpus": 1000}}``). With ``output`` the full job
    outputs (mteb JSON, scores.json, report.md, chart.png) are written too; ``dims`` scores
    Matryoshka sizes too (in the outputs; the returned scores are the full size). A failed task
    raises, so a caller never mistakes a missing score for a bad one.
    """
    from .output import write_outputs

    if isinstance(model, EncoderSettings):
        settings = model
    else:
        settings = EncoderSettings(model=str(model), device=device,
                                   **({"batch_size": batch_size} if batch_size else {}))
    specs = []
    for item in tasks:
        spec = spec_from_any(item)
        extra = dict((options or {}).get(spec.name, {}))
        specs.append(TaskSpec.model_validate({**spec.model_dump(), **extra}) if extra else spec)
    check_model(settings.model)
    specs = resolve_specs(specs)
    instr = InstructionMap.load(overrides=instruction_map) if instructions else None
    run = run_tasks(settings, specs, instructions=instr, model_name=model_name,
                    ray=RaySettings() if use_ray else None, log=log, dims=dims)
    if output:
        write_outputs(output, run)
    if run.errors:
        raise RuntimeError("evaluation failed: " + "; ".join(f"{k}: {v}" for k, v in run.errors.items()))
    return run.scores
