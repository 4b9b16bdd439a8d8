"""The HTTP surface: OpenAI ``/v1/embeddings``, TEI ``/embed``, ``/v1/models``, ``/info``,
``/health``; API keys, body limit, error shapes and per-request metrics.

``build_api`` takes the engine (tokenise, prompts) and an async ``embed(items)`` (the Serve
replica's dynamic batcher, or a thread for a plain server), so the same routes run inside Ray
Serve and in tests without it.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .. import metrics
from .config import ServeConfig
from .engine import EmbeddingEngine, Item
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
    """Keys from ``env_var`` (comma-separated) and ``key_file`` (one per line); none = no auth."""
    keys = [k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip()]
    if key_file:
        with open(key_file) as fh:
            keys += [line.strip() for line in fh if line.strip() and not line.startswith("#")]
    return keys


def check_key(header: str | None, keys: list[str]) -> bool:
    """Constant-time check of ``Authorization: Bearer <key>`` against every key."""
    scheme, _, token = (header or "").partition(" ")
    ok = False
    for key in keys:  # no early exit: time does not depend on which key matched
        ok |= hmac.compare_digest(token.strip().encode(), key.encode())
    return ok and scheme.lower() == "bearer"


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


def default_model_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or path


class _Recorder:
    """Ray metrics of one request; silent outside a Ray process (plain-server tests)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def request(self, route: str, code: int, seconds: float, texts: int, tokens: int) -> None:
        if not self.enabled:
            return
        tags = {"route": route, "code": str(code)}
        metrics.inc("embedforge_serve_requests_total", 1, tags)
        if code >= 400:
            metrics.inc("embedforge_serve_errors_total", 1, tags)
        metrics.observe("embedforge_serve_latency_seconds", seconds, {"route": route})
        metrics.inc("embedforge_serve_texts_total", texts, {"route": route})
        metrics.inc("embedforge_serve_tokens_total", tokens, {"route": route})


def build_api(engine: EmbeddingEngine, embed: Embed, cfg: ServeConfig,
              record_metrics: bool = False) -> FastAPI:
    app = FastAPI(title="embedforge embeddings", docs_url="/docs", redoc_url=None)
    keys = load_api_keys(cfg.api_key_env, cfg.api_key_file)
    model_name = cfg.model_name or default_model_name(cfg.encoder.model)
    recorder = _Recorder(record_metrics)
    started = int(time.time())

    async def handle(route: str, request: Request, run: Callable[[bytes], Awaitable[tuple[bytes, int, int]]],
                     error: Callable[[InputError], bytes]) -> Response:
        t0 = time.perf_counter()
        texts = tokens = 0
        try:
            if keys and not check_key(request.headers.get("authorization"), keys):
                raise InputError(401, "missing or invalid API key (Authorization: Bearer <key>)",
                                 code="invalid_api_key")
            body = await read_body(request, cfg.max_body_bytes)
            content, texts, tokens = await run(body)
            code = 200
        except InputError as exc:
            code, content = exc.status, error(exc)
        except Exception as exc:  # the replica stays up; the client gets a message
            log.exception("embedding request failed")
            code, content = 500, error(InputError(500, f"internal error: {type(exc).__name__}",
                                                  code="server_error"))
        recorder.request(route, code, time.perf_counter() - t0, texts, tokens)
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return Response(content, status_code=code, media_type=JSON, headers=headers)

    async def run_openai(body: bytes) -> tuple[bytes, int, int]:
        req = parse_request(OpenAIEmbeddingRequest, body, cfg.max_inputs)
        if req.model is not None and req.model != model_name:
            raise InputError(404, f"model: {req.model!r} is not served here (this endpoint serves "
                                  f"{model_name!r})", param="model", code="model_not_found")
        items = engine.tokenize(req.input, engine.prompt(req.prompt_name), req.truncate, "input")
        vectors = finalize(await embed(items), req.dimensions,
                           engine.normalize or req.dimensions is not None)
        tokens = sum(it.tokens for it in items)
        return openai_response(vectors, model_name, tokens, req.encoding_format), len(items), tokens

    async def run_tei(body: bytes) -> tuple[bytes, int, int]:
        req = parse_request(TEIEmbedRequest, body, cfg.max_inputs)
        items = engine.tokenize(req.inputs, engine.prompt(req.prompt_name), req.truncate, "inputs",
                                left=req.truncation_direction == "Left")
        vectors = finalize(await embed(items), req.dimensions, req.normalize)
        return json.dumps(vectors.tolist()).encode(), len(items), sum(it.tokens for it in items)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await handle("openai", request, run_openai, openai_error)

    @app.post("/embed")
    async def embed_tei(request: Request) -> Response:
        return await handle("tei", request, run_tei, tei_error)

    async def models(_: bytes) -> tuple[bytes, int, int]:
        return json.dumps({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": started, "owned_by": "embedforge"}]
        }).encode(), 0, 0

    async def info(_: bytes) -> tuple[bytes, int, int]:
        return json.dumps({"model_id": model_name, "model_path": cfg.encoder.model,
                           "max_input_length": engine.max_length, "max_client_batch_size": cfg.max_inputs,
                           **engine.info()}).encode(), 0, 0

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        return await handle("models", request, models, openai_error)

    @app.get("/info")
    async def model_info(request: Request) -> Response:
        return await handle("info", request, info, tei_error)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    return app
