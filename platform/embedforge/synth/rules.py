"""Checked rules for generated text (the report's constraints as code, not just prompt text).

Pure functions: every rule returns ``None`` when the text passes or a short reason code that
is counted in the job's rejections and drives a regeneration.
"""

from __future__ import annotations

import re

from ..text import difference, is_cjk, language_of, normalize, script_of, tokens

__all__ = ["difference", "is_cjk", "language_of", "normalize", "script_of", "tokens"]

_SENT_SPLIT = re.compile(r"(?<=[.!?。！？；;])\s*")
_WS = re.compile(r"\s+")


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENT_SPLIT.split(text)) if s]


def length_ratio(original: str, new: str) -> float:
    a = len(_WS.sub(" ", original.strip()))
    b = len(_WS.sub(" ", new.strip()))
    return b / a if a else float("inf")


def check_length(original: str, new: str, tolerance: float) -> str | None:
    r = length_ratio(original, new)
    return None if 1 - tolerance <= r <= 1 + tolerance else "length"


def check_language(original: str, new: str) -> str | None:
    lo, ln = language_of(original), language_of(new)
    if lo == "unknown" or lo == ln:
        return None
    return "no_text" if ln == "unknown" else "language"


def check_paraphrase(original: str, new: str, *, length_tolerance: float = 0.15,
                     sentence_diff: float = 0.30, paragraph_diff: float = 0.20) -> str | None:
    """Same language, length ±15%, differs >30% (a sentence) or >20% with no sentence kept
    verbatim (a paragraph)."""
    if not new.strip():
        return "empty"
    if normalize(new) == normalize(original):
        return "repeats_original"
    for rule in (check_language(original, new), check_length(original, new, length_tolerance)):
        if rule:
            return rule
    orig_sents = sentences(original)
    if len(orig_sents) <= 1:
        return None if difference(original, new) > sentence_diff else "too_similar"
    if difference(original, new) <= paragraph_diff:
        return "too_similar"
    kept = {normalize(s) for s in orig_sents}
    if any(normalize(s) in kept for s in sentences(new)):
        return "identical_sentence"
    return None


def check_distinct(new: str, others: list[str]) -> str | None:
    """Rejects a text equal (after normalisation) to one already accepted for this sample."""
    n = normalize(new)
    return "duplicate" if any(n == normalize(o) for o in others) else None


def check_augment(orig_query: str, orig_positive: str, query: str, positive: str,
                  negative: str, *, length_tolerance: float = 0.20,
                  min_query_diff: float = 0.30) -> str | None:
    """A new triple on a neighbouring aspect: not a rewrite of the query, lengths ±20%, and a
    negative that is not the positive."""
    if not (query.strip() and positive.strip() and negative.strip()):
        return "empty"
    for orig, new in ((orig_query, query), (orig_positive, positive), (orig_positive, negative)):
        rule = check_language(orig, new)
        if rule:
            return rule
    if difference(orig_query, query) <= min_query_diff:
        return "rewrite_not_new_aspect"
    if check_length(orig_positive, positive, length_tolerance):
        return "length"
    if check_length(orig_positive, negative, length_tolerance):
        return "length"
    if check_length(orig_query, query, max(length_tolerance, 0.5)):
        return "length"
    if normalize(negative) == normalize(positive) or difference(positive, negative) <= 0.2:
        return "negative_equals_positive"
    return None


def check_hard_negative(query: str, positive: str, negative: str, *,
                        length_tolerance: float = 0.20, min_diff: float = 0.20) -> str | None:
    """Imitates the positive's length (±20%) without copying it (or the query)."""
    if not negative.strip():
        return "empty"
    if normalize(negative) in (normalize(positive), normalize(query)):
        return "repeats_original"
    rule = check_language(positive, negative) or check_length(positive, negative, length_tolerance)
    if rule:
        return rule
    if difference(positive, negative) <= min_diff:
        return "too_similar"
    return None
