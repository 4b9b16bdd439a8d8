"""The per-worker training loop (runs inside Ray Train workers) and its DeepSpeed config."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import tempfile
import time
from typing import Any

from .config import TrainConfig


def deepspeed_config(cfg: TrainConfig, use_gpu: bool, micro_batch: int) -> dict[str, Any]:
    """DeepSpeed config of a stage. CPU runs use the settings verified on gloo (../NOTES)."""
    prec = cfg.deepspeed.precision
    if prec == "auto":
        prec = "bf16" if use_gpu else "fp32"
    zero: dict[str, Any] = {"stage": cfg.deepspeed.zero_stage}
    if cfg.deepspeed.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if not use_gpu:  # small CPU models: partition everything, small buckets
            zero.update(stage3_param_persistence_threshold=0, reduce_bucket_size=5e5)
    if cfg.deepspeed.offload_optimizer and cfg.deepspeed.zero_stage:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.deepspeed.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": prec == "bf16"},
        "fp16": {"enabled": prec == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _merge(conf, cfg.deepspeed.overrides)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def lr_lambda(warmup: int, total: int, kind: str):
    import math

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - frac if kind == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return f


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the DeepSpeed engine, resume, train the stage's steps."""
    import ray.train
    import torch
    import torch.distributed as dist

    from .. import metrics, tracking
    from .data import TrainData, stage_plan
    from .losses import gather_all
    from .model import batch_groups, batch_loss, build_model, loss_step
    from .sampler import rank_slice

    cfg = TrainConfig.model_validate(config["cfg"])
    n = int(config["stage"])
    st = cfg.stage1 if n == 1 else cfg.stage2
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.threads_per_worker or max(1, int(cfg.cpus_per_worker)))
    # the CPU accelerator JIT-builds a shared-memory op on every init (minutes); gloo needs none
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    use_gpu = bool(config["use_gpu"]) and torch.cuda.is_available()
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    ds = deepspeed_config(cfg, use_gpu, max(1, cfg.batch_size.retrieval // world))
    keep_alive = HfDeepSpeedConfig(ds) if cfg.deepspeed.zero_stage == 3 else None  # noqa: F841
    # every rank (and every re-run) must create new weights (LoRA A, fresh heads) identically
    torch.manual_seed(cfg.seed)
    model, tokenizer = build_model(cfg.model, config["init"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=st.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(st.warmup_steps, st.steps, cfg.scheduler))
    engine, _, _, sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds)

    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            _, client = engine.load_checkpoint(d, tag="ckpt")
            start = int(client["step"])
    data = TrainData(config["data_dir"], config["manifest"], cfg.loss.num_negatives, cfg.seed)
    plan = stage_plan(cfg, n, data, config["decisions"])
    log_path = config.get("metrics_log")
    run = tracking.attach(config.get("tracking")) if rank == 0 else tracking.NULL
    if rank == 0:
        _truncate_history(log_path, start)
    if rank == 0:
        print(f"[train] stage {n}: {world} worker(s), steps {start}->{st.steps}, datasets "
              + ", ".join(f"{d.name}({d.kind}, {d.size})" for d in data.infos), flush=True)

    def backward(loss: torch.Tensor, surrogate: bool = False) -> None:
        engine.backward(loss, scale_wrt_gas=not surrogate)

    kill_at = config.get("kill_at_step")
    window = {"examples": 0, "tokens": 0, "t": time.perf_counter()}
    last: dict[str, Any] = {}
    for step in range(start, st.steps):
        if kill_at is not None and rank == world - 1 and step == kill_at:
            marker = config["kill_marker"]
            if not os.path.exists(marker):  # fault injection for tests: die once, hard
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        d, rows = plan.batch(step)
        batch = data.batch(d, rank_slice(rows, rank, world), step)
        groups = batch_groups(batch, tokenizer, cfg.model, device)
        loss = loss_step(lambda tok: engine(**tok), groups,
                         lambda emb, b=batch: batch_loss(b, emb, cfg.loss, gather_all),
                         backward, cfg.grad_cache_chunk, seed=cfg.seed * 1_000_003 + step)
        if config.get("probe_dir") and step == start:
            _probe(engine, config["probe_dir"], rank, before_step=True)
        engine.step()
        if config.get("probe_dir") and step == start:
            _probe(engine, config["probe_dir"], rank, before_step=False)
        window["examples"] += len(rows)
        window["tokens"] += sum(int(g["attention_mask"].sum()) for g in groups.values())
        done = step + 1
        is_log = done % cfg.log_every == 0 or done == st.steps
        is_ckpt = done % cfg.checkpoint_every == 0 or done == st.steps
        if not (is_log or is_ckpt):
            continue
        stats = torch.tensor([loss, float(window["tokens"])], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(stats)
        elapsed = max(time.perf_counter() - window["t"], 1e-9)
        last = {"stage": n, "step": done, "loss": round(float(stats[0]) / world, 6),
                "task": batch.kind, "dataset": batch.dataset, "lr": sched.get_last_lr()[0],
                "examples_per_s": round(window["examples"] / elapsed, 2),
                "tokens_per_s": round(float(stats[1]) / elapsed, 1),
                "epochs": plan.epochs_at(done)}
        if rank == 0:
            _append_history(log_path, last)
            _record(last, metrics, window["examples"], int(stats[1]))
            run.log_metrics(tracking.train_metrics(last), step=done)
            print(f"[train] stage {n} step {done}/{st.steps} loss {last['loss']:.4f} ({batch.kind}:"
                  f"{batch.dataset}) lr {last['lr']:.2e} {last['examples_per_s']} ex/s "
                  f"{last['tokens_per_s']:.0f} tok/s", flush=True)
        window = {"examples": 0, "tokens": 0, "t": time.perf_counter()}
        if is_ckpt:
            with tempfile.TemporaryDirectory() as tmp:
                engine.save_checkpoint(tmp, tag="ckpt", client_state={"step": done})
                ray.train.report({k: v for k, v in last.items() if k != "epochs"},
                                 checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _probe(engine: Any, out: str, rank: int, before_step: bool) -> None:
    """Test hook: full gradients of the first step and the bytes this rank holds under ZeRO.

    ``safe_get_full_grad`` gathers partitions (a collective): every rank calls it.
    """
    import torch
    from deepspeed.utils import safe_get_full_grad

    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    path = os.path.join(out, f"rank{rank}.pt")
    if before_step:
        grads = {n: safe_get_full_grad(p).detach().clone() for n, p in named}
        sizes = {"param_elems_local": sum(int(getattr(p, "ds_tensor", p).numel()) for _, p in named),
                 "param_elems_total": sum(int(getattr(p, "ds_numel", p.numel())) for _, p in named)}
        torch.save({"grads": grads if rank == 0 else {}, **sizes}, path)
        return
    state = engine.optimizer.optimizer.state if hasattr(engine.optimizer, "optimizer") else engine.optimizer.state
    opt_bytes = sum(v.numel() * v.element_size() for st in state.values() for v in st.values()
                    if torch.is_tensor(v) and v.dim() > 0)
    data = torch.load(path, weights_only=True)
    data["optimizer_state_bytes"] = int(opt_bytes)
    torch.save(data, path)


def _record(row: dict[str, Any], metrics: Any, examples: int, tokens: int) -> None:
    with contextlib.suppress(Exception):  # metrics must never stop training
        tags = {"stage": str(row["stage"])}
        metrics.set_gauge("embedforge_train_loss", row["loss"], {**tags, "task": row["task"],
                                                                 "dataset": row["dataset"]})
        metrics.set_gauge("embedforge_train_lr", row["lr"], tags)
        metrics.set_gauge("embedforge_train_examples_per_second", row["examples_per_s"], tags)
        metrics.set_gauge("embedforge_train_tokens_per_second", row["tokens_per_s"], tags)
        metrics.inc("embedforge_train_examples_total", examples, tags)
        metrics.inc("embedforge_train_tokens_total", tokens, tags)
        metrics.set_gauge("embedforge_train_step", row["step"], tags)


def _truncate_history(path: str | None, start: int) -> None:
    """Keep the progress rows up to the resumed step (this attempt replays the rest).

    Rows are appended one per log step; a line cut short by a killed worker is dropped here.
    """
    if not path or not os.path.exists(path):
        return
    rows = []
    with open(path) as fh:
        for line in fh:
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if row["step"] <= start:
                    rows.append(row)
    fd, tmp = tempfile.mkstemp(prefix=".metrics-", dir=os.path.dirname(path))  # a name we own
    with os.fdopen(fd, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def _append_history(path: str | None, row: dict[str, Any]) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
