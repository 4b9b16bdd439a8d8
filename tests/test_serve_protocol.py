import base64
import json

import numpy as np
import pytest

from embedforge.serve.protocol import (
    InputError,
    OpenAIEmbeddingRequest,
    TEIEmbedRequest,
    finalize,
    openai_response,
    parse_request,
    to_base64,
)


def bad(body, model=OpenAIEmbeddingRequest, max_inputs=4) -> InputError:
    with pytest.raises(InputError) as exc:
        parse_request(model, body if isinstance(body, bytes) else json.dumps(body).encode(), max_inputs)
    return exc.value


def test_valid_requests_accept_a_string_or_a_list():
    r = parse_request(OpenAIEmbeddingRequest, b'{"input": "hi", "model": "m", "dimensions": 8}', 4)
    assert r.input == ["hi"] and r.encoding_format == "float" and r.dimensions == 8
    t = parse_request(TEIEmbedRequest, b'{"inputs": ["a", "b"], "normalize": false}', 4)
    assert t.inputs == ["a", "b"] and t.normalize is False and t.truncate is False


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"{not json", 400, "not valid JSON"),
    (b'["input"]', 422, "JSON object"),
    ({}, 422, "input: field required"),
    ({"input": ""}, 422, "input: item 0 is an empty string"),
    ({"input": []}, 422, "input: must not be an empty list"),
    ({"input": ["ok", "  "]}, 422, "item 1 is an empty string"),
    ({"input": 5}, 422, "input: must be a string or a list of strings"),
    ({"input": [[1, 2]]}, 422, "item 0 is token ids"),
    ({"input": ["a", None]}, 422, "item 1 is NoneType"),
    ({"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
    ({"input": "a", "dimensions": 0}, 422, "dimensions"),
    ({"input": "a", "dimensions": "8"}, 422, "dimensions"),
    ({"input": "a", "temperature": 1}, 422, "temperature: unknown field"),
    ({"input": ["a"] * 5}, 413, "5 texts, more than the limit of 4"),
])
def test_bad_requests_name_the_field(body, status, needle):
    err = bad(body)
    assert err.status == status and needle in err.message, err.message


def test_tei_errors_name_inputs():
    assert "inputs: field required" in bad({"input": "x"}, TEIEmbedRequest).message
    assert bad({"inputs": ["a"] * 9}, TEIEmbedRequest).message.startswith("inputs: 9 texts")


def test_finalize_truncates_then_renormalises():
    v = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(finalize(v, 2, True), [[0.6, 0.8], [1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(finalize(v, None, False), v)
    with pytest.raises(InputError, match="dimensions: 4 is more than the model's 3"):
        finalize(v, 4, True)


def test_base64_is_little_endian_float32_as_the_openai_sdk_decodes():
    v = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    assert np.array_equal(np.frombuffer(base64.b64decode(to_base64(v)), dtype="<f4"), v)
    out = json.loads(openai_response(v[None], "m", 7, "base64"))
    assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and out["data"][0]["index"] == 0
