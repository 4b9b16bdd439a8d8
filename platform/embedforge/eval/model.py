"""mteb adapter around :class:`embedforge.model.Encoder` (platform exports, any HF/ST folder).

The encoder is the one mining, training and serving use (same pooling, normalisation,
padding), so the evaluated function is the served one. Per task the adapter puts the
instruction on the sides mteb marks as queries (``prompt_type``), or on both sides for
symmetric task types, in the report's ``Instruct: {task}\\nQuery: `` format. Several GPUs in
one process get one encoder replica each; texts are dealt out by length so replicas finish
together.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from ..instructions import InstructionMap, metadata_prompt
from ..model.encoder import Encoder, EncoderSettings
from ..model.encoder import fingerprint as encoder_fingerprint

log = logging.getLogger(__name__)


GENERIC_FOLDERS = frozenset({"model", "models", "export", "final", "checkpoint", "output"})


def default_model_name(settings: EncoderSettings) -> str:
    """``embedforge/<folder>`` (mteb's result layout wants ``org/name``); a hub id stays as is.

    A generic last folder (``…/pkg/model``) is prefixed with its parent so runs stay apart.
    """
    path = settings.model
    if not os.path.exists(path) and path.count("/") == 1:
        return path
    norm = os.path.normpath(path)
    base = os.path.basename(norm) or "model"
    if base.lower() in GENERIC_FOLDERS:
        base = f"{os.path.basename(os.path.dirname(norm))}-{base}"
    return f"embedforge/{base}"


def resolve_devices(requested: Sequence[str], encoder_device: str) -> list[str]:
    """Devices to put a replica on: the request, else every visible GPU when several, else one."""
    if requested:
        return list(requested)
    if encoder_device != "auto":
        return [encoder_device]
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] if n > 1 else ["auto"]


def split_by_length(texts: Sequence[str], parts: int) -> list[list[int]]:
    """Indices dealt round-robin in length order, so every part gets long and short texts."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [order[i::parts].tolist() for i in range(parts)]


def truncate_rows(vectors: np.ndarray, dim: int) -> np.ndarray:
    """First ``dim`` components of each row, L2-renormalised: the vector a Matryoshka model's
    user gets for ``dim`` (serve ``dimensions=``, training's truncated loss terms)."""
    cut = vectors[:, :dim]
    return (cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _texts_key(prompt: str, texts: list[str]) -> str:
    h = hashlib.sha256(prompt.encode())
    for t in texts:
        h.update(b"\0" + t.encode())
    return h.hexdigest()


class MTEBEncoder(AbsEncoder):
    """What ``mteb.evaluate`` calls: ``encode(inputs, task_metadata=…, prompt_type=…)``."""

    def __init__(self, settings: EncoderSettings, instructions: InstructionMap | None = None,
                 devices: Sequence[str] = (), name: str | None = None,
                 spec_instructions: dict[str, str] | None = None):
        self.settings = settings
        self.instructions = instructions
        self.spec_instructions = dict(spec_instructions or {})
        self.devices = resolve_devices(devices, settings.device)
        self.encoders = [Encoder(settings.model_copy(update={"device": d})) for d in self.devices]
        self.model = self.encoders[0].model
        first = self.encoders[0]
        self.mteb_model_meta = ModelMeta.create_empty(overwrites=dict(
            name=name or default_model_name(settings),
            revision=encoder_fingerprint(settings),
            embed_dim=first.dim,
            max_tokens=first.max_length,
            n_parameters=int(sum(p.numel() for p in first.model.parameters())),
            similarity_fn_name=ScoringFunction.COSINE,
            use_instructions=instructions is not None,
            framework=["PyTorch"],
            reference=None,
        ))
        self.prefixes_used: dict[str, dict[str, str]] = {}
        # Matryoshka scoring: each task is scored at full size, then again per truncated size
        # from the same full vectors (cached for the current task only), not re-encoded.
        self.truncate_dim: int | None = None
        self.cache: dict[str, np.ndarray] | None = None

    def start_task(self, cache: bool) -> None:
        """Forget the previous task's vectors; cache this task's when it is scored more than once."""
        self.truncate_dim = None
        self.cache = {} if cache else None

    def prefix(self, task_metadata: Any, prompt_type: Any) -> str:
        if self.instructions is None:
            return ""
        side = prompt_type.value if prompt_type is not None else None
        name, ttype = task_metadata.name, str(task_metadata.type)
        text = self.instructions.prefix(
            name, ttype, side, spec_instruction=self.spec_instructions.get(name),
            task_prompt=metadata_prompt(task_metadata.prompt, side))
        self.prefixes_used.setdefault(name, {})[side or "both"] = text
        return text

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        prefix = self.prefix(task_metadata, prompt_type)
        texts = [str(t) for batch in inputs for t in batch["text"]]
        if self.cache is None:
            vectors = self.encode_texts(texts, prefix)
        else:
            key = _texts_key(prefix, texts)
            if key not in self.cache:
                self.cache[key] = self.encode_texts(texts, prefix)
            vectors = self.cache[key]
        return vectors if self.truncate_dim is None else truncate_rows(vectors, self.truncate_dim)

    def encode_texts(self, texts: list[str], prompt: str = "") -> np.ndarray:
        """Vectors of ``prompt + text``; the prompt stays separate so a model exported with
        ``include_prompt: false`` pools only the text's tokens, as it was trained."""
        if len(self.encoders) == 1 or len(texts) < 2 * len(self.encoders):
            return self.encoders[0].encode(texts, prompt)
        parts = split_by_length(texts, len(self.encoders))
        out = np.zeros((len(texts), self.encoders[0].dim), dtype=np.float32)
        with ThreadPoolExecutor(len(self.encoders)) as pool:
            futures = [pool.submit(enc.encode, [texts[i] for i in idx], prompt)
                       for enc, idx in zip(self.encoders, parts, strict=True)]
            for idx, fut in zip(parts, futures, strict=True):
                out[idx] = fut.result()
        return out
