"""The endpoint without Ray: the same engine, fair batcher and routes as a Serve replica, in one
uvicorn server on a thread of this process.

Tests and benchmarks use it to reach the real HTTP surface in a second instead of starting a
Ray cluster (Serve adds its proxy and actors around exactly these parts). The listening socket
is bound before the server starts and handed to it, so no other process can take the port
between picking and binding it.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from fastapi import FastAPI

from .batcher import FairBatcher
from .config import ServeConfig
from .engine import EmbeddingEngine
from .http import build_api


def local_api(cfg: ServeConfig, keys: list[str] | None = None,
              engine: EmbeddingEngine | None = None) -> tuple[FastAPI, FairBatcher]:
    """The app of one replica for ``cfg`` (batch sizes as the replica derives them)."""
    engine = engine or EmbeddingEngine(cfg.encoder, cfg.batch)
    budget = max(cfg.batch.max_batch_tokens, engine.max_length)
    chunk = max(engine.max_length, cfg.batch.max_forward_tokens // 2)
    batcher = FairBatcher(engine.forward, budget, chunk, wait_s=cfg.batch.wait_ms / 1000)
    return build_api(engine, batcher.embed, cfg, keys=keys), batcher


class LocalServer:
    """``with LocalServer(app) as url:`` serves ``app`` on 127.0.0.1 until the block ends."""

    def __init__(self, app: FastAPI, startup_timeout_s: float = 30.0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name="ef-local-server")
        self.startup_timeout_s = startup_timeout_s

    def __enter__(self) -> str:
        from ..cluster import wait_http

        self.thread.start()
        wait_http(self.url + "/health", self.startup_timeout_s, what="local endpoint")
        return self.url

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
