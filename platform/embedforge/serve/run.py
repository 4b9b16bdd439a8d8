"""Deploy the endpoint on a Ray cluster (what ``jobs/serve.py`` and the pipeline call)."""

from __future__ import annotations

from typing import Any

from ..cluster import wait_http
from .config import ServeConfig


def deploy(cfg: ServeConfig, timeout_s: float = 600.0) -> str:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` (if not running) and deploy the
    application; returns the base URL once replicas answer. Needs a connected Ray driver."""
    from ray import serve

    from .app import build_app

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    args: dict[str, Any] = cfg.model_dump(mode="json")
    serve.run(build_app(args), name=cfg.name, route_prefix=cfg.route_prefix, blocking=False,
              _local_testing_mode=False)
    url = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{cfg.port}" \
          f"{cfg.route_prefix.rstrip('/')}"
    wait_http(f"{url}/health", timeout_s, what=f"Serve application {cfg.name!r}")
    return url
