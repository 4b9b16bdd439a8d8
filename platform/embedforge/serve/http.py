"""The HTTP surface: OpenAI ``/v1/embeddings``, TEI ``/embed``, ``/v1/models``, ``/info``,
``/docs``, ``/openapi.json``, ``/health``; API keys, limits, error shapes and metrics.

Every route but ``/health`` (the liveness probe) needs a key. A request then passes, in order:
the key (401), the key's rate limit (429 + ``Retry-After``), the content type (415), the body
limit (413), the per-request token budget (413), and the request timeout (504). Anything the
client sent wrong is a 4xx; 500 is kept for the endpoint's own faults (and logged).

The forward pass runs in the batcher's worker thread (``batcher``); what else a big request
costs, parsing a large body, tokenising thousands of texts and serialising the vectors, runs
in a small thread pool, so a 2,048 x 8,192-token request does not stall the small requests
arriving meanwhile. Small requests skip the pool: a thread hop would cost them more than their
work.

``build_api`` takes the engine (tokenise, prompts) and an async ``embed(items)`` (the Serve
replica's dynamic batcher, or a thread for a plain server), so the same routes run inside Ray
Serve and in tests without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from .. import metrics
from ..config import ConfigError
from .config import ServeConfig
from .engine import EmbeddingEngine, Item
from .limits import KeyRateLimiter
from .protocol import (
    InputError,
    OpenAIEmbeddingRequest,
    TEIEmbedRequest,
    finalize,
    openai_error,
    openai_response,
    parse_request,
    tei_error,
)

log = logging.getLogger(__name__)
Embed = Callable[[list[Item]], Awaitable[np.ndarray]]
JSON = "application/json"


def load_api_keys(env_var: str, key_file: str | None = None) -> list[str]:
    """Keys from ``env_var`` (comma-separated) and ``key_file`` (one per line)."""
    keys = [k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip()]
    if key_file:
        try:
            with open(key_file) as fh:
                keys += [line.strip() for line in fh if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise ConfigError(f"--api-key-file {key_file}: cannot read it ({exc.strerror})") from None
    return keys


def required_keys(cfg: ServeConfig) -> list[str]:
    """The endpoint's API keys; none is a refusal to start, unless the operator said
    ``allow_unauthenticated`` (then a loud warning): an endpoint on a shared cluster must
    not serve everyone because a Secret was missing."""
    keys = load_api_keys(cfg.api_key_env, cfg.api_key_file)
    if keys:
        return keys
    if not cfg.allow_unauthenticated:
        where = f"${cfg.api_key_env}" + (f" or {cfg.api_key_file}" if cfg.api_key_file else "")
        raise ConfigError(
            f"no API keys: {where} holds none, and the endpoint refuses to serve without them. "
            f"Set {cfg.api_key_env}=KEY1,KEY2 (or --api-key-file FILE), or pass "
            "--allow-unauthenticated to let anyone who reaches the port use the model")
    log.warning("serving WITHOUT API keys (allow_unauthenticated): anyone who can reach "
                "%s:%s can use the model", cfg.host, cfg.port)
    return []


def match_key(header: str | None, keys: list[str]) -> str | None:
    """The key of ``Authorization: Bearer <key>``, or None; constant time over all keys."""
    scheme, _, token = (header or "").partition(" ")
    found = None
    for key in keys:  # no early exit: time does not depend on which key matched
        if hmac.compare_digest(token.strip().encode(), key.encode()):
            found = key
    return found if scheme.lower() == "bearer" else None


def check_key(header: str | None, keys: list[str]) -> bool:
    return match_key(header, keys) is not None


def key_id(key: str) -> str:
    """What metrics and logs call a key: a sha256 prefix, never the key (the operator gets it
    with ``printf %s KEY | sha256sum | cut -c1-8``)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def check_content_type(header: str | None) -> None:
    """415 unless the body is declared JSON in UTF-8 (JSON's only encoding, RFC 8259). No
    header at all passes: simple clients send none, and the body is still parsed as JSON."""
    if not header:
        return
    media, *params = (part.strip() for part in header.split(";"))
    media = media.lower()
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        raise InputError(415, f"Content-Type {media!r} is not supported: send {JSON}",
                         code="unsupported_media_type")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
                "utf-8", "utf8"):
            raise InputError(415, f"charset {value.strip()!r} is not supported: JSON bodies are "
                                  "UTF-8", code="unsupported_media_type")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise InputError(413, f"request body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def body_schema(model: type) -> dict[str, Any]:
    """The route's JSON body in ``/openapi.json`` (the routes read the body themselves, so
    FastAPI cannot see it): what ``/docs`` shows and what the fuzz test generates requests
    from."""
    return {"requestBody": {"required": True, "content": {JSON: {
        "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


def default_model_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or path


# Bodies (bytes) and responses (floats) above these go to the thread pool.
OFFLOAD_BODY_BYTES = 64 * 1024
OFFLOAD_FLOATS = 64 * 1024
ANONYMOUS = "anonymous"


class _Recorder:
    """Ray metrics of one request; silent outside a Ray process (plain-server tests)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def request(self, route: str, code: int, seconds: float, texts: int, tokens: int,
                key: str) -> None:
        if not self.enabled:
            return
        tags = {"route": route, "code": str(code)}
        metrics.inc("embedforge_serve_requests_total", 1, tags)
        if code >= 400:
            metrics.inc("embedforge_serve_errors_total", 1, tags)
        metrics.observe("embedforge_serve_latency_seconds", seconds, {"route": route})
        metrics.inc("embedforge_serve_texts_total", texts, {"route": route})
        metrics.inc("embedforge_serve_tokens_total", tokens, {"route": route})
        metrics.inc("embedforge_serve_key_requests_total", 1, {"key": key, "code": str(code)})
        metrics.inc("embedforge_serve_key_tokens_total", tokens, {"key": key})


def build_api(engine: EmbeddingEngine, embed: Embed, cfg: ServeConfig,
              record_metrics: bool = False, keys: list[str] | None = None) -> FastAPI:
    """The routes; raises ConfigError when there are no API keys and unauthenticated serving
    was not allowed (the replica then fails to start, and the deploy names why)."""
    keys = required_keys(cfg) if keys is None else keys
    # /docs and /openapi.json are routes of ours below, behind the key like the rest
    app = FastAPI(title="embedforge embeddings", docs_url=None, redoc_url=None, openapi_url=None)
    model_name = cfg.model_name or default_model_name(cfg.encoder.model)
    recorder = _Recorder(record_metrics)
    rl = cfg.rate_limit
    limiter = KeyRateLimiter(rl.requests_per_minute, rl.burst) if rl.requests_per_minute else None
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ef-serve-io")
    started = int(time.time())

    async def offload(big: bool, fn: Callable[..., Any], *args: Any) -> Any:
        if not big:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def handle(route: str, request: Request, run: Callable[[bytes], Awaitable[tuple[bytes, int, int]]],
                     error: Callable[[InputError], bytes], media_type: str = JSON) -> Response:
        t0 = time.perf_counter()
        texts = tokens = 0
        who = ANONYMOUS
        retry_after = 0.0
        try:
            if keys:
                key = match_key(request.headers.get("authorization"), keys)
                if key is None:
                    raise InputError(401, "missing or invalid API key (Authorization: Bearer <key>)",
                                     code="invalid_api_key")
                who = bucket = key_id(key)
            else:
                bucket = f"{ANONYMOUS}:{request.client.host if request.client else '-'}"
            if limiter is not None:
                retry_after = limiter.acquire(bucket)
                if retry_after > 0:
                    raise InputError(429, f"rate limit of {rl.requests_per_minute:g} requests per "
                                          f"minute for this key exceeded; retry in "
                                          f"{retry_after:.1f} s", code="rate_limit_exceeded")

            if request.method == "POST":
                check_content_type(request.headers.get("content-type"))

            async def work() -> tuple[bytes, int, int]:
                return await run(await read_body(request, cfg.max_body_bytes))

            # the timeout covers reading the body too: a client trickling bytes holds a slot
            content, texts, tokens = await asyncio.wait_for(work(), cfg.request_timeout_s)
            code = 200
        except InputError as exc:
            code, content = exc.status, error(exc)
            media_type = JSON
        except ClientDisconnect:   # gone before its body arrived: nothing to answer, no fault
            code, content = 400, error(InputError(400, "client disconnected before sending "
                                                       "the whole body"))
            media_type = JSON
        except TimeoutError:
            code, content = 504, error(InputError(
                504, f"request not answered within {cfg.request_timeout_s:g} s "
                     "(request_timeout_s); send fewer texts per request", code="timeout"))
            media_type = JSON
        except Exception as exc:  # the replica stays up; the client gets a message
            log.exception("embedding request failed")
            code, content = 500, error(InputError(500, f"internal error: {type(exc).__name__}",
                                                  code="server_error"))
            media_type = JSON
        recorder.request(route, code, time.perf_counter() - t0, texts, tokens, who)
        headers = None
        if code == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        elif code == 429:
            headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
        return Response(content, status_code=code, media_type=media_type, headers=headers)

    def prepare_openai(body: bytes) -> tuple[OpenAIEmbeddingRequest, list[Item]]:
        req = parse_request(OpenAIEmbeddingRequest, body, cfg.max_inputs)
        if req.model is not None and req.model != model_name:
            raise InputError(404, f"model: {req.model!r} is not served here (this endpoint serves "
                                  f"{model_name!r})", param="model", code="model_not_found")
        items = engine.tokenize(req.input, engine.prompt(req.prompt_name), req.truncate, "input",
                                budget=cfg.max_request_tokens)
        return req, items

    def prepare_tei(body: bytes) -> tuple[TEIEmbedRequest, list[Item]]:
        req = parse_request(TEIEmbedRequest, body, cfg.max_inputs)
        items = engine.tokenize(req.inputs, engine.prompt(req.prompt_name), req.truncate, "inputs",
                                left=req.truncation_direction == "Left",
                                budget=cfg.max_request_tokens)
        return req, items

    def openai_bytes(vectors: np.ndarray, req: OpenAIEmbeddingRequest, tokens: int) -> bytes:
        vectors = finalize(vectors, req.dimensions, engine.normalize or req.dimensions is not None)
        return openai_response(vectors, model_name, tokens, req.encoding_format)

    def tei_bytes(vectors: np.ndarray, req: TEIEmbedRequest) -> bytes:
        return json.dumps(finalize(vectors, req.dimensions, req.normalize).tolist()).encode()

    async def run_openai(body: bytes) -> tuple[bytes, int, int]:
        req, items = await offload(len(body) > OFFLOAD_BODY_BYTES, prepare_openai, body)
        vectors = await embed(items)
        tokens = sum(it.tokens for it in items)
        content = await offload(vectors.size > OFFLOAD_FLOATS, openai_bytes, vectors, req, tokens)
        return content, len(items), tokens

    async def run_tei(body: bytes) -> tuple[bytes, int, int]:
        req, items = await offload(len(body) > OFFLOAD_BODY_BYTES, prepare_tei, body)
        vectors = await embed(items)
        content = await offload(vectors.size > OFFLOAD_FLOATS, tei_bytes, vectors, req)
        return content, len(items), sum(it.tokens for it in items)

    @app.post("/v1/embeddings", openapi_extra=body_schema(OpenAIEmbeddingRequest))
    async def embeddings(request: Request) -> Response:
        return await handle("openai", request, run_openai, openai_error)

    @app.post("/embed", openapi_extra=body_schema(TEIEmbedRequest))
    async def embed_tei(request: Request) -> Response:
        return await handle("tei", request, run_tei, tei_error)

    async def models(_: bytes) -> tuple[bytes, int, int]:
        return json.dumps({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": started, "owned_by": "embedforge",
             "dimensions": engine.dim, "matryoshka_dims": engine.matryoshka_dims}]
        }).encode(), 0, 0

    async def info(_: bytes) -> tuple[bytes, int, int]:
        # no model path: where the weights live on the cluster is not the clients' business
        return json.dumps({"model_id": model_name, "max_input_length": engine.max_length,
                           "max_client_batch_size": cfg.max_inputs,
                           "max_request_tokens": cfg.max_request_tokens,
                           **engine.info()}).encode(), 0, 0

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        return await handle("models", request, models, openai_error)

    @app.get("/info")
    async def model_info(request: Request) -> Response:
        return await handle("info", request, info, tei_error)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        async def spec(_: bytes) -> tuple[bytes, int, int]:
            return json.dumps(app.openapi()).encode(), 0, 0

        return await handle("docs", request, spec, openai_error)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        async def page(_: bytes) -> tuple[bytes, int, int]:
            root = request.scope.get("root_path", "").rstrip("/")
            html = get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=app.title)
            return bytes(html.body), 0, 0

        return await handle("docs", request, page, openai_error, media_type="text/html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    return app
