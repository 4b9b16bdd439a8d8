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


# --- Matryoshka ---------------------------------------------------------------------------

def unit(rows):
    return torch.nn.functional.normalize(t(rows), dim=-1)


def test_matryoshka_full_dim_only_is_the_plain_loss():
    g = torch.Generator().manual_seed(0)
    q, p = unit(torch.randn(4, 6, generator=g)), unit(torch.randn(4, 6, generator=g))
    plain = losses.retrieval_infonce(q, p, tau=0.05)
    got = losses.matryoshka(lambda e: losses.retrieval_infonce(e["q"], e["pos"], tau=0.05),
                            {"q": q, "pos": p}, losses.matryoshka_plan(None, None, 6))
    assert got.item() == plain.item()
    same = losses.matryoshka(lambda e: losses.retrieval_infonce(e["q"], e["pos"], tau=0.05),
                             {"q": q, "pos": p}, losses.matryoshka_plan([6], None, 6))
    assert same.item() == plain.item()


def test_matryoshka_two_dims_by_hand():
    q = t([[0.6, 0.8], [0.8, -0.6]])
    p = t([[0.8, 0.6], [-0.6, 0.8]])
    plan = losses.matryoshka_plan([1], [2.0, 0.5], 2)
    assert plan == [(1, 2.0), (2, 0.5)]
    got = losses.matryoshka(lambda e: losses.retrieval_infonce(e["q"], e["pos"], tau=1.0,
                                                               query_query=False),
                            {"q": q, "pos": p}, plan)
    # dim 1, renormalised: q -> [1], [1]; p -> [1], [-1]
    d1 = (ce([1.0, -1.0], 0) + ce([1.0, -1.0], 1)) / 2
    # dim 2: q1·p = .96, .28; q2·p = .28, -.96
    d2 = (ce([0.96, 0.28], 0) + ce([0.28, -0.96], 1)) / 2
    assert got.item() == pytest.approx(2.0 * d1 + 0.5 * d2, abs=1e-12)  # a sum, not a mean


def test_matryoshka_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    plan = losses.matryoshka_plan([2, 3], [1.0, 0.5, 0.25], 5)

    def f(a, b):
        emb = {"a": torch.nn.functional.normalize(a, dim=-1), "b": torch.nn.functional.normalize(b, dim=-1)}
        return losses.matryoshka(lambda e: losses.cosent(e["a"], e["b"], s, scale=5.0), emb, plan)

    assert torch.autograd.gradcheck(f, (a, b))
    # the truncated terms reach the first components only: the full term alone moves the rest
    a.grad = None
    f(a, b).backward()
    full_only = a.detach().clone().requires_grad_(True)
    emb = {"a": torch.nn.functional.normalize(full_only, dim=-1),
           "b": torch.nn.functional.normalize(b.detach(), dim=-1)}
    (0.25 * losses.cosent(emb["a"], emb["b"], s, scale=5.0)).backward()
    assert not torch.allclose(a.grad, full_only.grad)


def test_truncate_normalise_is_unit_length_prefix():
    x = t([[3.0, 4.0, 12.0]])
    assert losses.truncate_normalise(x, 2).tolist() == [[0.6, 0.8]]


@pytest.mark.parametrize("dims,weights,full,msg", [
    ([64, 512], None, 256, "larger than the model's embedding size 256"),
    ([64, 128], [1.0, 1.0], 256, "2 weights for 3 dims"),
])
def test_matryoshka_plan_errors_name_the_option(dims, weights, full, msg):
    with pytest.raises(ValueError, match=msg) as exc:
        losses.matryoshka_plan(dims, weights, full)
    assert str(exc.value).startswith("loss.matryoshka_")


def test_matryoshka_plan_full_dim_implicit_or_listed():
    assert losses.matryoshka_plan([64, 128], None, 256) == [(64, 1.0), (128, 1.0), (256, 1.0)]
    assert losses.matryoshka_plan([64, 256], [2, 1], 256) == [(64, 2.0), (256, 1.0)]


@pytest.mark.parametrize("kw,msg", [
    ({"matryoshka_dims": [128, 64]}, "strictly increasing"),
    ({"matryoshka_dims": [0, 64]}, "positive"),
    ({"matryoshka_dims": [64, 128], "matryoshka_weights": [1.0]}, "weights for dims"),
    ({"matryoshka_weights": [1.0]}, "needs loss.matryoshka_dims"),
])
def test_loss_settings_reject_bad_matryoshka(kw, msg):
    from pydantic import ValidationError

    from embedforge.train.config import LossSettings

    with pytest.raises(ValidationError, match=msg):
        LossSettings(**kw)


def test_matryoshka_dims_parse_from_the_command_line():
    from embedforge.config import parse_config
    from embedforge.train.config import TrainConfig

    cfg = parse_config(TrainConfig, ["--output", "/tmp/x", "--model.model", "/tmp/m",
                                     "--stage1.inputs", "a", "--stage2.inputs", "b",
                                     "--loss.matryoshka-dims", "64,128",
                                     "--loss.matryoshka-weights", "1,1,2"])
    assert cfg.loss.matryoshka_dims == [64, 128]
    assert cfg.loss.matryoshka_weights == [1.0, 1.0, 2.0]


@pytest.mark.parametrize("kind", ["retrieval", "pair", "classification"])
def test_batch_loss_applies_matryoshka_to_every_kind(kind):
    from embedforge.train.config import LossSettings
    from embedforge.train.data import TextBatch
    from embedforge.train.model import batch_loss, kind_loss

    g = torch.Generator().manual_seed(2)
    n = 4
    emb = {k: unit(torch.randn(n, 6, generator=g)) for k in ("q", "pos", "neg")}
    batch = TextBatch("d", kind, [""] * n, ["q"] * n, ["p"] * n, negatives=["n"] * n,
                      neg_mask=[True] * n, labels=[0, 1, 0, 1], neg_labels=[1, 0, 1, 0],
                      scores=[0.0, 1.0, 2.0, 3.0])
    plain = LossSettings(temperature=0.1)
    mrl = LossSettings(temperature=0.1, matryoshka_dims=[2, 4], matryoshka_weights=[1, 2, 3])
    want = sum(w * kind_loss(batch, {k: losses.truncate_normalise(v, d) if d < 6 else v
                                     for k, v in emb.items()}, plain)
               for d, w in [(2, 1.0), (4, 2.0), (6, 3.0)])
    assert batch_loss(batch, emb, mrl).item() == pytest.approx(want.item(), rel=1e-12)
    assert batch_loss(batch, emb, plain).item() == kind_loss(batch, emb, plain).item()
    too_big = LossSettings(matryoshka_dims=[8])
    with pytest.raises(ValueError, match=r"loss\.matryoshka_dims"):
        batch_loss(batch, emb, too_big)
