"""Mining one partition of samples against the index shards (pure; the store is injected).

``mine_rows`` is the selection of the whole job applied to one partition: every sample of a
(dataset, query) is in the same partition (``layout.partition_of``), so the hardest positive
of a query sets the margin exactly as when the whole data set was in one loop. The store it
talks to is anything with ``vectors``/``search``/``texts``/``random_texts``: the Ray shards
in a job, plain numpy in tests. Statistics come back as partial aggregates that add up.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ..instructions import format_instruction
from ..text import normalize
from .embed import text_hash
from .select import Candidate, SelectionSettings, select

#: rescoring: (full texts, their instruction prefixes) -> normalised vectors
Rescorer = Callable[[list[str], list[str]], np.ndarray]
HIST_BINS, PLOT_BINS = 20, 200


class Store(Protocol):
    def vectors(self, hashes: list[str]) -> np.ndarray: ...
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def texts(self, ids: list[int]) -> list[str]: ...
    def random_texts(self, n: int, rng: random.Random) -> list[str]: ...


class StorePool:
    """``top_up_random``'s pool: uniform corpus texts drawn from the shards, never one whose
    normalised form the sample has already seen (the semantics of ``select.RandomPool``,
    without a corpus list in the process)."""

    def __init__(self, store: Store, size: int):
        self.store, self.size = store, size

    def __len__(self) -> int:
        return self.size

    def sample(self, seen: set[str], k: int, rng: random.Random) -> list[str]:
        out: list[str] = []
        keys = set(seen)
        for _ in range(4):  # draws with replacement: a few rounds fill k unless the pool is tiny
            for text in self.store.random_texts(2 * k + len(seen) + 4, rng):
                key = normalize(text)
                if key not in keys and len(out) < k:
                    out.append(text)
                    keys.add(key)
            if len(out) == k:
                break
        return out


def query_prompt(sample: dict[str, Any], use_instruction: bool) -> str:
    return format_instruction(sample["instruction"]) if use_instruction else ""


def search_all(store: Store, qmat: np.ndarray, k: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    scores, ids = [], []
    for start in range(0, len(qmat), batch):
        sc, i = store.search(qmat[start:start + batch], k)
        scores.append(sc)
        ids.append(i)
    if not scores:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    return np.concatenate(scores), np.concatenate(ids)


def mine_rows(rows: Sequence[dict[str, Any]], selection: SelectionSettings, store: Store, k: int,
              *, instruction: bool = True, query_batch: int = 1024, pool_size: int = 0,
              rescorer: Rescorer | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(output rows, audit rows) of one partition; non-retrieval rows pass through."""
    retrieval = [s for s in rows if s["kind"] == "retrieval"]
    positives_of: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in retrieval:
        positives_of[(s["dataset"], s["query"])].append(s["positive"])
    prompts = [query_prompt(s, instruction) for s in retrieval]
    queries = [p + s["query"] for p, s in zip(prompts, retrieval, strict=True)]
    others = [t for s in retrieval for t in (s["positive"], *s["negatives"])]
    wanted = list(dict.fromkeys(text_hash(t) for t in queries + others))
    vec = dict(zip(wanted, store.vectors(wanted), strict=True)) if wanted else {}
    qmat = np.stack([vec[text_hash(q)] for q in queries]) if queries else np.zeros((0, 1))
    scores, ids = search_all(store, qmat, k, query_batch)
    id_list = sorted({int(d) for d in ids.reshape(-1) if d >= 0})
    text_of = dict(zip(id_list, store.texts(id_list), strict=True)) if id_list else {}
    lo, hi = selection.rank_range

    table = vec
    if rescorer is not None:
        # the teacher scores what the selection looks at: queries, positives, existing
        # negatives and the window's candidates
        window = sorted({int(d) for row in ids for d in row[max(0, lo - 1):hi] if d >= 0})
        prompt_of = dict(zip(queries, prompts, strict=True))
        texts = list(dict.fromkeys(queries + others + [text_of[d] for d in window]))
        table = dict(zip([text_hash(t) for t in texts],
                         rescorer(texts, [prompt_of.get(t, "") for t in texts]), strict=True))

    out_rows, audit = [], []
    pool = StorePool(store, pool_size) if selection.top_up_random and pool_size else None
    by_id = {s["id"]: i for i, s in enumerate(retrieval)}
    for s in rows:
        if s["kind"] != "retrieval":
            out_rows.append(s)
            continue
        i = by_id[s["id"]]
        q = table[text_hash(queries[i])]

        def score(text: str, q: np.ndarray = q) -> float:
            return float(q @ table[text_hash(text)])

        # with several positives the hardest (lowest-scoring) one sets the margin
        positives = positives_of[(s["dataset"], s["query"])]
        pos_score = min(score(p) for p in positives)
        meta = json.loads(s["meta"] or "{}")
        sources = meta.get("negative_sources") or ["original"] * len(s["negatives"])
        existing = [(t, src, score(t)) for t, src in zip(s["negatives"], sources, strict=False)]
        cands = []
        for r, (sc, d) in enumerate(zip(scores[i], ids[i], strict=True)):
            if d < 0:
                continue
            text = text_of[int(d)]
            in_window = lo <= r + 1 <= hi
            cands.append(Candidate(str(int(d)), text,
                                   score(text) if rescorer is not None and in_window else float(sc),
                                   r + 1))
        rng = random.Random(f"{selection.seed}:{s['id']}")
        sel = select(positives, pos_score, cands, existing, selection, rng, pool)
        meta["negative_sources"] = sel.sources
        meta["mining"] = {"positive_score": round(pos_score, 5), "threshold": round(sel.threshold, 5),
                          "dropped": dict(sel.dropped), "short": sel.short}
        out_rows.append(dict(s, negatives=sel.negatives,
                             meta=json.dumps(meta, ensure_ascii=False, sort_keys=True)))
        known = {c.text: c.score for c in cands}
        known.update({t: sc for t, _, sc in existing})
        audit.append({"id": s["id"], "dataset": s["dataset"], **sel.audit(),
                      "kept": dict(Counter(sel.sources)),
                      "negative_scores": [round(known[t], 5) if t in known else None
                                          for t in sel.negatives],
                      "dropped_scores": [round(c.score, 5) for c in cands
                                         if lo <= c.rank <= hi and c.score > sel.threshold][:20]})
    return out_rows, audit


