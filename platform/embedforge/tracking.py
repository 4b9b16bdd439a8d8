"""Experiment tracking in MLflow: what training, evaluation and the pipeline record.

- ``train``: one run per training stage; rank 0 logs loss (overall, per task, per task and
  dataset), lr, examples/s, tokens/s and epochs per dataset at every ``log_every`` step, the
  driver the config as params and ``metrics.jsonl`` / ``loss.png`` / ``summary.json``.
- ``evaluate``: main score per task, Mean(Task), Mean(TaskType), the gate verdict,
  ``report.md``, ``scores.json`` and ``chart.png``.
- ``pipeline``: one parent run (its config, ``manifest.json``) with a nested run per stage (the
  stage's resolved config, status, seconds, headline numbers); the training and evaluation
  stages log into their nested run, and the final exported model is an artifact of it.

Where: ``--tracking.uri`` (an MLflow server, or any store URI MLflow accepts), by default a
local file store under the job's output folder (``OUTPUT/mlruns``; read it with
``mlflow ui --backend-store-uri OUTPUT/mlruns``). MLflow 3.x keeps its file store in
maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; this module opts in for ``file:`` URIs
only, because it needs no database package (``mlflow-skinny`` has no SQLAlchemy) and plain
files are safe with several writers (driver and rank-0 worker) on a shared filesystem, where
SQLite's locking is not. ``--tracking.enabled false`` turns it all off.

Runs are written through ``MlflowClient`` with explicit run ids, never MLflow's process-global
"active run": a Ray Train worker logs to the run its driver opened by id (:func:`attach`), and
nesting is a tag (``mlflow.parentRunId``). The one piece of process state here is
:func:`activate`: the pipeline marks its stage's run active so that the training and
evaluation code it calls logs into that run instead of opening its own.

MLflow is imported only when tracking is enabled, so the library imports without it. A failure
to log after the run exists (a tracking server gone away) prints a warning and never stops a
job: losing a metric is cheaper than losing a training day.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from pydantic import Field

from .config import ConfigError, ConfigSection
from .redact import redact, redact_obj
from .safety import path_field

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value (characters)
MAX_KEY = 250
BATCH = 100  # params / metrics per log_batch call (MLflow's limit for params is 100)
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")


class TrackingSettings(ConfigSection):
    """Experiment tracking (MLflow) of a job or of the pipeline."""

    enabled: bool = Field(True, description="record runs in MLflow (--tracking.enabled false: off)")
    uri: str | None = path_field(
        "store", None, description="MLflow tracking URI: a server (http://HOST:5000) or a store URI "
                          "(default: OUTPUT/mlruns, a local file store under the run folder)")
    experiment: str = Field("embedforge", description="MLflow experiment name")
    log_model: bool = Field(True, description="pipeline: log the final exported model as an "
                                              "artifact (a copy of the model folder)")


# ------------------------------------------------------------------------------ pure parts

def default_uri(output: str) -> str | None:
    """``file:`` URI of ``OUTPUT/mlruns`` for a local output; None for a remote one (an
    MLflow file store must be a local path: give ``--tracking.uri``)."""
    if "://" in output and not output.startswith("file://"):
        return None
    path = os.path.abspath(os.path.join(output.removeprefix("file://"), "mlruns"))
    return "file://" + path


def clean_key(key: str) -> str:
    """A param/metric name MLflow accepts (letters, digits, ``_-. /``), at most 250 chars."""
    return _BAD_KEY_CHARS.sub("_", key)[:MAX_KEY]


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` params: dicts are walked, lists and scalars become
    one value (lists as JSON), long values are cut to MLflow's limit (the whole config is
    logged as ``config.json`` too, so nothing is lost)."""
    if isinstance(data, Mapping):
        out: dict[str, str] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not data and prefix:
            out[clean_key(prefix[:-1])] = "{}"
        return out
    if isinstance(data, (list, tuple)):
        text = json.dumps(data, ensure_ascii=False, default=str)
    else:
        text = "" if data is None else str(data)
    return {clean_key(prefix[:-1] or "value"): text[:MAX_PARAM_VALUE]}


def numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a nested summary as metrics (``{"a/b": 1.0}``); booleans,
    text, NaN and infinities are left out."""
    if isinstance(data, Mapping):
        out: dict[str, float] = {}
        for k, v in data.items():
            out.update(numbers(v, f"{prefix}{k}/"))
        return out
    if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
        return {}
    return {clean_key(prefix[:-1] or "value"): float(data)}


def train_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """One training progress row (``stageN/metrics.jsonl``) -> MLflow metrics.

    The loss of a step is the loss of that step's batch, which holds one dataset of one task:
    ``loss`` is the curve over all steps, ``loss_by_task/TASK`` and
    ``loss_by_dataset/TASK/DATASET`` separate it. No name is a ``/``-prefix of another: the
    file store keeps ``a/b`` as a file under a folder ``a``, so ``loss`` and ``loss/x`` could
    not both exist.
    """
    task, dataset = str(row["task"]), str(row["dataset"])
    out = {"loss": float(row["loss"]), clean_key(f"loss_by_task/{task}"): float(row["loss"]),
           clean_key(f"loss_by_dataset/{task}/{dataset}"): float(row["loss"]),
           "lr": float(row["lr"]),
           "examples_per_s": float(row["examples_per_s"]),
           "tokens_per_s": float(row["tokens_per_s"])}
    for name, epochs in (row.get("epochs") or {}).items():
        out[clean_key(f"epochs/{name}")] = float(epochs)
    return out


# ------------------------------------------------------------------------------------ runs

def mlflow_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


def _client(uri: str) -> Any:
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module docstring
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ConfigError("experiment tracking needs MLflow: pip install mlflow-skinny "
                          "(or turn it off with --tracking.enabled false)") from exc
    return MlflowClient(tracking_uri=uri)


def _warn(what: str, exc: BaseException) -> None:
    print(redact(f"[tracking] warning: could not {what}: {type(exc).__name__}: {exc}"),
          file=sys.stderr, flush=True)


class Run:
    """An MLflow run, created on first use (a job that turns out to have nothing to do, such
    as a finished training stage, leaves no empty run behind)."""

    def __init__(self, client: Any, uri: str, experiment_id: str, name: str,
                 tags: Mapping[str, str] | None = None, parent: Run | None = None,
                 run_id: str | None = None):
        self.client, self.uri, self.experiment_id, self.name = client, uri, experiment_id, name
        self.tags = dict(tags or {})
        self.parent = parent
        self.started_ms = int(time.time() * 1000)
        self._id = run_id
        self._params: dict[str, str] = {}

    def __bool__(self) -> bool:
        return True

    @property
    def run_id(self) -> str:
        if self._id is None:
            tags = dict(self.tags)
            if self.parent is not None:
                tags["mlflow.parentRunId"] = self.parent.run_id
            run = self.client.create_run(self.experiment_id, start_time=self.started_ms,
                                         tags=tags, run_name=self.name)
            self._id = run.info.run_id
        return self._id

    @property
    def ref(self) -> dict[str, str]:
        """What another process needs to log to this run (see :func:`attach`)."""
        return {"uri": self.uri, "run_id": self.run_id}

    def child(self, name: str, tags: Mapping[str, str] | None = None) -> Run:
        """A nested run (MLflow shows it under this one)."""
        return Run(self.client, self.uri, self.experiment_id, name, tags, parent=self)

    def log_params(self, params: Any) -> None:
        """A config (nested dict) as params; a key already logged with the same value is not
        sent again (the pipeline and the stage it runs log the same config)."""
        flat = {k: v for k, v in flatten(redact_obj(params)).items() if self._params.get(k) != v}
        if not flat:
            return
        try:
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in flat.items()]
            for i in range(0, len(items), BATCH):
                self.client.log_batch(self.run_id, params=items[i:i + BATCH])
            self._params.update(flat)
        except Exception as exc:
            _warn(f"log params to run {self.name}", exc)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not metrics:
            return
        try:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(clean_key(k), float(v), now, step or 0) for k, v in metrics.items()]
            for i in range(0, len(items), BATCH):
                self.client.log_batch(self.run_id, metrics=items[i:i + BATCH])
        except Exception as exc:
            _warn(f"log metrics to run {self.name}", exc)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        try:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, redact(str(v))[:MAX_PARAM_VALUE])
        except Exception as exc:
            _warn(f"tag run {self.name}", exc)

    def log_text(self, text: str, artifact_file: str) -> None:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, os.path.basename(artifact_file))
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(redact(text))
                self.client.log_artifact(self.run_id, path, os.path.dirname(artifact_file) or None)
        except Exception as exc:
            _warn(f"log {artifact_file} to run {self.name}", exc)

    def log_files(self, paths: Iterable[str], artifact_path: str | None = None) -> None:
        """Files or folders (local or any fsspec URI) as artifacts; missing ones are skipped."""
        from . import io as eio

        for path in paths:
            try:
                if not eio.exists(path):
                    continue
                fs, p = eio.fs_and_path(path)
                if fs.protocol in ("file", ("file", "local")):
                    local = p
                    if os.path.isdir(local):
                        target = f"{artifact_path}/{os.path.basename(local.rstrip('/'))}" \
                            if artifact_path else os.path.basename(local.rstrip("/"))
                        self.client.log_artifacts(self.run_id, local, target)
                    else:
                        self.client.log_artifact(self.run_id, local, artifact_path)
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    local = os.path.join(tmp, os.path.basename(p.rstrip("/")))
                    fs.get(p, local, recursive=fs.isdir(p))
                    if os.path.isdir(local):
                        self.client.log_artifacts(self.run_id, local, os.path.join(
                            artifact_path or "", os.path.basename(local)))
                    else:
                        self.client.log_artifact(self.run_id, local, artifact_path)
            except Exception as exc:
                _warn(f"log {path} to run {self.name}", exc)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED, FAILED or KILLED); a run never created stays uncreated."""
        if self._id is None:
            return
        try:
            self.client.set_terminated(self._id, status=status)
        except Exception as exc:
            _warn(f"end run {self.name}", exc)


