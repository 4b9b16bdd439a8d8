"""The three training losses of the unified multi-task framework, as pure torch functions.

All take L2-normalised embeddings of the *local* batch and a ``gather`` callable that
concatenates a tensor over the data-parallel ranks (identity on one process). Gathering is
differentiable (:func:`gather_all`), so every rank's queries see every rank's documents as
negatives and gradients flow back to the rank that embedded them: the negatives scale with
the cluster while each rank only holds its own activations.

Each loss returns the mean over the local anchors. Data-parallel training averages gradients
over ranks, so the update equals that of the global-batch mean loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import check_matryoshka

Gather = Callable[[torch.Tensor], torch.Tensor]


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


def gather_all(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` over all ranks along dim 0, keeping gradients (identity if not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()), dim=0)


def _rank_offset(local: int, gather: Gather) -> int:
    """Index of this rank's first row in the gathered tensor (ranks hold equal local batches)."""
    import torch.distributed as dist

    if gather is identity or not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank() * local


def retrieval_infonce(
    q: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    neg_mask: torch.Tensor | None = None,
    *,
    tau: float = 0.02,
    query_query: bool = True,
    gather: Gather = identity,
) -> torch.Tensor:
    """InfoNCE for retrieval samples (QZhou / gte style).

    For query *i* the denominator holds its positive, every hard negative in the (global)
    batch, every other positive, and every other query (``query_query``). Shapes: ``q, pos
    [B, D]``, ``neg [B, K, D]`` with ``neg_mask [B, K]`` (False = padding slot).
    """
    b = q.shape[0]
    off = _rank_offset(b, gather)
    all_pos = gather(pos)
    logits = [q @ all_pos.T]  # [B, G]; target column = off + i
    masks = [torch.ones_like(logits[0], dtype=torch.bool)]
    if neg is not None and neg.numel():
        k = neg.shape[1]
        flat = gather(neg.reshape(b * k, -1))
        fmask = gather(neg_mask.reshape(b * k)) if neg_mask is not None else torch.ones(
            flat.shape[0], dtype=torch.bool, device=q.device)
        logits.append(q @ flat.T)
        masks.append(fmask.bool().unsqueeze(0).expand(b, -1))
    if query_query:
        all_q = gather(q)
        qq = q @ all_q.T
        self_mask = torch.ones_like(qq, dtype=torch.bool)
        self_mask[torch.arange(b), off + torch.arange(b)] = False
        logits.append(qq)
        masks.append(self_mask)
    scores = torch.cat(logits, dim=1) / tau
    scores = scores.masked_fill(~torch.cat(masks, dim=1), float("-inf"))
    target = off + torch.arange(b, device=q.device)
    return F.cross_entropy(scores, target)


def classification_infonce(
    q: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    labels: torch.Tensor,
    neg_labels: torch.Tensor,
    neg_mask: torch.Tensor | None = None,
    *,
    tau: float = 0.02,
    gather: Gather = identity,
) -> torch.Tensor:
    """InfoNCE for classification with same-label masking.

    Candidates: every positive and every negative in the (global) batch. The anchor's own
    positive is the target; every *other* candidate carrying the anchor's label is removed
    from the denominator (it is not a negative, whoever's sample it came from). ``labels [B]``
    and ``neg_labels [B, K]`` are integer class ids.
    """
    b, k = neg.shape[0], neg.shape[1]
    off = _rank_offset(b, gather)
    all_pos, all_lab = gather(pos), gather(labels)
    flat = gather(neg.reshape(b * k, -1))
    flat_lab = gather(neg_labels.reshape(b * k))
    flat_ok = gather(neg_mask.reshape(b * k)).bool() if neg_mask is not None else torch.ones(
        flat.shape[0], dtype=torch.bool, device=q.device)
    target = off + torch.arange(b, device=q.device)
    pos_keep = labels[:, None] != all_lab[None, :]
    pos_keep[torch.arange(b), target] = True
    neg_keep = (labels[:, None] != flat_lab[None, :]) & flat_ok[None, :]
    scores = torch.cat([q @ all_pos.T, q @ flat.T], dim=1) / tau
    scores = scores.masked_fill(~torch.cat([pos_keep, neg_keep], dim=1), float("-inf"))
    return F.cross_entropy(scores, target)


