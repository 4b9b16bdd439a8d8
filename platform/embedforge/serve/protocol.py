"""Request/response shapes of the OpenAI and TEI embedding APIs, and their pure transforms.

Validation errors become :class:`InputError` with a message that names the field
(``input[3]: ...``) and an HTTP status, so a bad request is a 4xx the client can act on,
never a 500: that includes what ``json.loads`` accepts but nothing downstream can handle
(nesting deeper than the parser's recursion limit, integers of more than 4,300 digits, lone
UTF-16 surrogates such as ``"\\ud800"`` that no tokenizer can encode). Responses are built as plain dicts and serialised once with ``json.dumps``
(FastAPI's encoder walks every float of every vector in Python).
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator


class InputError(Exception):
    """A client mistake: HTTP ``status`` with a message naming ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def check_unicode(text: str) -> None:
    """ValueError when ``text`` holds a lone surrogate: JSON's ``\\ud800`` escape decodes to a
    Python str that is not valid Unicode, and the tokenizer (and any UTF-8 writer) fails on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds a lone surrogate (U+{ord(text[exc.start]):04X} at character "
                         f"{exc.start}): not valid Unicode") from None


def _non_empty_texts(v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ValueError("must be a string or a list of strings")
    if not v:
        raise ValueError("must not be an empty list")
    for i, t in enumerate(v):
        if not isinstance(t, str):
            kind = "token ids" if isinstance(t, (int, list)) else type(t).__name__
            raise ValueError(f"item {i} is {kind}: only strings are accepted")
        if not t.strip():
            raise ValueError(f"item {i} is an empty string")
        try:
            check_unicode(t)
        except ValueError as exc:
            raise ValueError(f"item {i} {exc}") from None
    return v


# what clients may send (the validator turns a string into a one-item list): the schema of
# /openapi.json, which /docs shows and the fuzz test generates requests from
_TEXT = {"type": "string", "minLength": 1}
Texts = Annotated[list[str], WithJsonSchema({
    "anyOf": [_TEXT, {"type": "array", "items": _TEXT, "minItems": 1}],
    "description": "a string or a list of strings"})]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dimensions: int | None = Field(None, ge=1, description="Matryoshka: keep the first N dims")
    prompt_name: str | None = Field(None, description="a prompt of the model config (query, …)")
    truncate: bool = Field(False, description="cut inputs longer than the model's limit")

    @field_validator("*", mode="after")
    @classmethod
    def _unicode(cls, v: Any) -> Any:
        if isinstance(v, str):
            check_unicode(v)
        return v


class OpenAIEmbeddingRequest(_Request):
    """``POST /v1/embeddings`` (OpenAI schema; ``prompt_name``/``truncate`` as extra fields)."""

    input: Texts
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, v: Any) -> list[str]:
        return _non_empty_texts(v)


class TEIEmbedRequest(_Request):
    """``POST /embed`` (text-embeddings-inference schema)."""

    inputs: Texts
    normalize: bool = True
    truncation_direction: Literal["Right", "Left"] = "Right"

    @field_validator("inputs", mode="before")
    @classmethod
    def _texts(cls, v: Any) -> list[str]:
        return _non_empty_texts(v)


def field_path(loc: tuple[Any, ...]) -> str:
    """``("input", 3)`` -> ``input[3]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def parse_request(model: type[_Request], body: bytes, max_inputs: int) -> Any:
    """Bytes -> validated request, or InputError 400 (not JSON) / 422 (bad field) / 413."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise InputError(400, "request body is nested too deeply to parse") from None
    except ValueError as exc:   # JSONDecodeError, UnicodeDecodeError, integers over 4,300 digits
        raise InputError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(422, "request body must be a JSON object")
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = field_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "field required"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise InputError(422, f"{path}: {msg}", param=path) from None
    name = "input" if isinstance(req, OpenAIEmbeddingRequest) else "inputs"
    texts = getattr(req, name)
    if len(texts) > max_inputs:
        raise InputError(413, f"{name}: {len(texts)} texts, more than the limit of {max_inputs} "
                              "per request", param=name)
    return req


def finalize(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation to ``dimensions`` then (re-)normalisation."""
    if dimensions is not None:
        if dimensions > vectors.shape[1]:
            raise InputError(422, f"dimensions: {dimensions} is more than the model's "
                                  f"{vectors.shape[1]}", param="dimensions")
        vectors = vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def to_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: what the openai SDK decodes by default."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def openai_response(vectors: np.ndarray, model: str, tokens: int, encoding_format: str) -> bytes:
    enc = to_base64 if encoding_format == "base64" else (lambda v: v.tolist())
    data = [{"object": "embedding", "index": i, "embedding": enc(v)} for i, v in enumerate(vectors)]
    return json.dumps({"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).encode()


def openai_error(err: InputError) -> bytes:
    return json.dumps({"error": {"message": err.message, "type": err.code, "param": err.param,
                                 "code": err.status}}).encode()


def tei_error(err: InputError) -> bytes:
    kind = {401: "Unauthorized", 413: "Validation", 422: "Validation", 400: "Validation",
            429: "Overloaded"}.get(err.status, "Backend")
    return json.dumps({"error": err.message, "error_type": kind}).encode()
