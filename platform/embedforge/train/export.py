"""Checkpoint -> a folder that sentence-transformers, transformers and our Encoder all load.

The export is a plain sentence-transformers folder: HF weights + tokenizer at the root, then
Pooling (the trained mode, and whether instruction tokens are pooled) and Normalize modules,
``max_seq_length``, and the query/document prompts in ``config_sentence_transformers.json``.
A Matryoshka-trained model lists its trained sizes in ``embedforge.json`` (``matryoshka_dims``,
full size included; null otherwise). sentence-transformers has no field for a list of supported
sizes (its ``truncate_dim`` config key would truncate every encode by default), so ST users pick
one with ``SentenceTransformer(path, truncate_dim=128)``.
Bidirectional decoders carry ``is_causal: false`` in ``config.json``, so they load
bidirectional anywhere.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any

from ..instructions import format_instruction
from ..safety import publish, staging
from .config import ModelSettings
from .model import EmbeddingModel, build_model

ST_POOLING = {"mean": "mean", "cls": "cls", "last_token": "lasttoken"}
# Plain text in, token states out. Without it sentence-transformers renders the input of any
# backbone whose tokenizer has a chat template (Qwen) through that template: other tokens than
# the model was trained on, and no prompt-length tracking.
TEXT_ONLY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}


def consolidated_state_dict(ckpt_dir: str, zero_stage: int, tag: str = "ckpt") -> dict[str, Any]:
    """fp32 weights of the whole model from a DeepSpeed checkpoint (ZeRO partitions merged)."""
    import torch

    if zero_stage == 0:
        (path,) = glob.glob(os.path.join(ckpt_dir, tag, "mp_rank_00_model_states.pt"))
        # weights_only: the checkpoint sits on a shared, writable volume; an unpickler that
        # may run code would turn write access to it into code execution on this node
        return torch.load(path, map_location="cpu", weights_only=True)["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)


def load_trained(settings: ModelSettings, init_path: str, state: dict[str, Any]) -> tuple[EmbeddingModel, Any]:
    model, tok = build_model(settings, init_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if "lora_" not in k or settings.lora.enabled]
    if real_missing or unexpected:
        raise RuntimeError(f"checkpoint does not fit the model: missing {real_missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model, tok


def trained_dims(matryoshka_dims: list[int] | None, full: int) -> list[int] | None:
    """The sizes a Matryoshka run trained, full size last; None for a plain run."""
    if not matryoshka_dims:
        return None
    return matryoshka_dims if matryoshka_dims[-1] == full else [*matryoshka_dims, full]


def export_model(model: EmbeddingModel, tokenizer: Any, settings: ModelSettings, out_dir: str,
                 query_instruction: str | None = None,
                 matryoshka_dims: list[int] | None = None) -> str:
    """Write the export into ``out_dir``; returns it. ``matryoshka_dims``: the configured
    ``loss.matryoshka_dims`` (the full size is added when missing).

    Built in a staging folder, then published file by file: only the names an export writes
    are replaced (:func:`safety.publish`), never the whole folder, which may be a merge
    ``--output`` holding a user's files."""
    with staging(out_dir) as tmp:
        _write_export(model, tokenizer, settings, tmp, query_instruction, matryoshka_dims)
        publish(tmp, out_dir)
    return out_dir


def _write_export(model: EmbeddingModel, tokenizer: Any, settings: ModelSettings, tmp: str,
                  query_instruction: str | None, matryoshka_dims: list[int] | None) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    backbone = model.backbone
    if settings.lora.enabled:
        backbone.save_pretrained(os.path.join(tmp, "adapter"))  # the adapter alone, for PEFT users
        if not settings.lora.merge_on_export:
            return
        backbone = backbone.merge_and_unload()
    hf = os.path.join(tmp, "hf")
    backbone.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    modules = [Transformer(hf, max_seq_length=settings.passage_max_length,
                           modality_config=TEXT_ONLY, module_output_name="token_embeddings"),
               Pooling(int(backbone.config.hidden_size), pooling_mode=ST_POOLING[model.pooling],
                       include_prompt=model.include_prompt)]
    if settings.normalize:
        modules.append(Normalize())
    prompts = {"query": format_instruction(query_instruction) if query_instruction else "",
               "document": ""}
    st = SentenceTransformer(modules=modules, prompts=prompts, similarity_fn_name="cosine", device="cpu")
    st.save(os.path.join(tmp, "st"))
    for name in os.listdir(os.path.join(tmp, "st")):
        shutil.move(os.path.join(tmp, "st", name), os.path.join(tmp, name))
    shutil.rmtree(os.path.join(tmp, "st"))
    shutil.rmtree(hf)
    with open(os.path.join(tmp, "embedforge.json"), "w") as fh:
        json.dump({"pooling": model.pooling, "include_prompt": model.include_prompt,
                   "normalize": settings.normalize,
                   "bidirectional": settings.bidirectional,
                   "query_max_length": settings.query_max_length,
                   "passage_max_length": settings.passage_max_length,
                   "prompt_template": "Instruct: {task}\\nQuery: ", "prompts": prompts,
                   "matryoshka_dims": trained_dims(matryoshka_dims,
                                                   int(backbone.config.hidden_size))}, fh, indent=2)


def export_checkpoint(ckpt_dir: str, settings: ModelSettings, init_path: str, zero_stage: int,
                      out_dir: str, query_instruction: str | None = None,
                      matryoshka_dims: list[int] | None = None) -> str:
    state = consolidated_state_dict(ckpt_dir, zero_stage)
    model, tok = load_trained(settings, init_path, state)
    return export_model(model, tok, settings, out_dir, query_instruction, matryoshka_dims)
