"""Deploy the endpoint on a Ray cluster (what ``jobs/serve.py`` and the pipeline call)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from ..cluster import wait_http
from ..config import ConfigError
from .config import ServeConfig
from .http import required_keys

# a hub id ("org/name", or a bare legacy name): anything else is a local path
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class DeployFailed(ConfigError):
    """Serve gave up on the application (its replicas could not start): the reason, one line."""


def preflight(cfg: ServeConfig) -> None:
    """Checks that hold when the replicas run on this machine (a private local cluster): the
    model folder exists and there are API keys (or unauthenticated serving was allowed).
    Minutes earlier and clearer than a replica failing to start."""
    model = cfg.encoder.model
    if not os.path.exists(model) and not HUB_ID.fullmatch(model):
        raise ConfigError(f"--encoder.model {model}: no such model folder")
    required_keys(cfg)


def failure_reason(message: str) -> str:
    """The last line of a replica's traceback (``...ConfigError: no API keys ...``), without
    the exception's module path."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "no message"
    return re.sub(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Failed)): ", r"\1: ", last)


def _failed(name: str) -> str | None:
    from ray import serve

    app = serve.status().applications.get(name)
    if app is None or str(app.status) not in ("DEPLOY_FAILED", "ApplicationStatus.DEPLOY_FAILED"):
        return None
    messages = [d.message for d in app.deployments.values() if d.message] or [app.message]
    return failure_reason(messages[0])


def deploy(cfg: ServeConfig, timeout_s: float = 600.0) -> str:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` (if not running) and deploy the
    application; returns the base URL once replicas answer. Needs a connected Ray driver.
    Raises :class:`DeployFailed` as soon as Serve gives up on the replicas."""
    from ray import serve

    from .app import build_app

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    args: dict[str, Any] = cfg.model_dump(mode="json")
    try:  # waits until the application runs, raising RuntimeError when Serve gives up
        serve.run(build_app(args), name=cfg.name, route_prefix=cfg.route_prefix, blocking=False,
                  _local_testing_mode=False)
    except RuntimeError:
        reason = _failed(cfg.name)
        if reason is None:
            raise
        raise DeployFailed(f"Serve application {cfg.name!r} failed to start: {reason}") from None
    url = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{cfg.port}" \
          f"{cfg.route_prefix.rstrip('/')}"
    deadline = time.monotonic() + timeout_s
    while True:
        reason = _failed(cfg.name)
        if reason is not None:
            raise DeployFailed(f"Serve application {cfg.name!r} failed to start: {reason}")
        left = deadline - time.monotonic()
        try:
            wait_http(f"{url}/health", max(0.1, min(3.0, left)), what=f"Serve application {cfg.name!r}")
            return url
        except TimeoutError:
            if left <= 3.0:
                raise
