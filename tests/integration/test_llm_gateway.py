"""The gateway against a real OpenAI-compatible HTTP server with injected faults."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from embedforge.llm.cache import ResponseCache
from embedforge.llm.config import LLMSettings
from embedforge.llm.gateway import Gateway, LLMError
from embedforge.llm.ratelimit import AsyncLimiter
from embedforge.testing.fake_llm import FakeLLMServer, FaultPlan

pytestmark = pytest.mark.integration


def _settings(**kw) -> LLMSettings:
    base = dict(model="fake-llm", timeout_s=0.5, max_retries=8, backoff_base_s=0.01,
                backoff_max_s=0.05, max_concurrency=16, json_mode="off")
    base.update(kw)
    return LLMSettings(**base)


def _run(server: FakeLLMServer, n: int, settings: LLMSettings, cache_dir=None, prefix="q"):
    async def main():
        lim = AsyncLimiter(settings.max_concurrency, settings.rpm, settings.tpm, settings.rate_window_s)
        gw = Gateway(settings, lim, ResponseCache(str(cache_dir) if cache_dir else None), server.base_url)
        msgs = [[{"role": "user", "content": f"{prefix} {i}"}] for i in range(n)]
        res = await asyncio.gather(*(gw.complete(m, template_version="t.v1", sample_index=0)
                                     for m in msgs), return_exceptions=True)
        await gw.close()
        return res, gw.stats

    return asyncio.run(main())


@pytest.mark.parametrize("client", ["aiohttp", "openai"])
@pytest.mark.parametrize("fault", ["rate_limit", "unavailable", "server_error", "timeout", "drop",
                                   "malformed"])
def test_no_request_lost_under_each_fault(fault, client):
    plan = FaultPlan(**{fault: 0.3}, seed=7, hang_seconds=2.0, retry_after=0.05)
    with FakeLLMServer(latency=0.01, faults=plan) as srv:
        res, stats = _run(srv, 40, _settings(client=client))
        outcomes = srv.stats()["outcomes"]
    errors = [r for r in res if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert [json.loads(r.content)["echo"] for r in res] == [f"q {i}" for i in range(40)]
    assert outcomes[fault] > 0 and outcomes["ok"] == 40
    assert stats["retries"] == outcomes[fault] and stats["failed"] == 0
    assert stats["calls"] == 40 + outcomes[fault]


def test_retries_are_bounded_and_failures_reported():
    with FakeLLMServer(faults=FaultPlan(poison_marker="POISON")) as srv:
        res, stats = _run(srv, 3, _settings(max_retries=3), prefix="POISON")
        assert srv.stats()["outcomes"]["poison"] == 3 * 4  # 1 try + 3 retries each
    assert all(isinstance(r, LLMError) and r.reason == "exhausted_http_500" for r in res)
    assert stats["failed"] == 3


def test_global_concurrency_and_rpm_held_server_side():
    with FakeLLMServer(latency=0.05) as srv:
        t = time.monotonic()
        res, _ = _run(srv, 40, _settings(max_concurrency=4, rpm=10, rate_window_s=2.0))
        elapsed = time.monotonic() - t
        st = srv.stats()
        assert st["max_in_flight"] <= 4
        # the client counts at send time, the server at arrival: allow 0.5 s of network/
        # scheduling jitter on a loaded 2-core machine (negligible against a real 60 s window)
        assert srv.max_in_window(1.5) <= 10
    assert not [r for r in res if isinstance(r, Exception)]
    assert elapsed >= 6.0  # 40 requests at 10 per 2-second window


def test_retry_after_from_a_server_side_limit_is_honoured():
    with FakeLLMServer(latency=0.01, rpm_limit=8, rpm_window=1.0) as srv:
        res, stats = _run(srv, 30, _settings(max_retries=20))
        st = srv.stats()
    assert not [r for r in res if isinstance(r, Exception)]
    assert st["outcomes"]["rate_limited_by_rpm"] > 0
    # the global pause means far fewer 429s than a client hammering the limit would get
    assert st["outcomes"]["rate_limited_by_rpm"] < 30
    assert stats["error_http_429"] == st["outcomes"]["rate_limited_by_rpm"]


def test_cache_makes_a_rerun_free(tmp_path):
    with FakeLLMServer() as srv:
        first, _s1 = _run(srv, 10, _settings(), cache_dir=tmp_path / "cache")
        n1 = srv.stats()["requests"]
        second, s2 = _run(srv, 10, _settings(), cache_dir=tmp_path / "cache")
        n2 = srv.stats()["requests"]
    assert n1 == 10 and n2 == 10  # nothing new sent
    assert s2["cache_hits"] == 10 and s2["calls"] == 0
    assert [r.content for r in first] == [r.content for r in second]
    assert all(r.cached for r in second)


def test_api_key_sent_but_never_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EF_TEST_KEY", "sk-secret-123")
    with FakeLLMServer() as srv:
        _run(srv, 2, _settings(api_key_env="EF_TEST_KEY"), cache_dir=tmp_path / "c")
    files = list((tmp_path / "c").rglob("*.json"))
    assert len(files) == 2
    assert all("sk-secret-123" not in f.read_text() for f in files)


def test_auth_errors_are_not_retried():
    gw = Gateway(_settings(), AsyncLimiter(1), ResponseCache(None), "http://127.0.0.1:9/v1")
    err = gw._status_error(401, None, "bad key")
    assert isinstance(err, LLMError) and err.reason == "auth" and "$OPENAI_API_KEY" in str(err)
    retry = gw._status_error(429, "1.5", "")
    assert retry.retry_after == 1.5
