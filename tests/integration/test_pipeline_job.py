"""The pipeline end to end on the project's sample data (real Ray, DeepSpeed, mteb, Serve),
then its skip/resume logic: a re-run skips everything, a changed train config re-runs
training and what follows it, nothing before."""

from __future__ import annotations

import importlib.util
import json

import pytest

from embedforge.pipeline.config import PipelineConfig
from embedforge.pipeline.run import run_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def config(out: str, **over) -> PipelineConfig:
    data = {
        "output": out, "num_cpus": 3,
        "stages": ["prepare", "synthesize", "mine", "train1", "train2", "evaluate", "serve"],
        "prepare": {"config": "jobs/configs/prepare-sample.yaml"},
        # the embedded default LLM (SmolLM2-135M on the transformers engine), a few requests
        "synthesize": {"datasets": ["intents"], "limit": 2, "techniques": ["paraphrase"],
                       "rules": {"max_retries_per_sample": 1, "paraphrase_length_tolerance": 0.9},
                       "llm": {"max_tokens": 32, "extra_body": {"repetition_penalty": 1.15}}},
        "mine": {"selection": {"rank_range": [2, 12], "num_negatives": 2}},
        "train": {"config": "jobs/configs/local-cpu.yaml",
                  "stage1": {"steps": 2, "warmup_steps": 0},
                  "stage2": {"steps": 2, "warmup_steps": 0},
                  "batch_size": {"retrieval": 8, "pair": 8, "classification": 8}, "num_workers": 1,
                  "deepspeed": {"zero_stage": 0}, "checkpoint_every": 2, "log_every": 1},
        "evaluate": {"tasks": ["sts=sts:platform/embedforge/sample_data/eval/sts-test.tsv",
                               "articles=beir:platform/embedforge/sample_data/eval/articles:test"],
                     "on_regression": "warn"},
        "serve": {"queries": ["how do bees find flowers"], "top_k": 2},
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return PipelineConfig.model_validate(data)


@pytest.fixture(autouse=True)
def _no_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()


def statuses(manifest) -> dict[str, str]:
    return {k: v["status"] for k, v in manifest["stages"].items()}


def mlflow_tree(out: str):
    """(client, [(pipeline run, {stage: nested run})] oldest first) from OUTPUT/mlruns, read
    through the MLflow client; None without MLflow."""
    if importlib.util.find_spec("mlflow") is None:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file://{out}/mlruns")
    found = client.search_runs([client.get_experiment_by_name("embedforge").experiment_id])
    parents = sorted((r for r in found if r.info.run_name == "pipeline"),
                     key=lambda r: r.info.start_time)
    return client, [(p, {r.info.run_name: r for r in found
                         if r.data.tags.get("mlflow.parentRunId") == p.info.run_id})
                    for p in parents]


def test_pipeline_runs_every_stage_then_skips_and_reruns_only_what_changed(tmp_path):
    out = str(tmp_path / "run")
    logs: list[str] = []
    first = run_pipeline(config(out), log=logs.append)
    everything = ("prepare", "synthesize", "mine", "train1", "train2", "evaluate", "serve")
    assert statuses(first) == {s: "ran" for s in everything}
    assert first["status"] == "finished"
    st = first["stages"]
    assert st["prepare"]["summary"]["samples"] == 281
    assert st["synthesize"]["summary"]["llm_calls"] >= 2
    synth = json.loads((tmp_path / "run" / "synth" / "summary.json").read_text())
    assert any("[llm] transformers ready" in line for line in logs)  # the default engine
    assert synth["llm"]["ok"] >= 2 and synth["llm"]["failed"] == 0  # real answers, each valid JSON
    assert not {"paraphrase:bad_json", "paraphrase:wrong_schema"} & set(synth["rejections_by_reason"])
    assert st["train2"]["summary"]["steps"] == 2
    assert {d["kind"] for d in st["train2"]["summary"]["datasets"]} == \
        {"retrieval", "pair", "classification"}
    assert st["mine"]["summary"]["negatives_kept"] > 0
    assert st["train1"]["summary"]["steps"] == 2
    ev = st["evaluate"]["summary"]
    assert set(ev["before"]) == set(ev["after"]) == {"sts", "articles"}
    assert all(0 < v <= 1 for v in ev["after"].values())
    hits = st["serve"]["summary"]["results"]["how do bees find flowers"]
    assert len(hits) == 2 and "bee" in hits[0]["document"].lower()  # a real search, top hit on topic
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert on_disk["versions"]["packages"]["ray"] and on_disk["status"] == "finished"
    assert on_disk["stages"]["train1"]["config"]["stage1"]["inputs"] == [f"{out}/mined"]
    assert any("stage" in line and "highlights" in line for line in logs)  # the summary table
    tree = mlflow_tree(out)
    if tree is not None:  # one parent run, a nested run per stage, read back from the store
        client, [(parent, stages)] = tree
        assert parent.info.status == "FINISHED" and parent.data.params["output"] == out
        assert "manifest.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert set(stages) == set(everything)
        assert {r.data.tags["embedforge.status"] for r in stages.values()} == {"ran"}
        assert stages["prepare"].data.metrics["summary/samples"] == 281
        t1 = stages["train1"]  # rank 0's progress, logged into the stage's run by id
        assert [m.step for m in client.get_metric_history(t1.info.run_id, "loss")] == [1, 2]
        assert {"lr", "examples_per_s", "loss_by_task/retrieval"} <= set(t1.data.metrics)
        assert t1.data.params["stage1.steps"] == "2"
        assert not client.list_artifacts(t1.info.run_id, "model")  # only the final export
        model = {a.path for a in client.list_artifacts(stages["train2"].info.run_id, "model")}
        assert "model/modules.json" in model and "model/config.json" in model
        e = stages["evaluate"].data
        assert e.metrics["score/sts"] == pytest.approx(ev["after"]["sts"])
        assert e.metrics["summary/before/sts"] == pytest.approx(ev["before"]["sts"])
        assert "report.md" in {a.path for a in client.list_artifacts(stages["evaluate"].info.run_id)}

    no_serve = [s for s in everything if s != "serve"]
    again = run_pipeline(config(out, stages=no_serve), log=lambda _m: None)
    assert statuses(again) == {s: "skipped" for s in no_serve}
    tree = mlflow_tree(out)
    if tree is not None:  # a second parent run whose stages are recorded as skipped
        _, [_, (_, stages)] = tree
        assert {k: r.data.tags["embedforge.status"] for k, r in stages.items()} == \
            statuses(again)

    changed = run_pipeline(config(out, stages=no_serve,
                                  train={"stage1": {"steps": 3, "warmup_steps": 0}}),
                           log=lambda _m: None)
    assert statuses(changed) == {"prepare": "skipped", "synthesize": "skipped", "mine": "skipped",
                                 "train1": "ran", "train2": "ran", "evaluate": "ran"}
    assert changed["stages"]["train1"]["summary"]["steps"] == 3


def test_a_failing_stage_is_recorded_and_earlier_work_kept(tmp_path):
    out = str(tmp_path / "run")
    bad = config(out, stages=["prepare", "mine"], mine={"corpus": "/nonexistent/corpus.jsonl"})
    with pytest.raises(Exception, match="nonexistent"):
        run_pipeline(bad, log=lambda _m: None)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["stages"]["prepare"]["status"] == "ran"
    assert manifest["stages"]["mine"]["status"] == "failed"
    assert "nonexistent" in manifest["stages"]["mine"]["error"]
    tree = mlflow_tree(out)
    if tree is not None:
        _, [(parent, stages)] = tree
        assert parent.info.status == "FAILED" and stages["mine"].info.status == "FAILED"
        assert "nonexistent" in stages["mine"].data.tags["embedforge.error"]
    # evaluating before anything was trained: a config mistake, recorded the same way
    with pytest.raises(Exception, match="no trained model"):
        run_pipeline(config(out, stages=["evaluate"]), log=lambda _m: None)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["evaluate"]["status"] == "failed"
    redo = run_pipeline(config(out, stages=["prepare"]), log=lambda _m: None)
    assert statuses(redo) == {"prepare": "skipped"}
