"""Texts -> vectors for the endpoint, without Ray or HTTP: tokenise once, check lengths,
and run length-sorted forward passes under a padded-token budget.

Each request is tokenised once in the HTTP handler (token counts for ``usage``, the length
check and the batch budget all come from that); the batch step only pads the ids. The model
runs through the same :class:`~embedforge.model.encoder.Encoder` as every other stage, with
normalisation left to the request (TEI ``normalize``, Matryoshka ``dimensions``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.encoder import Encoder, EncoderSettings, prompt_length
from .config import BatchSettings
from .protocol import InputError


@dataclass(slots=True)
class Item:
    """One tokenised text waiting for a forward pass."""

    ids: list[int]
    prompt_len: int
    enqueued: float = 0.0

    @property
    def tokens(self) -> int:
        return len(self.ids)


def load_prompts(path: str) -> dict[str, str]:
    """Named prompts of a sentence-transformers folder (``config_sentence_transformers.json``)."""
    cfg = os.path.join(path, "config_sentence_transformers.json")
    if not os.path.exists(cfg):
        return {}
    with open(cfg) as fh:
        return {str(k): str(v) for k, v in (json.load(fh).get("prompts") or {}).items()}


def load_matryoshka_dims(path: str) -> list[int] | None:
    """The sizes an embedforge export was Matryoshka-trained at (``embedforge.json``), so clients
    can pick a ``dimensions`` that keeps quality; None for plain or older exports and other
    models (any ``dimensions`` still works, just untrained)."""
    cfg = os.path.join(path, "embedforge.json")
    if not os.path.exists(cfg):
        return None
    with open(cfg) as fh:
        dims = json.load(fh).get("matryoshka_dims")
    return [int(d) for d in dims] if dims else None


def plan_forwards(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped into forward passes: longest first, each pass's padded size
    (count × longest) within ``max_tokens`` (a text longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    passes: list[list[int]] = []
    for i in order:
        if passes and (len(passes[-1]) + 1) * lengths[passes[-1][0]] <= max_tokens:
            passes[-1].append(i)
        else:
            passes.append([i])
    return passes


class EmbeddingEngine:
    def __init__(self, settings: EncoderSettings, batch: BatchSettings | None = None):
        self.batch = batch or BatchSettings()
        self.normalize = settings.normalize
        self.encoder = Encoder(settings.model_copy(update={"normalize": False}))
        self.tokenizer = self.encoder.tokenizer
        self.max_length = self.encoder.max_length
        self.dim = self.encoder.dim
        self.prompts = load_prompts(settings.model)
        self.matryoshka_dims = load_matryoshka_dims(settings.model)
        self._special = set(self.tokenizer.all_special_ids)

    def prompt(self, name: str | None, param: str = "prompt_name") -> str:
        if name is None:
            return ""
        if name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise InputError(422, f"{param}: unknown prompt {name!r} (this model has: {known})",
                             param=param)
        return self.prompts[name]

    def tokenize(self, texts: list[str], prompt: str = "", truncate: bool = False,
                 param: str = "input", left: bool = False, budget: int | None = None,
                 slice_size: int = 64) -> list[Item]:
        """Items for ``prompt + text``; too long without ``truncate`` -> 413 naming the text.

        ``budget``: tokens the whole request may hold after truncation; more is a 413 as soon
        as the running count passes it. Texts are tokenised ``slice_size`` at a time, so a
        request of 2,048 texts x 8,192 tokens never holds all its untruncated ids at once,
        and one over budget stops being tokenised where it crosses the limit.
        """
        plen = prompt_length(self.tokenizer, prompt)
        items: list[Item] = []
        total = 0
        for start in range(0, len(texts), slice_size):
            ids = self.tokenizer([prompt + t for t in texts[start:start + slice_size]],
                                 truncation=False, verbose=False, return_attention_mask=False,
                                 return_token_type_ids=False)["input_ids"]
            for i, seq in enumerate(ids, start=start):
                if len(seq) > self.max_length:
                    if not truncate:
                        raise InputError(413, f"{param}[{i}]: {len(seq)} tokens, more than the "
                                              f"model's limit of {self.max_length} (send "
                                              "truncate: true to cut it)", param=f"{param}[{i}]")
                    seq = self._cut(seq, plen, left)
                total += len(seq)
                if budget is not None and total > budget:
                    raise InputError(413, f"{param}: more than {budget} tokens in one request "
                                          f"({total} counted up to {param}[{i}] of {len(texts)}, "
                                          "after truncation); send fewer or shorter texts per "
                                          "request", param=param)
                items.append(Item(seq, plen))
        return items

    def _cut(self, seq: list[int], plen: int, left: bool) -> list[int]:
        """Keep leading/trailing special tokens; drop text from the right (or the left, after
        the prompt)."""
        head = 0
        while head < len(seq) and seq[head] in self._special:
            head += 1
        tail = 0
        while tail < len(seq) - head and seq[-1 - tail] in self._special:
            tail += 1
        keep = self.max_length - head - tail
        body = seq[head:len(seq) - tail]
        if left:
            p = max(0, min(plen - head, keep))
            body = body[:p] + body[len(body) - (keep - p):] if keep > p else body[:keep]
        else:
            body = body[:keep]
        return seq[:head] + body + seq[len(seq) - tail:]

    def forward(self, items: list[Item]) -> np.ndarray:
        """Raw (un-normalised) vectors of ``items``, in their order."""
        import torch

        out = np.zeros((len(items), self.dim), dtype=np.float32)
        passes = plan_forwards([it.tokens for it in items], self.batch.max_forward_tokens)
        with torch.inference_mode():
            for idx in passes:
                enc = self.tokenizer.pad({"input_ids": [items[i].ids for i in idx]},
                                         return_tensors="pt")
                enc = {"input_ids": enc["input_ids"].to(self.encoder.device),
                       "attention_mask": enc["attention_mask"].to(self.encoder.device),
                       "prompt_lengths": torch.tensor([items[i].prompt_len for i in idx],
                                                      device=self.encoder.device)}
                out[idx] = self.encoder.embed(enc).float().cpu().numpy()
        return out

    def info(self) -> dict[str, Any]:
        return {"dim": self.dim, "max_length": self.max_length, "pooling": self.encoder.pooling,
                "include_prompt": self.encoder.include_prompt, "normalize": self.normalize,
                "prompts": self.prompts, "matryoshka_dims": self.matryoshka_dims}
