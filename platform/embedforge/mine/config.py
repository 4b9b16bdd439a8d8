"""Config of `jobs/mine.py`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import JobConfig
from ..model.encoder import EncoderSettings
from ..safety import FORCE_HELP, path_field
from .select import SelectionSettings


class MineConfig(JobConfig):
    """Fill `negatives` of retrieval samples with mined hard negatives (faiss, sharded on Ray).

    Existing negatives (e.g. from synthesize) are re-scored and kept unless they score above
    the positive-aware threshold; mined ones fill up to K. Writes samples/, audit/,
    summary.json and a score histogram (audit.png).
    """

    input: str = path_field("input", description="folder with unified samples (samples/*.parquet)")
    output: str = path_field("output", description="output folder")
    force: bool = Field(False, description=FORCE_HELP)
    corpus: str | None = path_field(
        "input", None, description="BEIR folder, samples folder, or .jsonl/.parquet with `text` "
                          "(default: the positives and negatives of --input)")
    encoder: EncoderSettings = Field(description="the retriever used to mine")
    rescore: EncoderSettings | None = Field(
        None, description="optional second embedding model whose scores decide the margin "
                          "(ranks still come from --encoder), e.g. --rescore.model PATH")
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    num_shards: int = Field(1, ge=1, description="index shards (one actor each, spread over nodes)")
    index: Literal["auto", "flat", "ivf"] = Field("auto", description="faiss index type")
    ivf_threshold: int = Field(200_000, ge=1, description="auto: IVF from this many vectors per shard")
    pq_m: int | None = Field(None, description="IVF-PQ sub-quantisers (memory), none = IVF-Flat")
    nprobe: int = Field(32, ge=1, description="IVF lists probed per query")
    embed_actors: int = Field(1, ge=1, description="embedding actors (one per GPU on GPU nodes)")
    use_gpu: Literal["auto", "yes", "no"] = Field("auto", description="GPUs for embedding and faiss")
    query_batch: int = Field(1024, ge=1, description="queries per search call")
    mine_actors: int = Field(1, ge=1, description="actors running search + selection over sample "
                                                  "partitions (each holds one partition at a time)")
    partition_rows: int = Field(8192, ge=1, description="at most this many samples per partition")
    partition_mb: int = Field(64, ge=1, description="at most this many MB of samples per partition")
    instruction: bool = Field(True, description="format queries with their dataset instruction")
    cache: str | None = path_field("store", None, description="embedding cache folder (default OUTPUT/_embeddings)")
    cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="stored vector dtype (float16 halves the cache; part of its key)")
    ray_address: str | None = Field(None, description="Ray cluster (default: RAY_ADDRESS, else local)")
    num_cpus: int | None = Field(None, description="CPUs of the local cluster when one is started")
