"""The fake OpenAI server over real sockets: the SDK round trip, every fault, rpm, concurrency.

The synthesis client's retry/timeout/rate-limit tests trust this server to fail exactly as
configured, so each fault kind is checked here from the client's side and the server's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.client import RemoteDisconnected
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from embedforge.testing import FakeLLMServer, FaultPlan, max_in_window

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MSG = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hello big world"}]


def _client(server: FakeLLMServer, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=timeout)


def _chat(server: FakeLLMServer, messages: list[dict[str, Any]] | None = None,
          timeout: float = 5.0, **kw: Any) -> Any:
    with _client(server, timeout) as client:
        return client.chat.completions.create(model="gpt-test", messages=messages or MSG, **kw)


def _raw_post(server: FakeLLMServer) -> tuple[int, bytes]:
    """(status, body) of a plain stdlib request: no SDK parsing between us and the bytes."""
    req = urllib.request.Request(
        f"{server.base_url}/chat/completions", method="POST",
        data=json.dumps({"model": "gpt-test", "messages": MSG}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5.0) as fh:
            return fh.status, fh.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5.0) as fh:
        return json.load(fh)


def test_round_trip_usage_and_stats() -> None:
    with FakeLLMServer() as srv:
        resp = _chat(srv)
        assert resp.object == "chat.completion"
        assert resp.model == "gpt-test"
        assert resp.id.startswith("chatcmpl-")
        assert len(resp.choices) == 1
        choice = resp.choices[0]
        assert choice.finish_reason == "stop" and choice.message.role == "assistant"
        assert json.loads(choice.message.content) == {"echo": "hello big world"}
        assert resp.usage.prompt_tokens == 5  # "be terse" + "hello big world"
        assert resp.usage.completion_tokens == len(choice.message.content.split())
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

        stats = srv.stats()
        assert stats["requests"] == 1 and stats["outcomes"]["ok"] == 1
        assert stats["prompt_tokens"] == 5
        assert stats["completion_tokens"] == resp.usage.completion_tokens
        assert len(stats["arrivals"]) == 1 and stats["in_flight"] == 0

        assert _get_json(f"{srv.url}/stats")["outcomes"]["ok"] == 1
        srv.reset_stats()
        assert srv.stats()["requests"] == 0 and srv.stats()["arrivals"] == []


def test_models_endpoint() -> None:
    with FakeLLMServer() as srv, _client(srv) as client:
        assert [m.id for m in client.models.list()] == ["fake-llm"]


def test_n_choices_call_responder_per_choice() -> None:
    seen: list[dict[str, Any]] = []

    def responder(req: dict[str, Any]) -> str:
        seen.append(req)
        return json.dumps({"choice": req["_choice_index"]})

    with FakeLLMServer(responder=responder) as srv:
        resp = _chat(srv, n=2)
    assert [json.loads(c.message.content) for c in resp.choices] == [{"choice": 0}, {"choice": 1}]
    assert [c.index for c in resp.choices] == [0, 1]
    assert len(seen) == 2 and all(r["n"] == 2 for r in seen)


def test_rate_limit_fault_429_with_retry_after() -> None:
    with FakeLLMServer(faults=FaultPlan(rate_limit=1.0, retry_after=0.2)) as srv:
        with pytest.raises(openai.RateLimitError) as info:
            _chat(srv)
        assert info.value.status_code == 429
        assert info.value.response.headers["retry-after"] == "0.2"
        assert info.value.code == "rate_limit_exceeded"
        assert srv.stats()["outcomes"]["rate_limit"] == 1


def test_unavailable_fault_503_with_retry_after() -> None:
    with FakeLLMServer(faults=FaultPlan(unavailable=1.0, retry_after=1.5)) as srv:
        with pytest.raises(openai.InternalServerError) as info:
            _chat(srv)
        assert info.value.status_code == 503
        assert info.value.response.headers["retry-after"] == "1.5"
        assert srv.stats()["outcomes"]["unavailable"] == 1


def test_server_error_fault_500() -> None:
    with FakeLLMServer(faults=FaultPlan(server_error=1.0)) as srv:
        with pytest.raises(openai.InternalServerError) as info:
            _chat(srv)
        assert info.value.status_code == 500
        assert srv.stats()["outcomes"]["server_error"] == 1


def test_timeout_fault_fires_client_timeout_and_stops_fast() -> None:
    srv = FakeLLMServer(faults=FaultPlan(timeout=1.0, hang_seconds=2.0)).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            _chat(srv, timeout=0.3)
        assert time.monotonic() - t0 < 1.5
        assert srv.stats()["outcomes"]["timeout"] == 1
        # the server really does hang: a patient client gets the answer after hang_seconds
        t0 = time.monotonic()
        resp = _chat(srv, timeout=5.0)
        assert time.monotonic() - t0 >= 1.9
        assert json.loads(resp.choices[0].message.content) == {"echo": "hello big world"}
        # leave a request hanging; stop() must not wait for it
        with pytest.raises(openai.APITimeoutError):
            _chat(srv, timeout=0.1)
    finally:
        t0 = time.monotonic()
        srv.stop()
    assert time.monotonic() - t0 < 1.5


def test_drop_fault_is_a_connection_error() -> None:
    with FakeLLMServer(faults=FaultPlan(drop=1.0)) as srv:
        with pytest.raises(openai.APIConnectionError) as info:
            _chat(srv)
        assert not isinstance(info.value, openai.APITimeoutError)
        with pytest.raises(RemoteDisconnected):
            _raw_post(srv)
        assert srv.stats()["outcomes"]["drop"] == 2


def test_malformed_fault_body_is_not_json() -> None:
    with FakeLLMServer(faults=FaultPlan(malformed=1.0)) as srv:
        status, body = _raw_post(srv)
        assert status == 200 and body
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        with pytest.raises(ValueError):  # the SDK fails to decode it (JSONDecodeError)
            _chat(srv)
        assert srv.stats()["outcomes"]["malformed"] == 2


def test_bad_content_fault_envelope_ok_content_not_json() -> None:
    with FakeLLMServer(faults=FaultPlan(bad_content=1.0)) as srv:
        resp = _chat(srv)
        assert resp.choices[0].finish_reason == "stop" and resp.usage.total_tokens > 0
        with pytest.raises(json.JSONDecodeError):
            json.loads(resp.choices[0].message.content)
        outcomes = srv.stats()["outcomes"]
        assert (outcomes["bad_content"], outcomes["ok"]) == (1, 0)


def test_wrong_schema_fault_json_but_unexpected() -> None:
    with FakeLLMServer(faults=FaultPlan(wrong_schema=1.0)) as srv:
        resp = _chat(srv, n=2)
        assert [json.loads(c.message.content) for c in resp.choices] == [{"unexpected": True}] * 2
        assert srv.stats()["outcomes"]["wrong_schema"] == 1


def test_seeded_faults_are_mixed_and_reproducible() -> None:
    def outcomes(seed: int) -> list[int]:
        plan = FaultPlan(server_error=0.3, bad_content=0.3, seed=seed)
        with FakeLLMServer(faults=plan) as srv:
            return [_raw_post(srv)[0] for _ in range(30)]

    first = outcomes(7)
    assert first == outcomes(7)
    assert {200, 500} <= set(first)


def test_fault_plan_validates() -> None:
    with pytest.raises(ValueError):
        FaultPlan(drop=1.5)
    with pytest.raises(ValueError):
        FaultPlan(drop=0.6, timeout=0.6)


def test_poison_marker_always_500_others_fine() -> None:
    with FakeLLMServer(faults=FaultPlan(poison_marker="POISON-42")) as srv:
        bad = [{"role": "user", "content": [{"type": "text", "text": "x POISON-42 y"}]}]
        for _ in range(4):
            with pytest.raises(openai.InternalServerError) as info:
                _chat(srv, messages=bad)
            assert info.value.status_code == 500
        assert _chat(srv).choices[0].message.content
        assert srv.stats()["outcomes"]["poison"] == 4
        assert srv.stats()["outcomes"]["ok"] == 1


def test_rpm_limit_enforced_with_retry_after() -> None:
    with FakeLLMServer(rpm_limit=5) as srv:
        assert [_raw_post(srv)[0] for _ in range(5)] == [200] * 5
        with pytest.raises(openai.RateLimitError) as info:
            _chat(srv)
        retry_after = float(info.value.response.headers["retry-after"])
        assert 55 < retry_after <= 60
        assert srv.stats()["outcomes"]["rate_limited_by_rpm"] == 1
        assert srv.max_in_window(60.0) == 6  # arrivals include the rejected one


def test_rpm_window_slides() -> None:
    with FakeLLMServer(rpm_limit=2, rpm_window=0.5) as srv:
        assert [_raw_post(srv)[0] for _ in range(3)] == [200, 200, 429]
        time.sleep(0.55)
        assert _raw_post(srv)[0] == 200


def test_max_in_flight_counts_concurrency() -> None:
    async def fire(base_url: str) -> list[int]:
        async with aiohttp.ClientSession() as session:
            async def one(i: int) -> int:
                body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
                async with session.post(f"{base_url}/chat/completions", json=body) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(10)))

    with FakeLLMServer(latency=0.3) as srv:
        t0 = time.monotonic()
        statuses = asyncio.run(fire(srv.base_url))
        elapsed = time.monotonic() - t0
        stats = srv.stats()
    assert statuses == [200] * 10
    assert elapsed < 1.5  # concurrent, not 10 x 0.3 s
    assert stats["max_in_flight"] == 10 and stats["in_flight"] == 0
    assert srv.max_in_window(1.0) == 10
    assert max_in_window(stats["arrivals"], 1e-9) == 1


def test_stop_is_idempotent_and_frees_the_port() -> None:
    srv = FakeLLMServer().start()
    url = srv.base_url
    srv.stop()
    srv.stop()
    with pytest.raises(urllib.error.URLError) as info:
        _get_json(f"{url}/models")
    assert isinstance(info.value.reason, ConnectionRefusedError)


def test_subprocess_mode_prints_ready_and_serves() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedforge.testing.fake_llm", "--port", "0",
         "--latency", "0.01", "--rpm-limit", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:"), line
        base_url = line.split(" ", 1)[1]
        assert base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=5) as client:
            resp = client.chat.completions.create(model="remote", messages=MSG)
        assert resp.model == "remote"
        stats = _get_json(base_url.removesuffix("/v1") + "/stats")
        assert stats["outcomes"]["ok"] == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Warning" not in err, err
