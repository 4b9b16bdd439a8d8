"""Fair dynamic batching of one replica: every request's texts are cut into chunks, and each
batch takes chunks from the waiting requests in turn, so a large request cannot starve the
others.

Why not Ray Serve's ``@serve.batch``: it serves calls first come, first served. A request of
256 texts x 8 KB queued all its chunks before a 1-text request that came a moment later, which
then waited for the whole large request (17.2 s, where it normally takes 0.04 s). Here a batch
is at most ``max_batch_tokens`` tokens, taken round-robin over the requests (one chunk of each
in turn, oldest first, then again), so a request that arrives while a batch runs is in the next
one: it waits for the running batch and its own, whatever is queued before it.

Why the forward runs in a thread: on the event loop it stops the replica from reading,
parsing, tokenising and answering other requests for the whole batch. One worker thread runs
one batch at a time (torch uses its own threads inside it); requests arriving meanwhile queue
up and make the next batch larger. A request that gives up (timeout, disconnect) is dropped
from the queue, so its remaining chunks cost nothing.

``round_robin`` (which chunks form the next batch) and ``chunk_spans`` (how a request is cut)
are pure functions, tested without a model or an event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .engine import Item

Forward = Callable[[list[Item]], np.ndarray]
# (texts, tokens, seconds each sampled text waited in the queue) of one batch: metrics
OnBatch = Callable[[int, int, list[float]], None]


def chunk_spans(tokens: Sequence[int], max_tokens: int) -> list[tuple[int, int]]:
    """``[start, end)`` runs of consecutive items of at most ``max_tokens`` tokens each (a single
    item over the limit forms its own run)."""
    spans: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, t in enumerate(tokens):
        if i > start and size + t > max_tokens:
            spans.append((start, i))
            start, size = i, 0
        size += t
    if len(tokens) > start:
        spans.append((start, len(tokens)))
    return spans


def round_robin(pending: Sequence[Sequence[int]], budget: int) -> list[tuple[int, int]]:
    """The next batch as ``(request, chunk)`` picks: ``pending[r]`` holds the token counts of
    request ``r``'s waiting chunks, in order. One chunk of each request in turn (request 0
    first), round after round, skipping a request whose next chunk no longer fits, until
    nothing fits in ``budget`` tokens. The first pick is always taken, even over the budget,
    so a chunk larger than the budget is still served."""
    picks: list[tuple[int, int]] = []
    taken = [0] * len(pending)
    used = 0
    progress = True
    while progress:
        progress = False
        for r, chunks in enumerate(pending):
            k = taken[r]
            if k >= len(chunks) or (picks and used + chunks[k] > budget):
                continue
            picks.append((r, k))
            taken[r] += 1
            used += chunks[k]
            progress = True
    return picks


@dataclass(eq=False)
class _Request:
    items: list[Item]
    spans: deque[tuple[int, int, int]]   # waiting chunks: start, end, tokens
    future: asyncio.Future[np.ndarray]
    left: int
    out: np.ndarray | None = None


class FairBatcher:
    """``await batcher.embed(items)`` -> the items' vectors, computed by ``forward`` in batches
    of at most ``max_batch_tokens`` shared fairly between the requests waiting.

    ``chunk_tokens``: how much of one request a batch takes per turn; ``wait_s``: how long the
    first request of an idle batcher waits for company before its batch starts (a busy batcher
    never waits: requests gather while the current batch runs)."""

    def __init__(self, forward: Forward, max_batch_tokens: int, chunk_tokens: int,
                 wait_s: float = 0.0, on_batch: OnBatch | None = None):
        self.forward = forward
        self.max_batch_tokens = max_batch_tokens
        self.chunk_tokens = chunk_tokens
        self.wait_s = wait_s
        self.on_batch = on_batch
        self._queue: list[_Request] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ef-serve-forward")

    async def embed(self, items: list[Item]) -> np.ndarray:
        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for it in items:
            it.enqueued = now
        spans = chunk_spans([it.tokens for it in items], self.chunk_tokens)
        req = _Request(items, deque((a, b, sum(it.tokens for it in items[a:b])) for a, b in spans),
                       loop.create_future(), left=len(items))
        self._queue.append(req)
        self._start(loop)
        assert self._wake is not None
        self._wake.set()
        return await req.future   # cancelled (timeout, disconnect): the worker drops the request

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run())

    def next_batch(self) -> list[tuple[_Request, int, int]]:
        """Take the next batch's chunks (request, start, end) off the queue. Requests served in
        it move behind the ones that were not, so none waits two batches while another is
        served twice."""
        self._queue = [r for r in self._queue if not r.future.done()]
        picks = round_robin([[t for _, _, t in r.spans] for r in self._queue],
                            self.max_batch_tokens)
        batch = []
        for r, _ in picks:   # a request's picks come in its chunk order
            req = self._queue[r]
            start, end, _ = req.spans.popleft()
            batch.append((req, start, end))
        served = {r for r, _ in picks}
        waiting = [req for r, req in enumerate(self._queue) if r not in served]
        again = [req for r, req in enumerate(self._queue) if r in served and req.spans]
        self._queue = waiting + again
        return batch

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not any(not r.future.done() for r in self._queue):
                self._queue.clear()
                self._wake.clear()
                await self._wake.wait()
                if self.wait_s > 0:   # an idle replica: give concurrent requests a moment
                    await asyncio.sleep(self.wait_s)
            batch = self.next_batch()
            if not batch:
                continue
            flat = [it for req, a, b in batch for it in req.items[a:b]]
            start = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(self._thread, self.forward, flat)
            except Exception as exc:  # the requests in this batch fail; the replica goes on
                for req, _, _ in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                sample = flat[:: max(1, len(flat) // 16)]   # observing every text costs more
                self.on_batch(len(flat), sum(it.tokens for it in flat),
                              [start - it.enqueued for it in sample])
            pos = 0
            for req, a, b in batch:
                part = vectors[pos:pos + b - a]
                pos += b - a
                if req.future.done():
                    continue
                if req.out is None:
                    req.out = np.empty((len(req.items), vectors.shape[1]), dtype=vectors.dtype)
                req.out[a:b] = part
                req.left -= b - a
                if req.left == 0:
                    req.future.set_result(req.out)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)
