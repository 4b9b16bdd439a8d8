import asyncio
import time

from embedforge.llm.ratelimit import AsyncLimiter, Budget


def test_concurrency_cap_and_release():
    b = Budget(max_concurrency=2)
    assert b.try_acquire(0.0) == 0.0
    assert b.try_acquire(0.0) == 0.0
    assert b.try_acquire(0.0) == -1.0  # wait for a release
    b.release(0.1)
    assert b.try_acquire(0.1) == 0.0


def test_rpm_sliding_window():
    b = Budget(max_concurrency=100, rpm=3)
    for t in (0.0, 10.0, 20.0):
        assert b.try_acquire(t) == 0.0
        b.release(t)
    assert b.try_acquire(30.0) == 30.0  # the request at t=0 leaves the window at t=60
    assert b.try_acquire(60.0) == 0.0
    assert b.requests_in_window(60.0) == 3


def test_tpm_budget_uses_estimates_then_actual_usage():
    b = Budget(max_concurrency=100, tpm=1000)
    assert b.try_acquire(0.0, est_tokens=600) == 0.0
    wait = b.try_acquire(1.0, est_tokens=600)
    assert wait > 0  # 1200 > 1000
    b.release(2.0, est_tokens=600, used_tokens=100)  # it really used only 100
    assert b.tokens_in_window(2.0) == 100
    assert b.try_acquire(2.0, est_tokens=600) == 0.0


def test_pause_blocks_everyone():
    b = Budget(max_concurrency=10)
    b.pause(0.0, 2.0)
    assert b.try_acquire(1.0) == 1.0
    assert b.try_acquire(2.5) == 0.0


def test_async_limiter_holds_concurrency():
    async def main() -> int:
        lim = AsyncLimiter(max_concurrency=3)
        live, peak = 0, 0

        async def task() -> None:
            nonlocal live, peak
            await lim.acquire()
            live += 1
            peak = max(peak, live)
            await asyncio.sleep(0.01)
            live -= 1
            await lim.release()

        await asyncio.gather(*(task() for _ in range(20)))
        return peak

    assert asyncio.run(main()) == 3


def test_async_limiter_waits_out_a_pause():
    async def main() -> float:
        lim = AsyncLimiter(max_concurrency=3)
        await lim.pause(0.2)
        t = time.monotonic()
        await lim.acquire()
        return time.monotonic() - t

    assert asyncio.run(main()) >= 0.18
