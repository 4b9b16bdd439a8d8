"""Pair-scored samples (text, text, score) from STS, NLI and binary pair labels.

Every pair is also emitted swapped (the report does this so the symmetric CoSENT objective
sees both orders). Scores stay in their source range, recorded in ``meta.range``, because
CoSENT only uses their order within one dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schema import Sample
from .fields import RowError, as_float, as_text, get_value
from .vocab import BINARY, PAIR_LABEL, SCORE, TEXT1, TEXT2

DEFAULT_STS_RANGE = (0.0, 5.0)
NLI_SCORES = {"entailment": 2.0, "neutral": 1.0, "contradiction": 0.0}
NLI_ALIASES = {
    "entailment": "entailment", "entail": "entailment", "entailed": "entailment",
    "neutral": "neutral",
    "contradiction": "contradiction", "contradict": "contradiction",
    "contradictory": "contradiction",
}


def _texts(data: Mapping[str, Any], mapping: Mapping[str, str]) -> tuple[str, str]:
    t1 = as_text(get_value(data, "text1", TEXT1, mapping), "text1")
    t2 = as_text(get_value(data, "text2", TEXT2, mapping), "text2")
    return t1, t2


def with_swapped(dataset: str, instruction: str, t1: str, t2: str, score: float,
                 meta: dict[str, Any]) -> list[Sample]:
    """The pair and, when the texts differ, the same pair swapped."""
    out = [Sample(dataset=dataset, kind="pair", instruction=instruction, query=t1, positive=t2,
                  score=score, meta={**meta, "swapped": False})]
    if t1 != t2:
        out.append(Sample(dataset=dataset, kind="pair", instruction=instruction, query=t2,
                          positive=t1, score=score, meta={**meta, "swapped": True}))
    return out


def from_sts(data: Mapping[str, Any], dataset: str, instruction: str, mapping: Mapping[str, str],
             score_range: tuple[float, float] | None = None) -> list[Sample]:
    """STS row: the float score is kept as is and checked against its declared range."""
    lo, hi = score_range or DEFAULT_STS_RANGE
    t1, t2 = _texts(data, mapping)
    score = as_float(get_value(data, "score", SCORE, mapping), "score")
    if not lo <= score <= hi:
        raise RowError("bad_score", f"score {score} outside the declared range [{lo}, {hi}] "
                                    "(set it with --option NAME.score_range=LO-HI)")
    return with_swapped(dataset, instruction, t1, t2, score, {"range": [lo, hi]})


def _lookup_label(raw: Any, table: Mapping[str, Any], label_map: Mapping[str, Any] | None,
                  what: str) -> Any:
    key = str(raw).strip()
    if label_map:
        if key in label_map:
            return label_map[key]
        if key.lower() in label_map:
            return label_map[key.lower()]
    if key.lower() in table:
        return table[key.lower()]
    known = sorted(set(label_map or {}) | set(table))
    raise RowError("unknown_label", f"unknown {what} label {key!r} (known: {', '.join(known)}; "
                                    "map others with --option NAME.label_map=...)")


def from_nli(data: Mapping[str, Any], dataset: str, instruction: str, mapping: Mapping[str, str],
             label_map: Mapping[str, Any] | None = None) -> list[Sample]:
    """NLI: entailment 2 / neutral 1 / contradiction 0; numeric labels need ``label_map``."""
    t1, t2 = _texts(data, mapping)
    raw = get_value(data, "label", PAIR_LABEL, mapping)
    canonical = _lookup_label(raw, NLI_ALIASES, label_map, "NLI")
    if isinstance(canonical, str):
        canonical = NLI_ALIASES.get(canonical.lower(), canonical)
        if canonical not in NLI_SCORES:
            raise RowError("unknown_label", f"label_map sends {raw!r} to unknown NLI label {canonical!r}")
        score = NLI_SCORES[canonical]
    else:
        score = as_float(canonical, "label")
    return with_swapped(dataset, instruction, t1, t2, score,
                        {"range": [0.0, 2.0], "nli_label": str(raw).strip()})


def from_pair_label(data: Mapping[str, Any], dataset: str, instruction: str,
                    mapping: Mapping[str, str],
                    label_map: Mapping[str, Any] | None = None) -> list[Sample]:
    """Binary pair labels (true/false, yes/no, 1/0) -> 1.0 / 0.0."""
    t1, t2 = _texts(data, mapping)
    raw = get_value(data, "label", PAIR_LABEL, mapping)
    if isinstance(raw, bool):
        raw = "true" if raw else "false"
    score = as_float(_lookup_label(raw, BINARY, label_map, "binary pair"), "label")
    return with_swapped(dataset, instruction, t1, t2, score, {"range": [0.0, 1.0]})
