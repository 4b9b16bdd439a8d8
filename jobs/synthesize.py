"""Synthesize: LLM paraphrases, augmented triples and hard negatives, as a Ray Data job.

    python jobs/synthesize.py --input runs/prepared --output runs/synth \
        --llm.base-url https://api.openai.com/v1 --llm.model gpt-4o-mini --llm.rpm 500
    ray job submit --working-dir . -- python jobs/synthesize.py --config synth.yaml

Without --llm.base-url it starts the embedded local LLM (SmolLM2-135M-Instruct) and stops it
at the end. The API key is read from $OPENAI_API_KEY (or --llm.api-key-env NAME) only.
"""

from __future__ import annotations

import sys

from embedforge.config import parse_config, run_cli
from embedforge.synth.config import SynthConfig
from embedforge.synth.stage import format_report, run_synthesize


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SynthConfig, argv)
    summary = run_synthesize(cfg)
    print(format_report(summary))
    print(f"[synthesize] wrote {sum(summary['rows_by_source'].values())} rows "
          f"({summary['generated_rows']} generated) to {cfg.output} in {summary['seconds']}s")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
