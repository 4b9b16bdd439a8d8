"""Per-key request rate limit of a replica: one token bucket per API key (pure, no I/O).

A bucket holds up to ``burst`` requests and refills at ``per_minute / 60`` per second; a
request takes one. An empty bucket answers how long until the next request would fit, which
the endpoint sends as ``Retry-After`` with its 429. The buckets live in the replica (no
round-trip per request to a shared actor), so with N replicas a key may get up to N times
the rate; the operator sizes ``per_minute`` for that.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class KeyRateLimiter:
    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000):
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def acquire(self, key: str) -> float:
        """Take one request for ``key``: 0.0 when allowed, else seconds until one would be."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled (they hold nothing a fresh one would not), so
        per-address buckets of an unauthenticated server cannot grow without bound."""
        if len(self._buckets) <= self.max_keys:
            return
        full = [k for k, (t, at) in self._buckets.items()
                if t + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
