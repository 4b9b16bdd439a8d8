"""Which retrieved candidates become hard negatives (pure; no Ray, no faiss).

Rank-window sampling alone (FlagEmbedding style) lets false negatives through: documents
that are relevant but unlabelled score close to, or above, the positive. Following
NV-Retriever's positive-aware filtering, a candidate (or an existing LLM negative) is dropped
when it scores above ``margin × positive score``; the threshold is written so that it also
stays *below* the positive when scores are negative.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ..config import ConfigSection
from ..text import normalize, within_difference


class SelectionSettings(ConfigSection):
    """Selection rules (defaults after NV-Retriever's TopK-PercPos)."""

    rank_range: tuple[int, int] = Field(
        (10, 100), description="1-based rank window to take candidates from, e.g. 10-100")
    num_negatives: int = Field(7, ge=1, description="negatives per sample (K)")
    margin: float = Field(0.95, gt=0, le=1, description="drop candidates above margin × positive score")
    mode: Literal["random", "top"] = Field("random", description="sample in the window or take the top")
    near_duplicate: float = Field(
        0.1, ge=0, le=1, description="drop candidates differing from a positive by less than this")
    window: Literal["raw", "filtered"] = Field(
        "raw", description="raw: the window is over retrieval ranks; filtered: over the ranks "
                           "left after dropping positives/near-duplicates/above-margin "
                           "(sentence-transformers' range_min/range_max semantics)")
    top_up_random: bool = Field(False, description="fill short samples with random corpus texts")
    seed: int = Field(0, description="random seed (per-sample streams derive from it)")

    @field_validator("rank_range", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, str):
            lo, _, hi = v.partition("-")
            return (int(lo), int(hi))
        return v

    @field_validator("rank_range")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"rank range {v[0]}-{v[1]} must satisfy 1 <= lo <= hi")
        return v


@dataclass
class Candidate:
    doc_id: str
    text: str
    score: float
    rank: int  # 1-based


@dataclass
class Selection:
    negatives: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    threshold: float = 0.0
    positive_score: float = 0.0
    short: int = 0

    def audit(self) -> dict[str, Any]:
        return {"positive_score": round(self.positive_score, 6), "threshold": round(self.threshold, 6),
                "kept": Counter(self.sources), "dropped": dict(self.dropped), "short": self.short}


def threshold(positive_score: float, margin: float) -> float:
    """``margin × positive`` for positive scores; below the positive for negative ones too."""
    return positive_score - (1.0 - margin) * abs(positive_score)


def is_near_duplicate(text: str, positives: list[str], max_diff: float) -> bool:
    n = normalize(text)
    return any(n == normalize(p) or within_difference(text, p, max_diff) for p in positives)


def _key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class RandomPool:
    """Corpus texts for ``top_up_random``, normalised once for every sample of a run.

    Filtering the pool per short sample (``normalize`` over the whole corpus each time) cost
    O(corpus) normalisations per sample. Here a 64-bit hash of each normalised text, sorted,
    finds the few positions a sample must skip (its negatives and positives; verified by
    comparing the normalised text, so a hash collision cannot exclude a wrong one), and
    ``rng.sample`` draws positions among the rest. ``rng.sample`` picks by position from a
    sequence of the same length in the same order as the old filtered list, so a seed gives
    the same texts as before.
    """

    def __init__(self, texts: Sequence[str]):
        self.texts = texts
        self.normalised = 0  # how many texts were normalised (once each, on first use)
        self._keys: np.ndarray | None = None
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def _build(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None or self._order is None:
            keys = np.fromiter((_key64(normalize(t)) for t in self.texts), dtype=np.uint64,
                               count=len(self.texts))
            self.normalised += len(self.texts)
            self._order = np.argsort(keys, kind="stable")
            self._keys = keys[self._order]
        return self._keys, self._order

    def positions(self, key: str) -> list[int]:
        """Positions of texts whose normalised form is ``key``."""
        keys, order = self._build()
        h = np.uint64(_key64(key))
        lo, hi = np.searchsorted(keys, h, "left"), np.searchsorted(keys, h, "right")
        return [int(i) for i in order[lo:hi] if normalize(self.texts[int(i)]) == key]

    def sample(self, seen: set[str], k: int, rng: random.Random) -> list[str]:
        """``k`` texts (fewer if the pool is smaller) whose normalised form is not in ``seen``."""
        excluded = sorted({i for key in seen for i in self.positions(key)})
        picks = rng.sample(range(len(self.texts) - len(excluded)),
                           min(k, len(self.texts) - len(excluded)))
        return [self.texts[_nth_kept(j, excluded)] for j in picks]


def _nth_kept(j: int, excluded: list[int]) -> int:
    """Position of the ``j``-th text not in ``excluded`` (sorted positions)."""
    for e in excluded:
        if e > j:
            break
        j += 1
    return j


def select(positives: list[str], positive_score: float, candidates: list[Candidate],
           existing: list[tuple[str, str, float]], s: SelectionSettings, rng: random.Random,
           random_pool: Sequence[str] | RandomPool | Any | None = None) -> Selection:
    """Merge existing negatives (text, source, score) with mined candidates.

    Existing negatives scoring above the threshold are dropped as likely false negatives; the
    rest are kept and mined ones fill up to K. Samples with too few are reported (``short``),
    topped up with random corpus texts only when asked (pass one ``RandomPool`` for a whole
    run, so the corpus is normalised once).
    """
    sel = Selection(threshold=threshold(positive_score, s.margin), positive_score=positive_score)
    pos_keys = {normalize(p) for p in positives}
    seen = set(pos_keys)
    for text, source, score in existing:
        key = normalize(text)
        if key in seen:
            sel.dropped["existing_duplicate"] += 1
        elif score > sel.threshold:
            sel.dropped["existing_above_margin"] += 1
        else:
            sel.negatives.append(text)
            sel.sources.append(source)
            seen.add(key)
    need = max(0, s.num_negatives - len(sel.negatives))
    lo, hi = s.rank_range
    eligible: list[Candidate] = []
    valid_rank = 0
    for c in sorted(candidates, key=lambda c: c.rank):
        if s.window == "raw" and not lo <= c.rank <= hi:
            continue
        key = normalize(c.text)
        if key in pos_keys:
            sel.dropped["is_positive"] += 1
        elif is_near_duplicate(c.text, positives, s.near_duplicate):
            sel.dropped["near_duplicate_of_positive"] += 1
        elif c.score > sel.threshold:
            sel.dropped["above_margin"] += 1
        elif key in seen:
            sel.dropped["duplicate"] += 1
        else:
            valid_rank += 1
            if s.window == "filtered" and not lo <= valid_rank <= hi:
                continue
            eligible.append(c)
            seen.add(key)
    if need:
        picked = eligible[:need] if s.mode == "top" else rng.sample(eligible, min(need, len(eligible)))
        picked.sort(key=lambda c: c.rank)
        sel.negatives += [c.text for c in picked]
        sel.sources += ["mined"] * len(picked)
    short = s.num_negatives - len(sel.negatives)
    if short > 0 and s.top_up_random and random_pool:
        # a RandomPool, or any pool with its ``sample`` (the mining job draws from its shards)
        pool = random_pool if hasattr(random_pool, "sample") else RandomPool(random_pool)
        extra = pool.sample(seen, short, rng)
        sel.negatives += extra
        sel.sources += ["random"] * len(extra)
        short -= len(extra)
    sel.short = max(0, short)
    return sel
