"""One redaction rule for everything the platform writes, prints or logs to a tracker.

A secret reaches disk by the most ordinary routes: a provider that echoes the request's
``Authorization`` header in its 401 body (stored in ``OUTPUT/errors``), an error message that
quotes a URI with ``user:password@`` in it, a resolved config logged as MLflow params or
written into a manifest. So there is one helper, :func:`redact`, and every writer of such text
goes through it (``io.write_json``, the LLM gateway's error messages, the tracking run, the
stage error files, the job's stdout/stderr via :func:`install`). It removes:

* the key values this process holds: values of environment variables whose name says key,
  token, secret or password (comma-separated lists split), and values registered with
  :func:`register` (a key read from a file, or from an env var named by ``*api_key_env``);
* ``Bearer …`` / ``Basic …`` / ``Token …`` credentials;
* the password of ``scheme://user:password@host`` URIs.

Pure and dependency-free (imported by io, config, tracking and the gateway alike).
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

MASK = "***"
#: environment variable names that hold secrets (OPENAI_API_KEY, EMBEDFORGE_API_KEYS,
#: RAY_AUTH_TOKEN, AWS_SECRET_ACCESS_KEY, PGPASSWORD, ...)
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
#: shorter values are no credential (a flag such as TOKENIZERS_PARALLELISM=false)
MIN_SECRET = 8
# a scheme's credential: long enough, and with a digit or a token character, so prose such as
# "Basic authentication" stays as written
_SCHEME_TOKEN = re.compile(
    r"\b(Bearer|Basic|Token)(\s+)(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}",
    re.IGNORECASE)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]*):([^/@\s]+)@")

_registered: set[str] = set()


def register(*values: str | None) -> None:
    """Remember secret values this process holds (e.g. a key read from a file)."""
    for v in values:
        for part in _parts(v):
            _registered.add(part)


def register_env(*names: str | None) -> None:
    """Remember the values of the environment variables ``names`` (a config's api_key_env)."""
    register(*(os.environ.get(n) for n in names if n))


def register_config(cfg: Any) -> None:
    """Remember the secrets a resolved config points at: the value of every ``*api_key_env``
    variable, and the password of every URI with one, at any depth."""
    data = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else cfg
    for key, value in _walk(data):
        if key.endswith("api_key_env") and isinstance(value, str):
            register_env(value)
        elif isinstance(value, str):
            register(*(m.group(2) for m in _USERINFO.finditer(value)))


def _walk(obj: Any, key: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, str(k))
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _walk(v, key)
    else:
        yield key, obj


def _parts(value: str | None) -> list[str]:
    if not value:
        return []
    parts = [value.strip(), *(p.strip() for p in value.split(","))]
    return [p for p in parts if len(p) >= MIN_SECRET]


def known_secrets() -> list[str]:
    """Every secret value to remove, longest first (a key that contains another goes whole)."""
    found = set(_registered)
    for name, value in os.environ.items():
        if SECRET_NAME.search(name):
            found.update(_parts(value))
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` without any secret this process knows of, credential or URI password.
    ``secrets``: :func:`known_secrets`, when the caller redacts many strings at once."""
    if not text:
        return text
    for secret in known_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _SCHEME_TOKEN.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)


def redact_obj(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a JSON-like value with every string (keys included) redacted."""
    secrets = known_secrets() if secrets is None else secrets
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, dict):
        return {redact(k, secrets) if isinstance(k, str) else k: redact_obj(v, secrets)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_obj(v, secrets) for v in obj)
    return obj


class RedactingStream(io.TextIOBase):
    """A text stream that redacts what is written before passing it on (stdout/stderr)."""

    def __init__(self, raw: Any):
        self._raw = raw

    def write(self, s: str) -> int:
        self._raw.write(redact(s))
        return len(s)

    def flush(self) -> None:
        self._raw.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...
        return getattr(self._raw, name)


def install() -> None:
    """Route this process's stdout and stderr through :func:`redact` (once): progress lines,
    warnings, tracebacks and the worker logs Ray forwards to the driver alike."""
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
