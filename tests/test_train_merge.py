"""Merge math on small state dicts: averages, lerp/slerp endpoints and norms, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from embedforge.train import merge


def _state(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g).to(dtype), "b": torch.randn(3, generator=g).to(dtype),
            "pos": torch.arange(5)}


def test_average_is_the_weighted_mean_and_streams():
    states = [_state(i) for i in range(3)]
    avg = merge.average(iter(states))  # a generator is fine
    torch.testing.assert_close(avg["w"], (states[0]["w"] + states[1]["w"] + states[2]["w"]) / 3)
    assert torch.equal(avg["pos"], torch.arange(5))
    w = merge.average(states[:2], weights=[3, 1])
    torch.testing.assert_close(w["b"], 0.75 * states[0]["b"] + 0.25 * states[1]["b"])
    one = merge.average([states[0]])
    assert all(torch.equal(one[k], states[0][k]) for k in one)
    with pytest.raises(ValueError, match="more states than that"):
        merge.average(states, weights=[1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        merge.average(states[:2], weights=[1, -1])
    with pytest.raises(ValueError, match="at least one"):
        merge.average([])


def test_average_keeps_the_dtype_and_averages_in_float32():
    a, b = _state(0, torch.bfloat16), _state(1, torch.bfloat16)
    avg = merge.average([a, b])
    assert avg["w"].dtype == torch.bfloat16
    torch.testing.assert_close(avg["w"], ((a["w"].float() + b["w"].float()) / 2).bfloat16())


def test_mismatched_keys_shapes_and_buffers_name_the_key():
    a, b = _state(0), _state(1)
    with pytest.raises(ValueError, match="key 'extra' is only in b"):
        merge.lerp(a, {**b, "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match=r"key 'w': shape \(4, 3\) in a vs \(3, 4\) in b"):
        merge.slerp(a, {**b, "w": torch.zeros(3, 4)}, 0.5)
    with pytest.raises(ValueError, match="key 'pos': non-float"):
        merge.lerp(a, {**b, "pos": torch.arange(5) + 1}, 0.5)
    with pytest.raises(ValueError, match="key 'b' is only in state 0"):
        merge.average([a, {k: v for k, v in b.items() if k != "b"}])
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        merge.lerp(a, b, 1.5)


@pytest.mark.parametrize("fn", [merge.lerp, merge.slerp])
def test_endpoints_are_the_inputs_exactly(fn):
    a, b = _state(0), _state(1)
    for t, want in ((0.0, a), (1.0, b)):
        out = fn(a, b, t)
        assert all(torch.equal(out[k], want[k]) for k in a), (fn.__name__, t)
    mid = fn(a, b, 0.5)
    assert not torch.equal(mid["w"], a["w"]) and not torch.equal(mid["w"], b["w"])


def test_slerp_keeps_the_norm_where_lerp_shrinks_it():
    x = torch.tensor([1.0, 0.0, 0.0])
    y = torch.tensor([0.0, 1.0, 0.0])
    s = merge.slerp_tensor(x, y, 0.5)
    torch.testing.assert_close(s, torch.tensor([math.sqrt(0.5), math.sqrt(0.5), 0.0]))
    assert merge.lerp_tensor(x, y, 0.5).norm() == pytest.approx(math.sqrt(0.5))
    # a quarter of the way: a quarter of the angle
    q = merge.slerp_tensor(x, y, 0.25)
    assert math.atan2(q[1], q[0]) == pytest.approx(math.pi / 8)
    assert q.norm() == pytest.approx(1.0)


def test_slerp_falls_back_to_lerp_when_colinear_or_zero():
    x = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(merge.slerp_tensor(x, 2 * x, 0.5), 1.5 * x)  # cos θ = 1
    torch.testing.assert_close(merge.slerp_tensor(torch.zeros(3), x, 0.5), 0.5 * x)
    near = x + torch.tensor([1e-4, 0.0, 0.0])
    torch.testing.assert_close(merge.slerp_tensor(x, near, 0.3), merge.lerp_tensor(x, near, 0.3))
