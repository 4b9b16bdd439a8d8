"""Registry of source formats: how a raw row of each format becomes unified samples."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..schema import Sample
from . import classification, pairs, retrieval, vocab
from .fields import names_header
from .spec import SourceSpec

Transform = Callable[[Mapping[str, Any], SourceSpec, str], list[Sample]]


@dataclass(frozen=True)
class Format:
    name: str
    kind: str
    transform: Transform | None
    # field names assumed for header-less delimited files (override with `columns`)
    positional: tuple[str, ...] = ()
    # column names whose presence on line 1 means "this file has a header"
    header_hints: tuple[str, ...] = ()
    # trailing positional fields that may be absent (claim files without refuting evidence)
    optional_positional: int = 0


def _hints(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for g in groups for c in g))


FORMATS: dict[str, Format] = {
    "beir": Format("beir", "retrieval", None),
    "title_body": Format(
        "title_body", "retrieval",
        lambda d, s, ins: retrieval.from_title_body(d, s.name, ins, s.map),
        ("query", "positive"), _hints(retrieval.TITLE, retrieval.BODY, ("query", "positive")),
    ),
    "qa": Format(
        "qa", "retrieval",
        lambda d, s, ins: retrieval.from_qa(d, s.name, ins, s.map),
        ("query", "positive"), _hints(retrieval.QUESTION, retrieval.ANSWER, ("positive",)),
    ),
    "reading": Format(
        "reading", "retrieval",
        lambda d, s, ins: retrieval.from_reading(d, s.name, ins, s.map),
        ("context", "question", "positive"),
        _hints(retrieval.CONTEXT, retrieval.QUESTION, retrieval.ANSWER),
    ),
    "claim": Format(
        "claim", "retrieval",
        lambda d, s, ins: retrieval.from_claim(d, s.name, ins, s.map),
        ("query", "positive", "negatives"),
        _hints(retrieval.CLAIM, retrieval.EVIDENCE, retrieval.REFUTING), 1,
    ),
    "sts": Format(
        "sts", "pair",
        lambda d, s, ins: pairs.from_sts(d, s.name, ins, s.map, s.score_range),
        ("text1", "text2", "score"), _hints(vocab.TEXT1, vocab.TEXT2, vocab.SCORE),
    ),
    "nli": Format(
        "nli", "pair",
        lambda d, s, ins: pairs.from_nli(d, s.name, ins, s.map, s.label_map),
        ("text1", "text2", "label"), _hints(vocab.TEXT1, vocab.TEXT2, vocab.PAIR_LABEL),
    ),
    "pair_label": Format(
        "pair_label", "pair",
        lambda d, s, ins: pairs.from_pair_label(d, s.name, ins, s.map, s.label_map),
        ("text1", "text2", "label"), _hints(vocab.TEXT1, vocab.TEXT2, vocab.PAIR_LABEL),
    ),
    "classification": Format(
        "classification", "classification",
        lambda d, s, ins: classification.from_classification(
            d, s.name, ins, s.map, s.labels, s.label_map),
        ("query", "label"), _hints(vocab.TEXT, vocab.LABEL),
    ),
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}") from None


def looks_like_header(fields: list[str], fmt: Format, spec: SourceSpec) -> bool:
    """A first line is a header when it names a column the format (or the user's map) expects."""
    return names_header(fields, (*fmt.header_hints, *spec.map.values()))
