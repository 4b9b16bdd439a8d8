from collections import Counter

import pytest

from embedforge.train.sampler import (
    BatchPlan,
    DatasetInfo,
    dataset_weights,
    pack_batches,
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


def test_too_small_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match=r"tiny \(3 rows < 8\)"):
        BatchPlan([DatasetInfo("tiny", "retrieval", 3)], {"retrieval": 8})
    # enough rows, but one shared text: no batch of distinct texts can be packed
    same = BatchPlan([DatasetInfo("dup", "retrieval", 8)], {"retrieval": 4},
                     keys_of=lambda _d: [frozenset(("same doc",))] * 8)
    with pytest.raises(ValueError, match="'dup': 8 rows cannot fill one batch"):
        same.batch(0)


def test_a_dataset_smaller_than_its_batch_is_left_out_and_reported():
    infos = [DatasetInfo("big", "retrieval", 40), DatasetInfo("tiny", "retrieval", 5),
             DatasetInfo("sts", "pair", 3)]
    plan = BatchPlan(infos, {"retrieval": 8, "pair": 4, "classification": 4}, retrieval_share=0.5)
    assert plan.skipped == [("tiny", 5, 8), ("sts", 3, 4)]
    assert plan.probs == [1.0, 0.0, 0.0]  # share of the empty non-retrieval group goes nowhere
    assert {plan.batch(s)[0] for s in range(30)} == {0}
    with pytest.raises(ValueError, match="every dataset is smaller than one batch"):
        BatchPlan(infos[1:], {"retrieval": 8, "pair": 4, "classification": 4})
