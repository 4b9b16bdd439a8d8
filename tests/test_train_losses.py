"""Each loss against values computed by hand from its formula."""

import math

import pytest
import torch

from embedforge.train import losses


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


Q = t([[1.0, 0.0], [0.0, 1.0]])
P = t([[0.6, 0.8], [0.8, 0.6]])


def ce(logits, target):
    return math.log(sum(math.exp(x) for x in logits)) - logits[target]


def test_infonce_in_batch_only():
    got = losses.retrieval_infonce(Q, P, tau=1.0, query_query=False)
    # q1: [0.6, 0.8] target 0; q2: [0.8, 0.6] target 1
    want = (ce([0.6, 0.8], 0) + ce([0.8, 0.6], 1)) / 2
    assert got.item() == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(math.log(1 + math.exp(0.2)))


def test_infonce_query_query_and_temperature():
    got = losses.retrieval_infonce(Q, P, tau=0.5, query_query=True)
    # q1·q2 = 0 joins each denominator; self-similarity (1.0) must not
    want = (ce([1.2, 1.6, 0.0], 0) + ce([1.6, 1.2, 0.0], 1)) / 2
    assert got.item() == pytest.approx(want, abs=1e-12)


def test_infonce_hard_negatives_masked_slots_ignored():
    neg = t([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])  # second slot is padding
    mask = torch.tensor([[True, False], [True, False]])
    got = losses.retrieval_infonce(Q, P, neg, mask, tau=1.0, query_query=False)
    # candidates per query: P1, P2, N11, N21 (all batch negatives), padding excluded
    want = (ce([0.6, 0.8, 1.0, 0.0], 0) + ce([0.8, 0.6, 0.0, 1.0], 1)) / 2
    assert got.item() == pytest.approx(want, abs=1e-12)
    unmasked = losses.retrieval_infonce(Q, P, neg, torch.ones_like(mask), tau=1.0, query_query=False)
    assert unmasked.item() != pytest.approx(want)


def test_classification_masks_same_label_candidates():
    q = t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    pos = t([[0.8, 0.6], [0.6, 0.8], [1.0, 0.0]])
    neg = t([[[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    labels = torch.tensor([0, 1, 0])
    neg_labels = torch.tensor([[1], [0], [1]])
    got = losses.classification_infonce(q, pos, neg, labels, neg_labels, tau=1.0)
    # anchor 0 (label 0): pos0 .8 target, pos1 .6 (label 1) kept, pos2 (label 0) masked,
    #   negs: n0 (l1) 0, n1 (l0) masked, n2 (l1) 0
    a0 = ce([0.8, 0.6, 0.0, 0.0], 0)
    # anchor 1 (label 1): pos0 .6 (l0), pos1 .8 target, pos2 0 (l0); negs n0 (l1) masked, n1 1.0, n2 masked
    a1 = ce([0.6, 0.8, 0.0, 0.0], 1)
    # anchor 2 (label 0): pos0 masked, pos1 (l1) .6*.6+.8*.8=1.0, pos2 .6 target; n0 .8, n1 masked, n2 .8
    a2 = ce([1.0, 0.6, 0.8, 0.8], 1)
    assert got.item() == pytest.approx((a0 + a1 + a2) / 3, abs=1e-12)


def test_cosent_pairs_ordered_by_gold_score():
    a = t([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = t([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])  # cos = .6, .8, 0
    score = torch.tensor([2.0, 1.0, 0.0])
    got = losses.cosent(a, b, score, scale=20.0)
    # pairs with s_i > s_j: (0,1) (0,2) (1,2): exp(20(cos_j - cos_i))
    terms = [20 * (0.8 - 0.6), 20 * (0.0 - 0.6), 20 * (0.0 - 0.8)]
    want = math.log(1 + sum(math.exp(x) for x in terms))
    assert got.item() == pytest.approx(want, abs=1e-9)
    # equal gold scores contribute nothing
    tied = losses.cosent(a, b, torch.tensor([1.0, 1.0, 1.0]))
    assert tied.item() == pytest.approx(0.0, abs=1e-12)


def test_gradients_flow_to_every_input():
    q, p = Q.clone().requires_grad_(True), P.clone().requires_grad_(True)
    losses.retrieval_infonce(q, p, tau=0.02).backward()
    assert q.grad.abs().sum() > 0 and p.grad.abs().sum() > 0
