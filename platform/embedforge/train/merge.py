"""Merge model weights: average k state dicts, or interpolate two (linear or spherical).

Pure functions on ``{name: tensor}`` dicts (torch only: no Ray, no files), so the math is
tested in milliseconds and used the same way for DeepSpeed checkpoints and exported models.

* ``average``: a checkpoint average (the last checkpoints of one run; "model soup" of one
  trajectory) smooths the noise of the last optimizer steps. It streams: states may be a
  generator, only the running sum and one state are in memory at a time.
* ``lerp``: ``(1 - t)·a + t·b`` per tensor.
* ``slerp``: interpolation along the great circle between the two flattened tensors. Between
  two fine-tuned models whose weights point in different directions, the straight line cuts
  the chord: its midpoint is shorter by cos(θ/2), so the merged weights (and the activations
  they produce) shrink. Slerp keeps the norm where the two norms agree and moves the
  direction at a constant angular rate. When the tensors are nearly colinear (θ ≈ 0) the sine
  weights divide by ~0 and slerp equals lerp anyway, so it falls back to lerp there.

Non-float tensors (integer buffers such as position ids) are not interpolated: they must be
equal in every input and are copied. A key or shape mismatch raises ``ValueError`` naming the
key. Results have the dtype of the first input; arithmetic runs in float32 (bf16 weights are
merged without bf16 rounding at each step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

State = Mapping[str, torch.Tensor]

# |cos θ| above this: treat as colinear and lerp (sin θ < ~0.014, slerp's weights unstable)
COLINEAR = 0.9999


def check_compatible(a: State, b: State, names: tuple[str, str] = ("a", "b")) -> None:
    """Same keys, same shapes; otherwise a ValueError naming the first offending key."""
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a or only_b:
        key, where = (only_a[0], names[0]) if only_a else (only_b[0], names[1])
        raise ValueError(f"key {key!r} is only in {where} ({len(only_a)} keys only in "
                         f"{names[0]}, {len(only_b)} only in {names[1]}): not the same model")
    for key in a:
        if tuple(a[key].shape) != tuple(b[key].shape):
            raise ValueError(f"key {key!r}: shape {tuple(a[key].shape)} in {names[0]} vs "
                             f"{tuple(b[key].shape)} in {names[1]}")


def _check_t(t: float) -> None:
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise ValueError(f"t must be in [0, 1], got {t}")


def _same_non_float(key: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if not torch.equal(x, y):
        raise ValueError(f"key {key!r}: non-float tensor ({x.dtype}) differs between the inputs; "
                         "it cannot be interpolated")
    return x.clone()


def lerp_tensor(x: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """``(1 - t)·x + t·y`` in float32, back in x's dtype (exactly x at t=0, y at t=1)."""
    return torch.lerp(x.float(), y.float(), t).to(x.dtype)


def slerp_tensor(x: torch.Tensor, y: torch.Tensor, t: float,
                 colinear: float = COLINEAR) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors (lerp when nearly colinear or zero)."""
    if t == 0.0:
        return x.clone()
    if t == 1.0:
        return y.to(x.dtype).clone()
    v0, v1 = x.float().flatten(), y.float().flatten()
    n0, n1 = v0.norm(), v1.norm()
    if n0 == 0 or n1 == 0:
        return lerp_tensor(x, y, t)
    dot = float(torch.dot(v0 / n0, v1 / n1).clamp(-1.0, 1.0))
    if abs(dot) > colinear:
        return lerp_tensor(x, y, t)
    theta = math.acos(dot)
    s = math.sin(theta)
    w0, w1 = math.sin((1 - t) * theta) / s, math.sin(t * theta) / s
    return (w0 * v0 + w1 * v1).reshape(x.shape).to(x.dtype)


def _pairwise(a: State, b: State, t: float, fn) -> dict[str, torch.Tensor]:
    _check_t(t)
    check_compatible(a, b)
    out = {}
    for key, x in a.items():
        y = b[key]
        if not (x.is_floating_point() and y.is_floating_point()):
            out[key] = _same_non_float(key, x, y)
        else:
            out[key] = fn(x, y, t)
    return out


def lerp(a: State, b: State, t: float) -> dict[str, torch.Tensor]:
    """Linear interpolation of two state dicts: ``a`` at t=0, ``b`` at t=1."""
    return _pairwise(a, b, t, lerp_tensor)


def slerp(a: State, b: State, t: float) -> dict[str, torch.Tensor]:
    """Spherical interpolation per tensor: ``a`` at t=0, ``b`` at t=1."""
    return _pairwise(a, b, t, slerp_tensor)


def average(states: Iterable[State], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted mean of k state dicts (equal weights by default; weights are normalised).

    ``states`` may be a generator (one checkpoint loaded at a time). Weights must be
    non-negative with a positive sum and one per state.
    """
    if weights is not None and (any(w < 0 or math.isnan(w) for w in weights)
                                or sum(weights) <= 0):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    first: State | None = None
    acc: dict[str, torch.Tensor] = {}
    total = 0.0
    n = 0
    for i, state in enumerate(states):
        if weights is not None and i >= len(weights):
            raise ValueError(f"{len(weights)} weights for more states than that")
        w = 1.0 if weights is None else float(weights[i])
        if first is None:
            first = state
            acc = {k: (v.float() * w if v.is_floating_point() else v.clone())
                   for k, v in state.items()}
        else:
            check_compatible(first, state, ("state 0", f"state {i}"))
            for k, v in state.items():
                if v.is_floating_point():
                    acc[k].add_(v.float(), alpha=w)
                else:
                    _same_non_float(k, acc[k], v)
        total += w
        n += 1
    if first is None:
        raise ValueError("average needs at least one state dict")
    if weights is not None and n != len(weights):
        raise ValueError(f"{len(weights)} weights for {n} states")
    if total <= 0:
        raise ValueError("the weights of the given states sum to 0")
    return {k: (v / total).to(first[k].dtype) if first[k].is_floating_point() else v
            for k, v in acc.items()}
