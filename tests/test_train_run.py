"""What a train stage's resume depends on (no Ray): the recorded config, init model and inputs."""

from __future__ import annotations

import os

import pytest

from embedforge import io as eio
from embedforge.schema import rows_to_table
from embedforge.train.config import TrainConfig
from embedforge.train.run import (
    RECORD,
    _stage_is_current,
    changed_parts,
    final_model_dir,
    stage_record,
)


def samples(path, n: int = 4):
    rows = [{"id": f"s{i}", "dataset": "d", "kind": "retrieval", "instruction": "find",
             "query": f"q{i}", "positive": f"p{i}", "negatives": [], "score": None, "label": None,
             "source": "original", "meta": "{}"} for i in range(n)]
    eio.write_parquet_atomic(rows_to_table(rows), str(path / "samples" / "part-0.parquet"))
    return str(path)


@pytest.fixture
def cfg(tmp_path):
    data = samples(tmp_path / "mined")
    init = tmp_path / "init"
    init.mkdir()
    (init / "model.safetensors").write_bytes(b"weights")
    return TrainConfig(output=str(tmp_path / "run"), model={"model": str(init)},
                       stage1={"inputs": [data], "steps": 10}, stage2={"inputs": [data], "steps": 5})


def test_the_key_follows_what_the_model_depends_on(cfg, tmp_path):
    key = stage_record(cfg, 1, cfg.model.model)["key"]
    assert stage_record(cfg, 1, cfg.model.model)["key"] == key
    # where and how it runs: same model
    same = cfg.model_copy(update={"num_cpus": 7, "ray_address": "ray://x:10001", "log_every": 3,
                                  "run": "1", "force": True, "max_failures": 9})
    assert stage_record(same, 1, cfg.model.model)["key"] == key
    # stage 2's section is not stage 1's business, and the other way round
    other2 = cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"lr": 1e-3})})
    assert stage_record(other2, 1, cfg.model.model)["key"] == key
    assert stage_record(other2, 2, cfg.model.model)["key"] != stage_record(cfg, 2, cfg.model.model)["key"]
    # its own recipe, its starting weights, its input files: another model
    lr = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"lr": 1e-3})})
    changed = stage_record(lr, 1, cfg.model.model)
    assert changed["key"] != key and changed_parts(stage_record(cfg, 1, cfg.model.model), changed) == ["stage1"]
    weights = tmp_path / "init" / "model.safetensors"
    before = stage_record(cfg, 1, cfg.model.model)
    weights.write_bytes(b"re-exported")
    assert changed_parts(before, stage_record(cfg, 1, cfg.model.model)) == ["init"]
    before = stage_record(cfg, 1, cfg.model.model)
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert changed_parts(before, stage_record(cfg, 1, cfg.model.model)) == ["init"]
    part = tmp_path / "mined" / "samples" / "part-0.parquet"
    st = part.stat()
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert changed_parts(before, stage_record(cfg, 1, cfg.model.model)) == ["init", "inputs"]


def test_a_stage_folder_of_another_config_is_cleared_and_its_own_kept(cfg):
    stage = os.path.join(cfg.output, "stage1")
    record = stage_record(cfg, 1, cfg.model.model)
    os.makedirs(os.path.join(stage, "model"))
    eio.write_json(record, os.path.join(stage, RECORD))
    logs: list[str] = []
    _stage_is_current(stage, record, 1, logs.append)
    assert os.path.isdir(os.path.join(stage, "model")) and logs == []
    lr = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"lr": 1e-3})})
    _stage_is_current(stage, stage_record(lr, 1, cfg.model.model), 1, logs.append)
    assert not os.path.exists(stage)
    assert "changed: stage1" in logs[0] and "starting the stage again" in logs[0]
    os.makedirs(os.path.join(stage, "model"))          # written before configs were recorded
    _stage_is_current(stage, record, 1, logs.append)
    assert not os.path.exists(stage) and "(no config recorded)" in logs[1]


def test_final_model_dir_is_the_last_stage_run(cfg):
    assert final_model_dir(cfg) == os.path.join(cfg.output, "stage2", "model")
    assert final_model_dir(cfg.model_copy(update={"run": "1"})) == os.path.join(cfg.output, "stage1", "model")


def test_a_matryoshka_dim_above_the_hidden_size_fails_before_the_cluster(tmp_path):
    """Through the job's own entry point: one ``error:``-style ConfigError, no Ray started."""
    from embedforge.config import ConfigError
    from embedforge.testing.models import build_tiny_qwen2
    from embedforge.train.run import check_matryoshka_fits, run_train

    qwen = build_tiny_qwen2(str(tmp_path / "qwen"))  # hidden size 64
    data = samples(tmp_path / "in")
    bad = TrainConfig(output=str(tmp_path / "run"), run="1", model={"model": qwen},
                      stage1={"inputs": [data]}, loss={"matryoshka_dims": [32, 128]})
    with pytest.raises(ConfigError, match=r"loss\.matryoshka_dims: 128 is larger than the model's "
                                          r"embedding size 64"):
        run_train(bad)
    assert not os.path.exists(tmp_path / "run")  # failed before claiming the output
    check_matryoshka_fits(bad.model_copy(update={"loss": bad.loss.model_copy(
        update={"matryoshka_dims": [32, 64]})}))  # the full size itself is fine
