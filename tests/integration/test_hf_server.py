"""The embedded transformers engine as a real HTTP server (tiny random Qwen2, no hub)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from embedforge.cluster import free_port, wait_http
from embedforge.llm.local_server import probe_completion
from embedforge.testing.models import build_tiny_qwen2

pytestmark = pytest.mark.integration


def test_openai_sdk_against_the_engine(tmp_path):
    import openai

    model_dir = build_tiny_qwen2(str(tmp_path / "tiny"))
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "embedforge.llm.hf_server", "--model", model_dir,
                                 "--port", str(port), "--threads", "1"], stdout=fh, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{base}/models", 120, proc, what=f"engine (log: {log})")
        # a random tiny model writes nonsense, yet under the schema it is always the JSON asked for
        assert isinstance(probe_completion(base, 60, proc, max_tokens=6)["text"], str)
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
        schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        resp = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5,
            temperature=0.7, response_format={"type": "json_schema",
                                              "json_schema": {"name": "o", "schema": schema}})
        content = resp.choices[0].message.content
        assert list(json.loads(content)) == ["text"]
        assert 0 < resp.usage.completion_tokens <= 5 and resp.usage.prompt_tokens > 0
        three = {"type": "object", "properties": {k: {"type": "string"} for k in ("query", "positive", "negative")},
                 "required": ["query", "positive", "negative"]}
        for _ in range(3):
            resp = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=12,
                temperature=1.0, response_format={"type": "json_object", "schema": three})
            answer = json.loads(resp.choices[0].message.content)
            assert list(answer) == ["query", "positive", "negative"]
            assert all(isinstance(v, str) for v in answer.values())
            assert resp.usage.completion_tokens <= 12 + 3  # the budget spans the fields
        bad = urllib.request.Request(f"{base}/chat/completions", data=b'{"messages": []}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(bad, timeout=10)
        assert exc.value.code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=20)
