"""A real OpenAI-compatible chat-completions server with latency and fault injection.

Why a real server and not a mocked client: the synthesis client's hard parts (connection
pooling, timeouts, retries honouring ``Retry-After``, client-side rate limiting, concurrency
caps) only show up over real sockets. This server speaks enough of the OpenAI HTTP API for
the ``openai`` SDK and plain aiohttp/httpx clients, and injects the failures a hosted API
produces (429/503/500, hangs, dropped connections, broken bodies, off-schema answers), either
at random from a seeded :class:`FaultPlan` or deterministically through a poison marker.

It also enforces an optional requests-per-minute limit server-side and records what it saw
(arrival times, peak concurrency, outcomes, tokens), so tests and benchmarks can assert on
the client's behaviour from the server's point of view.

Run it in-process (a background thread with its own event loop)::

    with FakeLLMServer(latency=0.05, faults=FaultPlan(rate_limit=0.1, seed=1)) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")
        ...
        assert srv.stats()["max_in_flight"] <= 8

or as a separate process, so a benchmark's client and server do not share a GIL::

    python -m embedforge.testing.fake_llm --port 0 --latency 0.2 --rate-limit 0.1
    # prints "READY http://127.0.0.1:PORT/v1" once listening; GET /stats, POST /stats/reset
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import web

__all__ = ["FAULT_KINDS", "OUTCOMES", "FakeLLMServer", "FaultPlan", "max_in_window"]

#: Random fault kinds, in the order the cumulative probability walk visits them.
FAULT_KINDS: tuple[str, ...] = (
    "rate_limit",
    "unavailable",
    "server_error",
    "timeout",
    "drop",
    "malformed",
    "bad_content",
    "wrong_schema",
)

#: Every outcome counted in ``stats()["outcomes"]``.
OUTCOMES: tuple[str, ...] = (
    "ok",
    *FAULT_KINDS,
    "poison",
    "echo_headers",
    "rate_limited_by_rpm",
    "bad_request",
    "responder_error",
)

FAKE_MODEL = "fake-llm"
_JSON = "application/json"
# Truncated mid-object: what a proxy cutting a response short looks like to the client.
_MALFORMED_BODY = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"ind'
_BAD_CONTENT = "Sure! Here is the JSON you asked for: {query: 'unterminated"
_WRONG_SCHEMA = '{"unexpected": true}'


@dataclass
class FaultPlan:
    """What goes wrong, and how often: per-request probabilities (0..1) of each fault.

    One uniform draw from ``random.Random(seed)`` per admitted request picks at most one
    fault, so the probabilities must sum to at most 1 and a given seed replays the same
    sequence of faults for the same sequence of requests (deterministic tests).

    ``poison_marker``: a request whose message text contains it *always* gets a 500, which
    lets a test exhaust a client's retries for one known item without relying on chance.
    ``echo_headers``: every request gets a 401 whose body quotes the request's headers,
    ``Authorization`` included (what the secret-redaction tests send keys into).
    """

    rate_limit: float = 0.0
    unavailable: float = 0.0
    server_error: float = 0.0
    timeout: float = 0.0
    drop: float = 0.0
    malformed: float = 0.0
    bad_content: float = 0.0
    wrong_schema: float = 0.0
    retry_after: float = 0.2
    hang_seconds: float = 30.0
    seed: int = 0
    poison_marker: str | None = None
    #: every chat request gets 401 with its own request headers in the body, as some
    #: providers and proxies do: a client that stores error bodies stores its key
    echo_headers: bool = False

    def __post_init__(self) -> None:
        total = 0.0
        for kind in FAULT_KINDS:
            p = float(getattr(self, kind))
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"FaultPlan.{kind} must be in [0, 1], got {p}")
            total += p
        if total > 1.0 + 1e-9:
            raise ValueError(f"FaultPlan probabilities sum to {total:.3f} > 1")
        if self.retry_after < 0 or self.hang_seconds < 0:
            raise ValueError("FaultPlan.retry_after and hang_seconds must be >= 0")

    @property
    def any_random(self) -> bool:
        """Whether a random draw is needed at all (skipping it keeps the no-fault path cheap)."""
        return any(getattr(self, kind) > 0 for kind in FAULT_KINDS)

    def pick(self, rng: random.Random) -> str | None:
        """Choose this request's fault (or ``None``) with one draw from ``rng``."""
        if not self.any_random:
            return None
        r = rng.random()
        acc = 0.0
        for kind in FAULT_KINDS:
            acc += getattr(self, kind)
            if r < acc:
                return kind
        return None


