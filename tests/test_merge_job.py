"""jobs/merge.py on real tiny exports: interpolation endpoints, checkpoint averaging, safety.

Two randomly initialised 2-layer Qwen2 backbones are exported with train/export.py (the same
function the train stage uses), merged by the job, and loaded back with sentence-transformers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedforge.config import ConfigError, parse_config
from embedforge.train.merge_job import MergeConfig

ROOT = Path(__file__).resolve().parents[1]
JOB = str(ROOT / "jobs" / "merge.py")
TEXTS = ["a short query", "another, somewhat longer document about banks"]


@pytest.fixture(scope="module")
def job():
    loader = importlib.util.spec_from_file_location("ef_job_merge", JOB)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def _settings(path: str):
    from embedforge.train.config import ModelSettings

    return ModelSettings(model=path, pooling="last_token", bidirectional=True,
                         query_max_length=32, passage_max_length=32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[str, str, str]:
    """(tiny backbone folder, export a, export b): same architecture, different weights."""
    from embedforge.testing.models import build_tiny_qwen2
    from embedforge.train.export import export_model
    from embedforge.train.model import build_model

    root = tmp_path_factory.mktemp("merge")
    out = []
    for seed in (0, 1):
        tiny = build_tiny_qwen2(str(root / f"tiny{seed}"), seed=seed)
        model, tok = build_model(_settings(tiny))
        out.append(export_model(model, tok, _settings(tiny), str(root / f"export{seed}"),
                                "Find the answer"))
    return str(root / "tiny0"), out[0], out[1]


def _encode(folder: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu").encode(TEXTS, convert_to_numpy=True)


@pytest.mark.parametrize("method", ["slerp", "linear"])
def test_interpolation_endpoints_and_midpoint_load_in_sentence_transformers(
        job, exports, tmp_path, method):
    import numpy as np

    _, a, b = exports
    ea, eb = _encode(a), _encode(b)
    got = {}
    for t in (0.0, 0.5, 1.0):
        out = str(tmp_path / f"m{t}")
        assert job.main(["--method", method, "--a", a, "--b", b, "--t", str(t),
                         "--output", out]) == 0
        got[t] = _encode(out)
        rec = json.loads(Path(out, "merge.json").read_text())
        assert (rec["method"], rec["t"]) == (method, t)
        assert json.loads(Path(out, ".embedforge-owner.json").read_text())["stage"] == "merge"
    np.testing.assert_array_equal(got[0.0], ea)
    np.testing.assert_array_equal(got[1.0], eb)
    assert not np.allclose(got[0.5], ea, atol=1e-4) and not np.allclose(got[0.5], eb, atol=1e-4)
    # b's folder is kept apart from the weights: prompts and pooling come through
    assert Path(tmp_path / "m0.5" / "embedforge.json").read_text() == Path(b, "embedforge.json").read_text()


def test_output_safety_and_bad_inputs(job, exports, tmp_path):
    tiny, a, b = exports
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    args = ["--method", "linear", "--a", a, "--b", b]
    with pytest.raises(ConfigError, match=r"no \.embedforge-owner\.json marker"):
        job.main([*args, "--output", str(user)])
    assert (user / "notes.txt").read_text() == "keep me"
    assert job.main([*args, "--output", str(user), "--force"]) == 0  # taken over on request
    with pytest.raises(ConfigError, match=r"is --a .*delete its own input"):
        job.main([*args, "--output", a])
    with pytest.raises(ConfigError, match="is not an exported model"):
        job.main(["--method", "slerp", "--a", tiny, "--b", b, "--output", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="takes --a and --b"):
        parse_config(MergeConfig, ["--method", "slerp", "--a", a, "--output", "o"])
    with pytest.raises(ConfigError, match="takes --stage"):
        parse_config(MergeConfig, ["--method", "average", "--a", a, "--b", b, "--output", "o"])


def test_mismatched_models_are_one_error_line(exports, tmp_path):
    """A model of another shape: exit 2 and one `error:` line naming the key."""
    from embedforge.testing.models import build_tiny_qwen2
    from embedforge.train.export import export_model
    from embedforge.train.model import build_model

    _, a, _ = exports
    wide = build_tiny_qwen2(str(tmp_path / "wide"), hidden_size=128)
    model, tok = build_model(_settings(wide))
    other = export_model(model, tok, _settings(wide), str(tmp_path / "wide-export"))
    res = subprocess.run([sys.executable, JOB, "--method", "slerp", "--a", a, "--b", other,
                          "--output", str(tmp_path / "o")], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
    assert res.returncode == 2, res.stderr[-2000:]
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("error: --a ") and "do not merge: key " in last and "shape" in last
    assert "Traceback" not in res.stderr


def test_average_of_stage_checkpoints_exports_the_mean(job, exports, tmp_path):
    """A train stage folder as jobs/train.py leaves it (config.json record, Ray checkpoint
    folders with a ZeRO-0 DeepSpeed tag): the last two of three checkpoints are averaged."""
    import torch
    from safetensors.torch import load_file

    from embedforge.train.export import export_model, load_trained
    from embedforge.train.model import build_model

    tiny, _, _ = exports
    settings = _settings(tiny)
    base = build_model(settings)[0].state_dict()
    stage = tmp_path / "stage1"
    states = []
    for i, stamp in enumerate(["2026-11-30_10-00-00.000001", "2026-11-30_10-00-05.000001",
                               "2026-11-30_10-00-10.000001"]):
        state = {k: v + 0.01 * (i + 1) if v.is_floating_point() else v for k, v in base.items()}
        ckpt = stage / "ray" / "stage1" / f"checkpoint_{stamp}" / "ckpt"
        ckpt.mkdir(parents=True)
        torch.save({"module": state}, ckpt / "mp_rank_00_model_states.pt")
        states.append(state)
    (stage / "config.json").write_text(json.dumps({
        "key": "x", "init": {"path": tiny, "files": None}, "inputs": {},
        "config": {"model": settings.model_dump(mode="json"), "deepspeed": {"zero_stage": 0}}}))
    out = tmp_path / "avg"
    assert job.main(["--method", "average", "--stage", str(stage), "--checkpoints", "2",
                     "--output", str(out)]) == 0
    rec = json.loads((out / "merge.json").read_text())
    assert [os.path.basename(c) for c in rec["checkpoints"]] == [
        "checkpoint_2026-11-30_10-00-05.000001", "checkpoint_2026-11-30_10-00-10.000001"]
    mean = {k: (states[1][k] + states[2][k]) / 2 if v.is_floating_point() else v
            for k, v in base.items()}
    model, tok = load_trained(settings, tiny, mean)
    want = export_model(model, tok, settings, str(tmp_path / "want"))
    got_w, want_w = load_file(out / "model.safetensors"), load_file(Path(want) / "model.safetensors")
    assert got_w.keys() == want_w.keys()
    for k in got_w:
        torch.testing.assert_close(got_w[k], want_w[k], rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="keeps 3 checkpoint"):
        job.main(["--method", "average", "--stage", str(stage), "--checkpoints", "4",
                  "--output", str(tmp_path / "avg4")])