def partition_stats(audit: Sequence[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Counts and histograms of one partition: partial aggregates ``add_stats`` sums."""
    pos = [a["positive_score"] for a in audit]
    neg = [s for a in audit for s in a["negative_scores"] if s is not None]
    dropped = [s for a in audit for s in a["dropped_scores"]]
    kept: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for a in audit:
        kept.update(a["kept"])
        reasons.update(a["dropped"])

    def hist(values: list[float], bins: int) -> list[int]:
        return np.histogram(values, np.linspace(-1, 1, bins + 1))[0].tolist()

    return {"samples": samples, "retrieval_samples": len(audit), "kept": dict(kept),
            "dropped": dict(reasons), "short": sum(a["short"] > 0 for a in audit),
            "histogram": {name: hist(v, HIST_BINS) for name, v in
                          (("positive", pos), ("kept_negative", neg), ("dropped_above_margin", dropped))},
            "plot": {name: hist(v, PLOT_BINS) for name, v in
                     (("positive", pos), ("kept_negative", neg), ("dropped_above_margin", dropped))}}


def add_stats(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Sum of two partial aggregates (counters add, histograms add bin by bin)."""
    if a is None:
        return b
    out: dict[str, Any] = {}
    for key, va in a.items():
        vb = b[key]
        if isinstance(va, dict):
            if all(isinstance(x, list) for x in va.values()):
                out[key] = {n: [x + y for x, y in zip(va[n], vb[n], strict=True)] for n in va}
            else:
                out[key] = dict(Counter(va) + Counter(vb))
        else:
            out[key] = va + vb
    return out


def search_depth(corpus: int, selection: SelectionSettings) -> int:
    """Candidates to retrieve: filtered windows count only valid candidates, so extra ones
    make up for the dropped."""
    _, hi = selection.rank_range
    return min(corpus, hi + 10 if selection.window == "raw" else 2 * hi + 10)

