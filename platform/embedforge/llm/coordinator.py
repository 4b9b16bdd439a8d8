"""One Ray actor per job that owns the global LLM budgets and the job's accounting.

Every synthesis actor asks it before sending a request, so concurrency, RPM, TPM and a
provider's Retry-After pause hold across the whole cluster. Releases are fire-and-forget to
keep the per-request overhead to one awaited actor call.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import ray

from .ratelimit import AsyncLimiter


@ray.remote(num_cpus=0, max_concurrency=10_000)
class Coordinator:
    def __init__(self, max_concurrency: int, rpm: int | None, tpm: int | None,
                 window_s: float = 60.0):
        self.limiter = AsyncLimiter(max_concurrency, rpm, tpm, window_s)
        self.totals: Counter[str] = Counter()
        self.max_in_flight = 0
        self.started = 0
        self.actor_in_flight: dict[str, int] = {}

    async def acquire(self, est_tokens: int = 0) -> None:
        await self.limiter.acquire(est_tokens)
        self.started += 1
        self.max_in_flight = max(self.max_in_flight, self.limiter.budget.in_flight)

    async def release(self, est_tokens: int = 0, used_tokens: int | None = None) -> None:
        await self.limiter.release(est_tokens, used_tokens)

    async def pause(self, seconds: float) -> None:
        await self.limiter.pause(seconds)

    async def heartbeat(self, actor: str, started: int, in_flight: int) -> float:
        """An actor's live counts (for progress lines); returns the job-wide pause left."""
        import time

        self.started += started
        self.actor_in_flight[actor] = in_flight
        return max(0.0, self.limiter.budget.paused_until - time.monotonic())

    async def add_stats(self, delta: dict[str, float]) -> None:
        self.totals.update(delta)

    async def stats(self) -> dict[str, Any]:
        return {**dict(self.totals), "max_in_flight_granted": self.max_in_flight,
                "requests_started": self.started,
                "in_flight": self.limiter.budget.in_flight + sum(self.actor_in_flight.values())}


def partition(total: int | None, parts: int) -> int | None:
    """One actor's share of a job-wide budget (the shares never add up to more than it)."""
    return None if total is None else total // parts


def can_partition(max_concurrency: int, rpm: int | None, tpm: int | None, parts: int) -> bool:
    return all(v is None or v >= parts for v in (max_concurrency, rpm, tpm))


class PartitionedLimiter:
    """Each of ``parts`` actors enforces 1/parts of every job-wide budget locally.

    Zero actor calls per request (the coordinator round trips cost ~2 CPU-ms per request on a
    small node, measured), while concurrency/RPM/TPM still hold for the whole job because the
    shares sum to at most the budgets. A provider's Retry-After still pauses every actor: the
    pause goes to the coordinator and each actor polls it twice a second.
    """

    def __init__(self, handle: Any, max_concurrency: int, rpm: int | None, tpm: int | None,
                 window_s: float, parts: int, poll_s: float = 0.5):
        self.handle = handle
        self.local = AsyncLimiter(partition(max_concurrency, parts) or 1, partition(rpm, parts),
                                  partition(tpm, parts), window_s)
        self.poll_s = poll_s
        self.started = 0
        self._poller: Any = None

    def _ensure_poller(self) -> None:
        import asyncio

        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        import asyncio
        import uuid

        me = uuid.uuid4().hex[:8]
        while True:
            started, self.started = self.started, 0
            try:
                remaining = await self.handle.heartbeat.remote(
                    me, started, self.local.budget.in_flight)
                if remaining > 0:
                    await self.local.pause(remaining)
            except Exception:  # pauses/progress are best effort; the local shares still hold
                self.started += started
            await asyncio.sleep(self.poll_s)

    async def acquire(self, est_tokens: int = 0) -> None:
        self._ensure_poller()
        await self.local.acquire(est_tokens)
        self.started += 1

    async def release(self, est_tokens: int = 0, used_tokens: int | None = None) -> None:
        await self.local.release(est_tokens, used_tokens)

    async def pause(self, seconds: float) -> None:
        await self.local.pause(seconds)
        self.handle.pause.remote(seconds)  # tell every other actor


class RemoteLimiter:
    """The limiter interface backed by the :class:`Coordinator` (exact and dynamic: any actor
    may use any share of the budget; one awaited actor call per request)."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def acquire(self, est_tokens: int = 0) -> None:
        await self.handle.acquire.remote(est_tokens)

    async def release(self, est_tokens: int = 0, used_tokens: int | None = None) -> None:
        self.handle.release.remote(est_tokens, used_tokens)  # fire and forget

    async def pause(self, seconds: float) -> None:
        self.handle.pause.remote(seconds)