def max_in_window(arrivals: Sequence[float], window_s: float) -> int:
    """Largest number of arrivals inside any half-open window ``[t, t + window_s)``.

    A module-level function so a benchmark can apply it to ``GET /stats`` output of a server
    running in another process (monotonic clocks are system-wide on Linux).
    """
    ts = sorted(arrivals)
    best = 0
    lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _text_of(content: Any) -> str:
    """Message ``content`` as text: a string, or the text parts of a multi-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return "" if content is None else str(content)


def _messages_text(messages: list[Any]) -> list[str]:
    return [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]


def _count_tokens(texts: Sequence[str]) -> int:
    """Whitespace words, at least 1: cheap, deterministic and good enough for accounting."""
    return max(1, sum(len(t.split()) for t in texts))


def default_responder(request_json: dict[str, Any]) -> str:
    """Echo the last user message as JSON text, so a client expecting JSON content succeeds."""
    last = ""
    for m in request_json.get("messages", []):
        if isinstance(m, dict) and m.get("role") == "user":
            last = _text_of(m.get("content"))
    return json.dumps({"echo": last})


def _error_body(message: str, type_: str, code: str | None) -> bytes:
    """OpenAI's error envelope, so SDKs surface ``message``/``code`` as they do in production."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()


def _retry_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` in (fractional) seconds plus ``retry-after-ms``, as OpenAI sends both."""
    seconds = max(0.0, seconds)
    return {"Retry-After": f"{seconds:.3f}".rstrip("0").rstrip(".") or "0",
            "retry-after-ms": str(round(seconds * 1000))}


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (roughly 2x aiohttp throughput), else the stdlib loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class FakeLLMServer:
    """OpenAI-compatible ``/v1/chat/completions`` server in a background thread.

    Args:
        latency: seconds every answered request waits before its response (rate-limit
            rejections are immediate, as a gateway rejects before the model runs).
        faults: random/deterministic fault injection; ``None`` means no faults.
        responder: ``responder(request_json) -> content`` for the assistant message; for
            ``n > 1`` it is called once per choice on a copy with ``"_choice_index"`` added.
        rpm_limit: server-enforced requests per ``rpm_window`` seconds; a request arriving
            when that many were already admitted in the window gets 429 with ``Retry-After``
            = time until the oldest leaves the window. Rejected requests do not use quota.
        host, port: where to listen; port 0 picks a free port (see :attr:`port`).
        rpm_window: the window length for ``rpm_limit`` (60 s like a real API; shorter
            windows keep benchmarks short).
    """

    def __init__(
        self,
        latency: float = 0.0,
        faults: FaultPlan | None = None,
        responder: Callable[[dict[str, Any]], str] | None = None,
        rpm_limit: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rpm_window: float = 60.0,
    ) -> None:
        if latency < 0:
            raise ValueError("latency must be >= 0")
        if rpm_limit is not None and rpm_limit < 1:
            raise ValueError("rpm_limit must be >= 1 or None")
        self.latency = float(latency)
        self.faults = faults or FaultPlan()
        self.responder = responder or default_responder
        self.rpm_limit = rpm_limit
        self.rpm_window = float(rpm_window)
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._rng = random.Random(self.faults.seed)
        self._admitted: deque[float] = deque()  # rpm window, touched only on the loop thread

        self._lock = threading.Lock()
        self._reset_counters()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> FakeLLMServer:
        """Start listening in a background thread; returns once the socket accepts requests."""
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._thread_main, name="fake-llm", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("FakeLLMServer did not start in time")
        if self._startup_error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise RuntimeError("FakeLLMServer failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, cancel hanging handlers and join the thread (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (known once started)."""
        if self._port is None:
            raise RuntimeError("FakeLLMServer not started")
        return self._port

    @property
    def url(self) -> str:
        """Root URL (``/stats`` lives here)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What to pass as ``openai.OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    def _thread_main(self) -> None:
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                self._runner = None
                loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/stats/reset", self._stats_reset)
        # access_log=None: no per-request logging (throughput); handler_cancellation: a hung
        # "timeout" handler ends when its client gives up, so in-flight counts stay honest;
        # short shutdown_timeout: stop() must not wait for 30 s hangs.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=0.5)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, self._requested_port, backlog=2048,
                           reuse_address=True)
        await site.start()
        self._port = int(runner.addresses[0][1])

    # ------------------------------------------------------------------ accounting

    def _reset_counters(self) -> None:
        self._requests = 0
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._in_flight = 0
        self._max_in_flight = 0
        self._arrivals: list[float] = []
        self._prompt_tokens = 0
        self._completion_tokens = 0

    def reset_stats(self) -> None:
        """Zero all counters (the fault RNG and the rpm window keep their state)."""
        with self._lock:
            self._reset_counters()

    def stats(self) -> dict[str, Any]:
        """A consistent snapshot of what the server saw, safe to call from any thread.

        Keys: ``requests``, ``outcomes`` (count per outcome: ``ok``, each fault kind,
        ``poison``, ``rate_limited_by_rpm``, ``bad_request``, ``responder_error``),
        ``in_flight``, ``max_in_flight``, ``arrivals`` (monotonic seconds),
        ``prompt_tokens``, ``completion_tokens``.
        """
        with self._lock:
            return {
                "requests": self._requests,
                "outcomes": dict(self._outcomes),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "arrivals": list(self._arrivals),
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
            }

    def max_in_window(self, window_s: float) -> int:
        """Most requests that arrived inside any ``window_s``-long window (rate-limit checks)."""
        with self._lock:
            arrivals = list(self._arrivals)
        return max_in_window(arrivals, window_s)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._outcomes[outcome] += 1

    # ------------------------------------------------------------------ handlers

    async def _models(self, request: web.Request) -> web.Response:
        body = {"object": "list", "data": [
            {"id": FAKE_MODEL, "object": "model", "created": 0, "owned_by": "embedforge"}
        ]}
        return web.json_response(body)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _stats_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"reset": True})

    def _rpm_reject(self, now: float) -> float | None:
        """Admit the request into the rpm window, or return seconds until a slot frees."""
        if self.rpm_limit is None:
            return None
        window = self._admitted
        while window and now - window[0] >= self.rpm_window:
            window.popleft()
        if len(window) >= self.rpm_limit:
            return window[0] + self.rpm_window - now
        window.append(now)
        return None

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        with self._lock:
            self._requests += 1
            self._arrivals.append(now)
            self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight
        try:
            return await self._handle_chat(request, now)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _handle_chat(self, request: web.Request, now: float) -> web.StreamResponse:
        raw = await request.read()
        wait = self._rpm_reject(now)
        if wait is not None:
            self._count("rate_limited_by_rpm")
            return web.Response(
                status=429, content_type=_JSON, headers=_retry_headers(wait),
                body=_error_body(f"Rate limit reached: {self.rpm_limit} requests per "
                                 f"{self.rpm_window:g}s", "requests", "rate_limit_exceeded"))
        try:
            req = json.loads(raw)
            messages = req["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
            n = int(req.get("n") or 1)
            if n < 1:
                raise ValueError("n must be >= 1")
        except (ValueError, KeyError, TypeError) as exc:
            self._count("bad_request")
            return web.Response(status=400, content_type=_JSON, body=_error_body(
                f"Invalid request: {exc}", "invalid_request_error", None))

        texts = _messages_text(messages)
        plan = self.faults
        if plan.echo_headers:
            self._count("echo_headers")
            return web.Response(status=401, content_type=_JSON, body=_error_body(
                f"Incorrect API key provided. Request headers: {dict(request.headers)}",
                "invalid_request_error", "invalid_api_key"))
        if plan.poison_marker is not None and any(plan.poison_marker in t for t in texts):
            self._count("poison")
            await self._sleep(self.latency)
            return web.Response(status=500, content_type=_JSON, body=_error_body(
                "The server had an error processing your request (poisoned input).",
                "server_error", None))

        fault = plan.pick(self._rng)
        if fault is not None:
            self._count(fault)
        if fault == "rate_limit":
            return web.Response(status=429, content_type=_JSON,
                                headers=_retry_headers(plan.retry_after),
                                body=_error_body("Rate limit reached (injected).", "requests",
                                                 "rate_limit_exceeded"))
        if fault == "timeout":
            # Answer eventually (if the client is still there) so a long client timeout
            # sees a slow success rather than a hang forever.
            await self._sleep(max(plan.hang_seconds, self.latency))
        else:
            await self._sleep(self.latency)
        if fault == "drop":
            if request.transport is not None:
                request.transport.close()
            # Nothing reaches the client: aiohttp's write fails on the closed transport.
            return web.Response(status=500)
        if fault == "unavailable":
            return web.Response(status=503, content_type=_JSON,
                                headers=_retry_headers(plan.retry_after),
                                body=_error_body("The engine is currently overloaded.",
                                                 "server_error", "service_unavailable"))
        if fault == "server_error":
            return web.Response(status=500, content_type=_JSON, body=_error_body(
                "The server had an error while processing your request.", "server_error",
                None))
        if fault == "malformed":
            return web.Response(status=200, content_type=_JSON, body=_MALFORMED_BODY)

        if fault == "bad_content":
            contents = [_BAD_CONTENT] * n
        elif fault == "wrong_schema":
            contents = [_WRONG_SCHEMA] * n
        else:
            try:
                contents = self._respond(req, n)
            except Exception as exc:
                self._count("responder_error")
                return web.Response(status=500, content_type=_JSON, body=_error_body(
                    f"responder failed: {type(exc).__name__}: {exc}", "server_error", None))
            if fault is None:
                self._count("ok")
        return self._completion(req, texts, contents)

    @staticmethod
    async def _sleep(seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _respond(self, req: dict[str, Any], n: int) -> list[str]:
        if n == 1:
            return [str(self.responder(req))]
        return [str(self.responder({**req, "_choice_index": i})) for i in range(n)]

    def _completion(self, req: dict[str, Any], texts: list[str],
                    contents: list[str]) -> web.Response:
        prompt_tokens = _count_tokens(texts)
        completion_tokens = _count_tokens(contents)
        with self._lock:
            self._prompt_tokens += prompt_tokens
            self._completion_tokens += completion_tokens
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(req.get("model") or FAKE_MODEL),
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": c},
                 "logprobs": None, "finish_reason": "stop"}
                for i, c in enumerate(contents)
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return web.Response(status=200, content_type=_JSON, body=json.dumps(body).encode())


# ---------------------------------------------------------------------- separate process


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m embedforge.testing.fake_llm",
        description="OpenAI-compatible fake LLM server with latency and fault injection. "
                    "Prints 'READY <base_url>' once listening; stops on SIGTERM/SIGINT.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    p.add_argument("--rpm-limit", type=int, default=None, help="server-enforced rpm")
    p.add_argument("--rpm-window", type=float, default=60.0)
    p.add_argument("--responder", choices=["echo", "synth"], default="echo",
                   help="echo the prompt, or answer synthesis prompts (testing.responders)")
    p.add_argument("--crash-after", type=int, default=None,
                   help="die with SIGSEGV on the Nth chat completion (a native crash mid-run)")
    for f in fields(FaultPlan):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "poison_marker":
            p.add_argument(flag, default=None)
        elif f.name == "seed":
            p.add_argument(flag, type=int, default=0)
        else:
            p.add_argument(flag, type=float, default=f.default,
                           help="probability 0..1" if f.name in FAULT_KINDS else None)
    return p.parse_args(argv)


def _crashing(responder: Callable[[dict[str, Any]], str], nth: int) -> Callable[[dict[str, Any]], str]:
    """The process dies the way llama.cpp did on some CPUs: a segmentation fault in the
    thread answering the ``nth`` request, before any answer leaves (``os.kill`` would let the
    answer race the signal)."""
    import ctypes

    seen = [0]

    def answer(request: dict[str, Any]) -> str:
        seen[0] += 1
        if seen[0] >= nth:
            ctypes.string_at(0)  # reads address 0: SIGSEGV, now, in this thread
        return responder(request)

    return answer


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the READY line tells a parent process where to connect."""
    args = _parse_args(argv)
    plan = FaultPlan(**{f.name: getattr(args, f.name) for f in fields(FaultPlan)})
    responder = default_responder
    if args.responder == "synth":
        from .responders import synth_responder as responder
    if args.crash_after is not None:
        responder = _crashing(responder, args.crash_after)
    server = FakeLLMServer(latency=args.latency, faults=plan, rpm_limit=args.rpm_limit,
                           host=args.host, port=args.port, rpm_window=args.rpm_window,
                           responder=responder)
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    print(f"READY {server.base_url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        with contextlib.suppress(Exception):
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
