"""Serve: an OpenAI- and TEI-compatible embedding endpoint on Ray Serve.

    python jobs/serve.py --encoder.model runs/train/model              # local, 127.0.0.1:8000
    python jobs/serve.py --config cluster/serve/serve-job.yaml --detach # on a running cluster
    serve run embedforge.serve.app:build_app encoder.model=runs/train/model
    serve deploy cluster/serve/embedforge-serve.yaml

Then: ``openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=...).embeddings.create(...)``
or ``curl -H "Authorization: Bearer KEY" -H "Content-Type: application/json" -d '{"inputs": "hello"}'
http://127.0.0.1:8000/embed`` (curl's default form content type is a 415).
API keys: comma-separated in EMBEDFORGE_API_KEYS (or --api-key-file). Without keys the endpoint
refuses to start, unless --allow-unauthenticated is given (then it warns).
"""

from __future__ import annotations

import os
import sys
import time

from embedforge.cluster import connect
from embedforge.config import ConfigError, parse_config, run_cli
from embedforge.serve.config import ServeConfig
from embedforge.serve.run import deploy, preflight


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ServeConfig, argv)
    if not (cfg.ray_address or os.environ.get("RAY_ADDRESS")):
        preflight(cfg)  # the replicas will run here: check their model and keys first
    if cfg.allow_unauthenticated:
        print(f"warning: --allow-unauthenticated: anyone who can reach {cfg.host}:{cfg.port} "
              "can use the model", file=sys.stderr, flush=True)
    with connect(cfg.ray_address, cfg.num_cpus_cluster) as ray_info:
        if cfg.detach and ray_info["started"]:
            raise ConfigError("--detach needs a running Ray cluster (RAY_ADDRESS or "
                              "--ray-address): a private local one would stop with this process")
        url = deploy(cfg)
        print(f"[serve] {cfg.encoder.model} at {url}/v1/embeddings (OpenAI) and {url}/embed (TEI)",
              flush=True)
        if cfg.detach:
            return 0
        print("[serve] Ctrl-C stops the endpoint", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
