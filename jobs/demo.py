"""The demo: the pipeline end to end on the bundled sample data (`make demo`).

Stages so far: prepare -> synthesize (embedded local LLM). Each later stage appends itself
here, reading the previous stage's folder, so the demo always shows every stage running for
real.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from embedforge import io as eio
from embedforge.config import parse_config, run_cli
from embedforge.prepare import PrepareConfig, run_prepare
from embedforge.prepare.stage import format_report
from embedforge.synth.config import SynthConfig
from embedforge.synth.stage import format_report as synth_report
from embedforge.synth.stage import run_synthesize

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--output", default="runs/demo", help="run folder (default: runs/demo)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    ap.add_argument("--synth-samples", type=int, default=4,
                    help="article samples the embedded LLM synthesises from (CPU decoding is slow)")
    args = ap.parse_args(argv)
    out = args.output

    print("== stage 1/2: prepare (raw sample files -> unified samples)")
    prep_argv = ["--config", str(ROOT / "jobs/configs/prepare-sample.yaml"),
                 "--output", eio.join(out, "prepared")]
    if args.num_cpus:
        prep_argv += ["--num-cpus", str(args.num_cpus)]
    cfg = parse_config(PrepareConfig, prep_argv)
    # sample paths in the config are relative to the repo root
    for src in cfg.sources:
        if not Path(src.path).is_absolute():
            src.path = str(ROOT / src.path)
    stats = run_prepare(cfg)
    print(format_report(stats))
    table = eio.read_samples(cfg.output).to_pylist()
    print("\nOne sample of each kind:")
    for kind in ("retrieval", "pair", "classification"):
        row = next(r for r in table if r["kind"] == kind)
        shown = {k: row[k] for k in ("dataset", "kind", "instruction", "query", "positive",
                                     "score", "label")}
        print(json.dumps(shown, ensure_ascii=False)[:400])
    if stats["unusable_sources"]:
        print(f"error: unusable sources: {stats['unusable_sources']}", file=sys.stderr)
        return 1

    print("\n== stage 2/2: synthesize (embedded SmolLM2-135M: paraphrases + hard negatives)")
    synth_argv = ["--input", cfg.output, "--output", eio.join(out, "synth"),
                  "--datasets", "articles", "--limit", str(args.synth_samples),
                  "--techniques", "paraphrase,hard_negative", "--rules.n-negatives", "1",
                  # a 135M model rarely meets the report's ±15%/±20% lengths: looser for the demo
                  "--rules.paraphrase-length-tolerance", "0.6",
                  "--rules.negative-length-tolerance", "0.6",
                  "--rules.max-retries-per-sample", "6", "--llm.max-tokens", "256"]
    if args.num_cpus:
        synth_argv += ["--num-cpus", str(args.num_cpus)]
    scfg = parse_config(SynthConfig, synth_argv)
    summary = run_synthesize(scfg)
    print(synth_report(summary))
    rows = eio.read_samples(scfg.output).to_pylist()
    for source in ("paraphrase", "llm_negative"):
        row = next((r for r in rows if r["source"] == source), None)
        if row is None:
            print(f"(no {source} row passed the rules this time: see {scfg.output}/errors)")
            continue
        parent = next(r for r in table if r["id"] == row["parent_id"])
        shown = ({"original_query": parent["query"], "paraphrased_query": row["query"]}
                 if source == "paraphrase" else
                 {"query": row["query"], "llm_negative": row["negatives"][-1]})
        print(json.dumps({"source": source, **shown}, ensure_ascii=False)[:500])
    print(f"\ndemo finished: {stats['total_samples']} prepared samples in {cfg.output}; "
          f"{summary['generated_rows']} LLM-generated rows in {scfg.output}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
