from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedforge.train.sampler import (
    BatchPlan,
    DatasetInfo,
    canonical_order,
    dataset_weights,
    distinct_capacity,
    pack_batches,
    plan_batch_sizes,
    rank_slice,
)


def test_weights_follow_size_to_the_alpha():
    w = dataset_weights([100, 400], 0.5)
    assert w == pytest.approx([1 / 3, 2 / 3])
    assert dataset_weights([100, 400], 0.0) == pytest.approx([0.5, 0.5])
    assert dataset_weights([100, 400], 1.0) == pytest.approx([0.2, 0.8])


def test_pack_keeps_texts_unique_and_defers_clashes():
    keys = [frozenset({"a"}), frozenset({"a", "b"}), frozenset({"c"}), frozenset({"d"}),
            frozenset({"e"}), frozenset({"b"})]
    batches = pack_batches(keys, range(6), 2)
    for b in batches:
        texts = [t for i in b for t in keys[i]]
        assert len(texts) == len(set(texts))
    assert batches[0] == [0, 2]  # row 1 clashes on "a": it waits, it is not dropped
    assert 1 in {i for b in batches for i in b}


def make_plan(**kw):
    ds = [DatasetInfo("r1", "retrieval", 400), DatasetInfo("r2", "retrieval", 100),
          DatasetInfo("sts", "pair", 100), DatasetInfo("cls", "classification", 100)]
    return BatchPlan(ds, {"retrieval": 8, "pair": 16, "classification": 8}, **kw)


def test_one_dataset_per_batch_with_the_retrieval_share():
    plan = make_plan(alpha=0.5, retrieval_share=0.72, seed=1)
    kinds = Counter()
    for step in range(2000):
        d, rows = plan.batch(step)
        kinds[plan.datasets[d].kind] += 1
        assert len(rows) == plan.batch_size(d) and len(set(rows)) == len(rows)
        assert max(rows) < plan.datasets[d].size
    assert kinds["retrieval"] / 2000 == pytest.approx(0.72, abs=0.03)
    # within retrieval, r1 : r2 = sqrt(400) : sqrt(100) = 2 : 1
    r = Counter(plan.datasets[plan.batch(s)[0]].name for s in range(2000))
    assert r["r1"] / r["r2"] == pytest.approx(2.0, rel=0.15)


def test_plan_is_a_function_of_the_step():
    a, b = make_plan(seed=3), make_plan(seed=3)
    forward = [a.batch(s) for s in range(300)]
    assert [b.batch(s) for s in range(299, -1, -1)][::-1] == forward  # any order, same plan
    assert make_plan(seed=4).batch(0) != forward[0] or make_plan(seed=4).batch(1) != forward[1]


def test_epochs_reshuffle_and_cover_every_row():
    plan = BatchPlan([DatasetInfo("only", "retrieval", 32)], {"retrieval": 8}, seed=0)
    first = [i for s in range(4) for i in plan.batch(s)[1]]
    second = [i for s in range(4, 8) for i in plan.batch(s)[1]]
    assert sorted(first) == list(range(32)) == sorted(second)
    assert first != second


def test_rank_slice_splits_evenly():
    assert rank_slice(list(range(8)), 1, 2) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="does not split"):
        rank_slice(list(range(7)), 0, 2)


def test_a_dataset_that_cannot_fill_any_batch_is_left_out_before_training():
    with pytest.raises(ValueError, match=r"tiny: 3 rows < batch 8; left out"):
        BatchPlan([DatasetInfo("tiny", "retrieval", 3)], {"retrieval": 8})
    # enough rows, but one shared text: no batch of distinct texts can be packed
    with pytest.raises(ValueError, match=r"dup: only 1 of its 8 rows fit one batch"):
        BatchPlan([DatasetInfo("dup", "retrieval", 8)], {"retrieval": 4},
                  keys_of=lambda _d: [frozenset(("same doc",))] * 8)


def test_a_dataset_smaller_than_its_batch_is_left_out_and_reported():
    infos = [DatasetInfo("big", "retrieval", 40), DatasetInfo("tiny", "retrieval", 3),
             DatasetInfo("sts", "pair", 1)]
    plan = BatchPlan(infos, {"retrieval": 8, "pair": 4, "classification": 4}, retrieval_share=0.5)
    assert plan.skipped == [("tiny", 3, 8), ("sts", 1, 4)]
    assert plan.probs == [1.0, 0.0, 0.0]  # share of the empty non-retrieval group goes nowhere
    assert {plan.batch(s)[0] for s in range(30)} == {0}
    with pytest.raises(ValueError, match="no dataset can fill one batch"):
        BatchPlan(infos[1:], {"retrieval": 8, "pair": 4, "classification": 4})