class NullRun:
    """Tracking off: every call does nothing, so call sites need no ``if``."""

    ref = None
    name = ""

    def __bool__(self) -> bool:
        return False

    def child(self, name: str, tags: Mapping[str, str] | None = None) -> NullRun:
        return self

    def log_params(self, params: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_files(self, paths: Iterable[str], artifact_path: str | None = None) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


NULL = NullRun()
AnyRun = Run | NullRun
_ACTIVE: ContextVar[AnyRun | None] = ContextVar("embedforge_tracking_run", default=None)


def new_run(settings: TrackingSettings, output: str, name: str,
            tags: Mapping[str, str] | None = None) -> AnyRun:
    """A new top-level run in ``settings.uri`` (default: ``OUTPUT/mlruns``), or :data:`NULL`.

    The store and experiment are reached now, so a wrong ``--tracking.uri`` fails before any
    work starts (as a ConfigError); the run itself is created on first use. Without MLflow
    installed, a run asked for by ``--tracking.uri`` is an error and the default one a warning
    (a broken install must not stop a job that never asked for a tracker).
    """
    if not settings.enabled:
        return NULL
    if not settings.uri and not mlflow_installed():
        print("[tracking] warning: MLflow is not installed (pip install mlflow-skinny): not "
              "tracking this run (--tracking.enabled false silences this)", file=sys.stderr,
              flush=True)
        return NULL
    uri = settings.uri or default_uri(output)
    if uri is None:
        print(f"[tracking] warning: {output} is not a local folder, so there is no default "
              "MLflow store under it: give --tracking.uri (or --tracking.enabled false); "
              "not tracking this run", file=sys.stderr, flush=True)
        return NULL
    client = _client(uri)
    try:
        exp = client.get_experiment_by_name(settings.experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(
            settings.experiment)
    except Exception as exc:
        # the URI and the client's error both may quote user:password@ (embedforge.redact)
        raise ConfigError(redact(f"cannot reach the MLflow tracking store {uri}: "
                                 f"{type(exc).__name__}: {exc}")) from None
    return Run(client, uri, exp_id, name, {"embedforge.output": output, **(tags or {})})


@contextlib.contextmanager
def job_run(settings: TrackingSettings, output: str, name: str,
            tags: Mapping[str, str] | None = None) -> Iterator[AnyRun]:
    """The run a job logs to: the active run when the pipeline runs this job as a stage
    (the pipeline ends it), else a new run that ends with the block (FAILED on an error,
    KILLED on Ctrl-C)."""
    active = _ACTIVE.get()
    if active is not None:
        yield active if settings.enabled else NULL
        return
    run = new_run(settings, output, name, tags)
    try:
        yield run
    except KeyboardInterrupt:
        run.finish("KILLED")
        raise
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED")


@contextlib.contextmanager
def activate(run: AnyRun) -> Iterator[AnyRun]:
    """Make ``run`` the one :func:`job_run` hands out inside the block (the pipeline's stage)."""
    token = _ACTIVE.set(run)
    try:
        yield run
    finally:
        _ACTIVE.reset(token)


def attach(ref: Mapping[str, str] | None) -> AnyRun:
    """The run a driver opened (its :attr:`Run.ref`), from another process: a Ray worker."""
    if not ref:
        return NULL
    return Run(_client(ref["uri"]), ref["uri"], "", "", run_id=ref["run_id"])


def end_stage(run: AnyRun, status: str, seconds: float | None,
              summary: Mapping[str, Any] | None = None, error: str | None = None) -> None:
    """Close a pipeline stage's run: status tag, seconds and the numbers of the stage's
    manifest summary under ``summary/`` (apart from what the stage logged itself: training's
    ``examples_per_s`` per step is not its summary's final value)."""
    run.set_tags({"embedforge.status": status, **({"embedforge.error": error} if error else {})})
    run.log_metrics({**numbers(summary or {}, "summary/"), **({"seconds": seconds} if seconds else {})})
    run.finish({"failed": "FAILED", "interrupted": "KILLED"}.get(status, "FINISHED"))
