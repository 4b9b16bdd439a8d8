"""The one redaction helper: held keys, scheme credentials, URI passwords; and the writers
that go through it (io.write_json / write_jsonl_atomic, the gateway's error text, stdout)."""

from __future__ import annotations

import base64
import io
import json

from embedforge import io as eio
from embedforge import redact as rd


def test_held_keys_credentials_and_uri_passwords_are_removed(monkeypatch):
    monkeypatch.setenv("EMBEDFORGE_API_KEYS", "ep-key-one-123,ep-key-two-456")
    monkeypatch.setenv("MY_PROVIDER", "sk-provider-9f8e7d")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    rd.register_env("MY_PROVIDER")  # named by a config's api_key_env, not by its own name
    basic = base64.b64encode(b"user:pa55word").decode()
    text = (f"401 {{'Authorization': 'Bearer sk-provider-9f8e7d', 'x': 'Basic {basic}'}} "
            "keys ep-key-one-123 and ep-key-two-456; store http://user:hunter2pw@host:5000/x "
            "s3://ak:sk%2Fsecret@bucket/p; Basic authentication is on; false stays")
    out = rd.redact(text)
    for secret in ("sk-provider-9f8e7d", basic, "ep-key-one-123", "ep-key-two-456", "hunter2pw",
                   "sk%2Fsecret"):
        assert secret not in out, (secret, out)
    assert "http://user:***@host:5000/x" in out
    assert "Basic authentication is on" in out and "false stays" in out


def test_a_config_registers_the_secrets_it_points_at(monkeypatch):
    monkeypatch.setenv("LLM_VAR", "sk-from-config-777")
    rd.register_config({"llm": {"api_key_env": "LLM_VAR"},
                        "prepare": {"sources": [{"path": "ftp://u:ftp-pass-0042@h/x"}]}})
    # now also a bare occurrence (no scheme, no URI) is removed
    assert rd.redact("key sk-from-config-777 pw ftp-pass-0042") == "key *** pw ***"


def test_writers_redact(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-canary-31337")
    eio.write_json({"cfg": {"uri": "http://me:pw-canary-1@h"}, "k": "sk-openai-canary-31337"},
                   str(tmp_path / "a.json"))
    eio.write_jsonl_atomic([{"error": "HTTP 401: echo Bearer sk-openai-canary-31337"}],
                           str(tmp_path / "e.jsonl"))
    text = (tmp_path / "a.json").read_text() + (tmp_path / "e.jsonl").read_text()
    assert "canary" not in text and json.loads((tmp_path / "a.json").read_text())["k"] == "***"
    buf = io.StringIO()
    stream = rd.RedactingStream(buf)
    print("connecting to http://u:pw-canary-2@h with sk-openai-canary-31337", file=stream)
    assert "canary" not in buf.getvalue()
