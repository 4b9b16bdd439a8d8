"""The trainable encoder (backbone + pooling + normalisation, optional LoRA) and one loss step.

The step works with any ``backward`` (plain ``loss.backward`` in tests, ``engine.backward``
under DeepSpeed) and optionally as GradCache: embed every chunk without a graph, compute
the loss on detached embeddings, then re-embed chunk by chunk and push the cached embedding
gradients through. Peak activation memory is one chunk, the result the full-batch gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..model.encoder import load_backbone, pool, tokenize
from . import losses
from .config import LossSettings, ModelSettings
from .data import TextBatch


class EmbeddingModel(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, pooling: str, normalize: bool, left_padded: bool,
                 include_prompt: bool = True):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = normalize
        self.left_padded = left_padded
        self.include_prompt = include_prompt

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        lengths = None if self.include_prompt else prompt_lengths
        emb = pool(hidden, attention_mask, self.pooling, self.left_padded, lengths).float()
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb


def build_model(settings: ModelSettings, path: str | None = None) -> tuple[EmbeddingModel, Any]:
    """Model + tokenizer from ``path`` (default: the configured backbone), LoRA applied if asked.

    Under ZeRO-3 call this while an ``HfDeepSpeedConfig`` is alive, so weights load
    partitioned with the model's own initialisation.
    """
    backbone, tokenizer, is_decoder = load_backbone(path or settings.model, settings.bidirectional)
    if settings.gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.lora.enabled:
        from peft import LoraConfig, get_peft_model

        backbone = get_peft_model(backbone, LoraConfig(
            r=settings.lora.r, lora_alpha=settings.lora.alpha, lora_dropout=settings.lora.dropout,
            target_modules=settings.lora.target_modules))
    pooling = settings.pooling if settings.pooling != "auto" else (
        "last_token" if is_decoder else "mean")
    return EmbeddingModel(backbone, pooling, settings.normalize, tokenizer.padding_side == "left",
                          settings.include_prompt), tokenizer


Embed = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def batch_groups(batch: TextBatch, tokenizer: Any, model: ModelSettings, device: Any = "cpu",
                 ) -> dict[str, dict[str, torch.Tensor]]:
    """Tokenised text groups of a batch, each with its rows' prompts (instructions).

    Queries always carry their instruction; documents only for symmetric kinds (pairs,
    classification). Retrieval documents get the passage length limit.
    """
    doc_len = model.passage_max_length if batch.kind == "retrieval" else model.query_max_length
    doc_prompts = batch.prompts if batch.symmetric else None
    groups = {"q": tokenize(tokenizer, batch.queries, model.query_max_length, batch.prompts, device),
              "pos": tokenize(tokenizer, batch.positives, doc_len, doc_prompts, device)}
    if batch.negatives:
        k = batch.num_negatives
        neg_prompts = [p for p in batch.prompts for _ in range(k)] if batch.symmetric else None
        groups["neg"] = tokenize(tokenizer, batch.negatives, doc_len, neg_prompts, device)
    return groups


def batch_loss(batch: TextBatch, emb: dict[str, torch.Tensor], cfg: LossSettings,
               gather: losses.Gather = losses.identity) -> torch.Tensor:
    """The loss of the batch's kind, from its group embeddings; with ``loss.matryoshka_dims``
    the weighted sum over the truncated sizes (:func:`losses.matryoshka`).

    Truncation happens here, on the embeddings handed in (under GradCache: the cached
    full-size ones), so the chunked backward stays exact.
    """
    if not cfg.matryoshka_dims:
        return kind_loss(batch, emb, cfg, gather)
    full = emb["q"].shape[-1]
    plan = losses.matryoshka_plan(cfg.matryoshka_dims, cfg.matryoshka_weights, full)
    return losses.matryoshka(lambda e: kind_loss(batch, e, cfg, gather), emb, plan)


def kind_loss(batch: TextBatch, emb: dict[str, torch.Tensor], cfg: LossSettings,
              gather: losses.Gather = losses.identity) -> torch.Tensor:
    """The loss of the batch's kind, from its group embeddings (one embedding size)."""
    q, pos = emb["q"], emb["pos"]
    dev = q.device
    k = batch.num_negatives
    neg = emb["neg"].reshape(q.shape[0], k, -1) if "neg" in emb else None
    mask = torch.tensor(batch.neg_mask, device=dev).reshape(q.shape[0], k) if batch.negatives else None
    if batch.kind == "retrieval":
        return losses.retrieval_infonce(q, pos, neg, mask, tau=cfg.temperature,
                                        query_query=cfg.query_query, gather=gather)
    if batch.kind == "pair":
        return losses.cosent(q, pos, torch.tensor(batch.scores, device=dev), scale=cfg.cosent_scale,
                             gather=gather)
    if neg is None:  # no negatives configured: candidates are the batch's positives only
        neg = q.new_zeros(q.shape[0], 0, q.shape[1])
        mask = torch.zeros(q.shape[0], 0, dtype=torch.bool, device=dev)
    return losses.classification_infonce(
        q, pos, neg, torch.tensor(batch.labels, device=dev),
        torch.tensor(batch.neg_labels, device=dev).reshape(q.shape[0], -1), mask,
        tau=cfg.temperature, gather=gather)


def _chunks(tokens: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = tokens["input_ids"].shape[0]
    return [{k: v[i:i + size] for k, v in tokens.items()} for i in range(0, n, size)]


def loss_step(embed: Embed, groups: dict[str, dict[str, torch.Tensor]],
              loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
              backward: Callable[..., Any], chunk: int | None = None, seed: int = 0) -> float:
    """Forward + backward of one batch (no optimizer step). Returns the loss value.

    ``chunk``: GradCache with that many texts per forward; None: one forward per group.
    Each forward is seeded by (seed, group, chunk) so dropout masks of the cached pass and
    the re-forward agree, and a resumed run replays the same masks.
    """
    if chunk is None:
        emb = {}
        for gi, (name, tok) in enumerate(groups.items()):
            torch.manual_seed(seed * 1000 + gi)
            emb[name] = embed(tok)
        loss = loss_fn(emb)
        backward(loss)
        return float(loss.detach())
    cached: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for gi, (name, tok) in enumerate(groups.items()):
            parts = []
            for ci, part in enumerate(_chunks(tok, chunk)):
                torch.manual_seed(seed * 1000 + gi * 100 + ci)
                parts.append(embed(part))
            cached[name] = torch.cat(parts).detach().requires_grad_(True)
    loss = loss_fn(cached)
    loss.backward()  # gradients w.r.t. the cached embeddings only (no parameters in this graph)
    for gi, (name, tok) in enumerate(groups.items()):
        grad = cached[name].grad
        for ci, part in enumerate(_chunks(tok, chunk)):
            torch.manual_seed(seed * 1000 + gi * 100 + ci)
            e = embed(part)
            backward((e * grad[ci * chunk:ci * chunk + e.shape[0]]).sum(), surrogate=True)
    return float(loss.detach())
