import numpy as np

from embedforge.mine.index import build, choose_factory, merge_topk, search


def _data(n=500, d=16, q=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, x[:q] + 0.05 * rng.normal(size=(q, d)).astype(np.float32)


def test_factory_by_size():
    assert choose_factory(1000, 384) == "Flat"
    assert choose_factory(1_000_000, 384).startswith("IVF4000,")
    assert choose_factory(1_000_000, 384, pq_m=48) == "IVF4000,PQ48"
    assert choose_factory(10, 384, kind="flat") == "Flat"


def test_flat_search_is_exact():
    x, q = _data()
    scores, ids = search(build(x, "Flat", use_gpu=False), q, 10)
    brute = q @ x.T
    np.testing.assert_array_equal(ids, np.argsort(-brute, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :10], rtol=1e-5)


def test_sharded_merge_equals_one_index():
    x, q = _data()
    one = search(build(x, "Flat", use_gpu=False), q, 15)
    parts = []
    for lo, hi in ((0, 170), (170, 333), (333, 500)):
        s, i = search(build(x[lo:hi], "Flat", use_gpu=False), q, 15)
        parts.append((s, np.where(i >= 0, i + lo, -1)))
    merged = merge_topk(parts, 15)
    np.testing.assert_array_equal(merged[1], one[1])
    np.testing.assert_allclose(merged[0], one[0], rtol=1e-6)


def test_ivf_trains_and_recalls():
    x, q = _data(n=3000, d=16)
    _s, ids = search(build(x, "IVF32,Flat", use_gpu=False, nprobe=32), q, 5)
    assert (ids[:, 0] == np.arange(len(q))).mean() > 0.9
