"""Mining one partition against an injected store: partitioning by query changes nothing."""

from __future__ import annotations

import json
import random

import numpy as np

from embedforge.mine import index as findex
from embedforge.mine.embed import text_hash
from embedforge.mine.layout import partition_of, text_ids
from embedforge.mine.partition import StorePool, add_stats, mine_rows, partition_stats
from embedforge.mine.select import SelectionSettings
from embedforge.text import normalize


class NumpyStore:
    """The store protocol in one process: a Flat index over random unit vectors."""

    def __init__(self, corpus: list[str], extra: list[str], near: dict[str, str], dim: int = 16,
                 seed: int = 0):
        rng = np.random.default_rng(seed)
        texts = list(dict.fromkeys(corpus + extra))
        v = rng.normal(size=(len(texts), dim)).astype(np.float32)
        row = {t: i for i, t in enumerate(texts)}
        for text, anchor in near.items():  # a query close to its positive, as a retriever makes it
            v[row[text]] = v[row[anchor]] + 0.5 * v[row[text]]
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        self.vec = {text_hash(t): v[i] for i, t in enumerate(texts)}
        self.corpus = list(dict.fromkeys(corpus))
        self.ids = text_ids([text_hash(t) for t in self.corpus])
        self.by_id = dict(zip(self.ids.tolist(), self.corpus, strict=True))
        self.index = findex.build(np.stack([self.vec[text_hash(t)] for t in self.corpus]), "Flat",
                                  use_gpu=False)
        self.searched = 0

    def vectors(self, hashes):
        return np.stack([self.vec[h] for h in hashes])

    def search(self, queries, k):
        self.searched += len(queries)
        scores, local = findex.search(self.index, queries, k)
        return findex.merge_topk([(scores, np.where(local >= 0, self.ids[local], -1))], k)

    def texts(self, ids):
        return [self.by_id[int(i)] for i in ids]

    def random_texts(self, n, rng):
        return [self.corpus[rng.randrange(len(self.corpus))] for _ in range(n)]


def _samples(n_queries: int = 40) -> tuple[list[dict], list[str]]:
    corpus = [f"passage {i} about topic {i % 13}" for i in range(300)]
    rows = []
    for q in range(n_queries):
        for p in range(1 + q % 3):  # some queries have several positives (one sample each)
            rows.append({"id": f"s{q}-{p}", "dataset": "d", "kind": "retrieval", "query": f"query {q}",
                         "instruction": "Find it", "positive": corpus[(7 * q + p) % 300],
                         "negatives": ["an llm negative"] if q % 4 == 0 else [],
                         "meta": json.dumps({"negative_sources": ["llm"]} if q % 4 == 0 else {})})
    rows.append({"id": "pair-1", "dataset": "p", "kind": "pair", "query": "a", "instruction": "",
                 "positive": "b", "negatives": [], "meta": "{}"})
    return rows, corpus


def _store(rows, corpus):
    from embedforge.mine.partition import query_prompt

    near = {query_prompt(r, True) + r["query"]: r["positive"] for r in rows if r["kind"] == "retrieval"}
    extra = [*near, *(r["query"] for r in rows), "an llm negative", "b"]
    return NumpyStore(corpus, extra, near)


def test_partitions_by_query_mine_exactly_what_one_loop_over_everything_mines():
    rows, corpus = _samples()
    sel = SelectionSettings(rank_range=(2, 30), num_negatives=4, margin=0.95)
    store = _store(rows, corpus)
    whole, whole_audit = mine_rows(rows, sel, store, 40, query_batch=7)
    parts: dict[int, list[dict]] = {}
    for r in rows:
        parts.setdefault(partition_of(r["dataset"], r["query"], 5), []).append(r)
    assert len(parts) == 5
    split, split_audit, stats = {}, [], None
    for part in parts.values():
        out, audit = mine_rows(part, sel, store, 40, query_batch=7)
        split.update({r["id"]: r for r in out})
        split_audit += audit
        stats = add_stats(stats, partition_stats(audit, len(part)))
    assert {r["id"]: r for r in whole} == split
    assert sorted(split_audit, key=lambda a: a["id"]) == sorted(whole_audit, key=lambda a: a["id"])
    assert stats == partition_stats(whole_audit, len(rows))
    assert stats["samples"] == len(rows) and stats["retrieval_samples"] == len(rows) - 1
    assert split["pair-1"] == rows[-1]  # non-retrieval rows pass through untouched
    # the hardest positive of a query sets every one of its samples' margin
    by_query: dict[str, set[float]] = {}
    for r in whole:
        if r["kind"] == "retrieval":
            by_query.setdefault(r["query"], set()).add(json.loads(r["meta"])["mining"]["positive_score"])
    assert all(len(v) == 1 for v in by_query.values())
    mined = [json.loads(r["meta"])["negative_sources"] for r in whole if r["kind"] == "retrieval"]
    assert sum(s.count("mined") for s in mined) > len(mined) // 2  # mining happened


def test_random_top_up_draws_from_the_store_and_skips_what_the_sample_saw():
    rows, corpus = _samples(12)
    store = _store(rows, corpus)
    pool = StorePool(store, len(store.corpus))
    seen = {normalize(t) for t in corpus[:290]}
    got = pool.sample(seen, 5, random.Random(0))
    assert len(got) == 5 and len(set(got)) == 5
    assert not {normalize(t) for t in got} & seen
    sel = SelectionSettings(rank_range=(1, 2), num_negatives=6, top_up_random=True, near_duplicate=0)
    out, audit = mine_rows(rows, sel, store, 12, pool_size=len(store.corpus))
    for r, a in zip([r for r in out if r["kind"] == "retrieval"], audit, strict=True):
        sources = json.loads(r["meta"])["negative_sources"]
        assert "random" in sources and len(r["negatives"]) == 6 and a["short"] == 0
        assert r["positive"] not in r["negatives"]