def test_a_dataset_with_clashing_rows_trains_with_a_smaller_batch():
    # 14 rows over 5 shared documents (the demo's claims): at most 5 distinct rows per batch
    keys = [frozenset((f"q{i}", f"doc{i % 5}")) for i in range(14)]
    [dec] = plan_batch_sizes([DatasetInfo("claims", "retrieval", 14)], {"retrieval": 8},
                             lambda _d: keys, world=2)
    assert (dec.action, dec.capacity, dec.batch) == ("shrunk", 5, 4)
    assert "trains with batches of 4" in dec.describe()
    plan = BatchPlan([DatasetInfo("claims", "retrieval", 14)], {"retrieval": 8},
                     keys_of=lambda _d: keys, decisions=[dec])
    for step in range(200):
        _, rows = plan.batch(step)
        assert len(rows) == 4
        texts = [t for r in rows for t in keys[r]]
        assert len(texts) == len(set(texts))


def test_capacity_uses_the_rows_that_clash_least():
    # row 0 clashes with every other row; the others are mutually distinct
    keys = [frozenset({"a", "b", "c"}), frozenset({"a"}), frozenset({"b"}), frozenset({"c"})]
    assert distinct_capacity(keys) == 3
    assert canonical_order(keys)[-1] == 0


def test_epochs_that_pack_fewer_batches_do_not_break_the_step_to_batch_map():
    # the 4,096-row pair case: swapped copies share a key, so epochs pack different counts
    n_pairs = 2048
    keys = [frozenset((f"pair{i % n_pairs}",)) for i in range(2 * n_pairs)]
    info = [DatasetInfo("sts", "pair", 2 * n_pairs)]
    varied = 0
    for seed in range(20):
        plan = BatchPlan(info, {"pair": 64}, seed=seed, keys_of=lambda _d: keys)
        steps = 10 * (2 * n_pairs) // 64  # ten epochs' worth of batches
        for step in range(steps):
            _, rows = plan.batch(step)
            assert len(rows) == 64
            assert len({keys[r] for r in rows}) == 64
        assert len(plan._epoch_lens[0]) >= 10
        varied += len(set(plan._epoch_lens[0])) > 1
    assert varied, "the case under test: epochs that pack different numbers of batches"


def _check_plan(plan: BatchPlan, keys_by_ds: list[list[frozenset]], steps: int) -> None:
    for step in range(steps):
        d, rows = plan.batch(step)
        assert len(rows) == plan.batch_size(d) > 0
        texts = [t for r in rows for t in keys_by_ds[d][r]]
        assert len(texts) == len(set(texts)), "a text repeats inside a batch"
        assert max(rows) < plan.datasets[d].size


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_pairs=st.integers(1, 120),
    pair_batch=st.sampled_from([2, 4, 8, 16, 32]),
    n_cls=st.integers(1, 150),
    n_labels=st.integers(1, 6),
    n_retr=st.integers(1, 120),
    shared_negs=st.integers(1, 10),
    retr_batch=st.sampled_from([2, 4, 8, 16]),
    world=st.sampled_from([1, 2]),
)
def test_property_no_plan_ever_fails_mid_run(seed, n_pairs, pair_batch, n_cls, n_labels, n_retr,
                                              shared_negs, retr_batch, world):
    """Pairs with swapped copies, classification with few labels, retrieval sets sharing
    negatives, tiny datasets: every plan that can be built serves every step."""
    pairs = [frozenset((f"p{i % n_pairs}",)) for i in range(2 * n_pairs)]
    cls = [frozenset((f"text{i}",)) for i in range(n_cls)]
    retr = [frozenset((f"q{i}", f"d{i}", f"neg{i % shared_negs}")) for i in range(n_retr)]
    keys_by_ds = [pairs, cls, retr]
    infos = [DatasetInfo("pairs", "pair", len(pairs)), DatasetInfo("cls", "classification", n_cls),
             DatasetInfo("retr", "retrieval", n_retr)]
    sizes = {"pair": pair_batch * world, "classification": 4 * world, "retrieval": retr_batch * world}
    try:
        decisions = plan_batch_sizes(infos, sizes, lambda d: keys_by_ds[d], world=world)
    except ValueError:
        raise AssertionError("deciding batch sizes must never raise") from None
    if not any(x.batch for x in decisions):
        with pytest.raises(ValueError, match="no dataset can fill"):
            BatchPlan(infos, sizes, keys_of=lambda d: keys_by_ds[d], decisions=decisions)
        return
    for x in decisions:
        assert x.batch == 0 or (x.batch % world == 0 and x.batch <= x.capacity)
    plan = BatchPlan(infos, sizes, seed=seed, retrieval_share=0.5,
                     keys_of=lambda d: keys_by_ds[d], decisions=decisions)
    # enough steps for many epochs of the smallest usable dataset
    _check_plan(plan, keys_by_ds, 400)
    # a resumed run (a fresh plan, starting late) serves exactly the same batches
    again = BatchPlan(infos, sizes, seed=seed, retrieval_share=0.5,
                      keys_of=lambda d: keys_by_ds[d], decisions=decisions)
    assert again.batch(399) == plan.batch(399)
