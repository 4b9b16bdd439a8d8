"""Checked rules for generated text (the report's constraints as code, not just prompt text).

Pure functions: every rule returns ``None`` when the text passes or a short reason code that
is counted in the job's rejections and drives a regeneration.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from difflib import SequenceMatcher

_SENT_SPLIT = re.compile(r"(?<=[.!?。！？；;])\s*")
_WS = re.compile(r"\s+")
_PUNCT_CATS = ("P", "S")


def normalize(text: str) -> str:
    """Lower-case, NFKC, punctuation and whitespace removed: for dedup and identity checks."""
    text = unicodedata.normalize("NFKC", text).lower()
    kept = [c for c in text if not unicodedata.category(c).startswith(_PUNCT_CATS)]
    return _WS.sub(" ", "".join(kept)).strip()


def script_of(ch: str) -> str | None:
    o = ord(ch)
    if 0x3040 <= o <= 0x30FF:
        return "kana"
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF:
        return "han"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF:
        return "hangul"
    if 0x0400 <= o <= 0x04FF:
        return "cyrillic"
    if 0x0600 <= o <= 0x06FF:
        return "arabic"
    if 0x0900 <= o <= 0x097F:
        return "devanagari"
    if 0x0E00 <= o <= 0x0E7F:
        return "thai"
    if 0x0370 <= o <= 0x03FF:
        return "greek"
    if 0x0590 <= o <= 0x05FF:
        return "hebrew"
    if ch.isalpha() and o < 0x0250:
        return "latin"
    return None


def language_of(text: str) -> str:
    """Dominant writing system ('zh', 'ja', 'ko', 'latin', 'cyrillic', …; 'unknown').

    Script-based on purpose: cheap, dependency-free and right for the check we need (did the
    LLM answer in the input's language family), where word-level language ID on short texts is
    noisy.
    """
    counts = Counter(s for s in map(script_of, text) if s)
    if not counts:
        return "unknown"
    if counts["kana"] > 0:
        return "ja"
    top = counts.most_common(1)[0][0]
    return {"han": "zh", "hangul": "ko"}.get(top, top)


def is_cjk(text: str) -> bool:
    return language_of(text) in ("zh", "ja", "ko")


def tokens(text: str) -> list[str]:
    """Words for space-separated scripts, characters for CJK."""
    if is_cjk(text):
        return [c for c in normalize(text) if not c.isspace()]
    return normalize(text).split()


def difference(a: str, b: str) -> float:
    """1 - similarity of the token sequences (0 = identical, 1 = nothing in common)."""
    ta, tb = tokens(a), tokens(b)
    if not ta and not tb:
        return 0.0
    return 1.0 - SequenceMatcher(None, ta, tb, autojunk=False).ratio()


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
