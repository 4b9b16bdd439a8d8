"""The per-key token bucket with a fake clock: burst, refill, Retry-After, keys apart."""

import pytest

from embedforge.serve.limits import KeyRateLimiter


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_the_rate_with_the_wait_until_the_next_request():
    clock = Clock()
    lim = KeyRateLimiter(per_minute=6, burst=2, clock=clock)   # one request per 10 s
    assert [lim.acquire("a"), lim.acquire("a")] == [0.0, 0.0]
    assert lim.acquire("a") == pytest.approx(10.0)
    clock.t += 4
    assert lim.acquire("a") == pytest.approx(6.0)               # a refused request costs nothing
    clock.t += 6
    assert lim.acquire("a") == 0.0
    assert lim.acquire("b") == 0.0                              # every key has its own bucket
    clock.t += 3600
    assert [lim.acquire("a") for _ in range(3)][:2] == [0.0, 0.0]   # refills to the burst only


def test_idle_buckets_are_forgotten_past_max_keys():
    clock = Clock()
    lim = KeyRateLimiter(per_minute=60, burst=1, clock=clock, max_keys=10)
    for i in range(10):
        lim.acquire(f"ip{i}")
    clock.t += 5          # all refilled
    lim.acquire("new")
    assert list(lim._buckets) == ["new"]


def test_bad_settings():
    with pytest.raises(ValueError):
        KeyRateLimiter(0, 1)
    with pytest.raises(ValueError):
        KeyRateLimiter(10, 0)