def cosent(
    a: torch.Tensor,
    b: torch.Tensor,
    score: torch.Tensor,
    *,
    scale: float = 20.0,
    gather: Gather = identity,
) -> torch.Tensor:
    """CoSENT: log(1 + Σ_{s_i > s_j} exp(λ (cos_j − cos_i))) over all pairs of the batch.

    Only the *order* of gold scores matters, so STS scores (0–5) and NLI labels (0/1/2) of
    one dataset work alike; a batch must not mix datasets with different scales.
    """
    cos = gather((a * b).sum(-1))
    s = gather(score.to(cos.dtype))
    diff = scale * (cos[None, :] - cos[:, None])  # [i, j] = λ (cos_j − cos_i)
    valid = s[:, None] > s[None, :]
    diff = diff.masked_fill(~valid, float("-inf"))
    zero = torch.zeros(1, dtype=diff.dtype, device=diff.device)
    return torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)


# --- Matryoshka representation learning (MRL) ---------------------------------------------


def truncate_normalise(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` components of each row, L2-renormalised: what a user of a
    Matryoshka model gets when asking for ``dim`` dimensions (serve ``dimensions=``,
    sentence-transformers ``truncate_dim=``), so training scores exactly that vector."""
    return F.normalize(x[..., :dim], dim=-1)


def matryoshka_plan(dims: list[int] | None, weights: list[float] | None,
                    full: int) -> list[tuple[int, float]]:
    """(dim, weight) pairs to train, smallest first, the full dimension always last.

    ``dims`` lists the truncated sizes; ``full`` is added when it is not their last entry.
    ``weights`` has one entry per resulting dim (default 1 each). Raises ValueError naming
    ``loss.matryoshka_dims`` for a dim above the model's embedding size, so a wrong config
    fails before any step rather than silently training on fewer dims than asked.
    """
    if not dims:
        return [(full, 1.0)]
    check_matryoshka(dims, weights)
    if dims[-1] > full:
        raise ValueError(f"loss.matryoshka_dims: {dims[-1]} is larger than the model's embedding "
                         f"size {full}; use dims up to {full}")
    eff = list(dims) if dims[-1] == full else [*dims, full]
    w = [1.0] * len(eff) if weights is None else [float(x) for x in weights]
    if len(w) != len(eff):
        raise ValueError(f"loss.matryoshka_weights: {len(w)} weights for {len(eff)} dims {eff} "
                         f"(the full size {full} is always trained; give it a weight too)")
    return list(zip(eff, w, strict=True))


def matryoshka(loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
               emb: dict[str, torch.Tensor], plan: list[tuple[int, float]]) -> torch.Tensor:
    """Σ_d w_d · loss(every embedding truncated to d and renormalised).

    A plain weighted sum, not divided by Σ w, as sentence-transformers' ``MatryoshkaLoss``
    does, so weights and learning rates carry over from recipes written for it. The full
    dimension is used as given (no renormalisation), so ``plan=[(full, 1)]`` is exactly the
    plain loss. Truncation works on whatever embeddings it is handed: under GradCache these
    are the cached full-size embeddings, so the gradient stays exact.
    """
    full = next(iter(emb.values())).shape[-1]
    total: torch.Tensor | None = None
    for dim, weight in plan:
        part = emb if dim == full else {k: truncate_normalise(v, dim) for k, v in emb.items()}
        term = weight * loss_fn(part)
        total = term if total is None else total + term
    assert total is not None, "empty matryoshka plan"
    return total
