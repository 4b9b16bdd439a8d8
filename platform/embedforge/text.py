"""Text identity and similarity helpers shared by synthesis rules and mining selection.

Pure functions, no dependencies beyond the standard library.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from difflib import SequenceMatcher
from functools import lru_cache

_WS = re.compile(r"\s+")
_PUNCT_CATS = ("P", "S")


@lru_cache(maxsize=65536)  # the same positives/corpus texts are compared again and again
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
    return list(_tokens(text))


@lru_cache(maxsize=65536)
def _tokens(text: str) -> tuple[str, ...]:
    if is_cjk(text):
        return tuple(c for c in normalize(text) if not c.isspace())
    return tuple(normalize(text).split())


def difference(a: str, b: str) -> float:
    """1 - similarity of the token sequences (0 = identical, 1 = nothing in common)."""
    ta, tb = tokens(a), tokens(b)
    if not ta and not tb:
        return 0.0
    return 1.0 - SequenceMatcher(None, ta, tb, autojunk=False).ratio()


def within_difference(a: str, b: str, max_diff: float) -> bool:
    """``difference(a, b) < max_diff``, with difflib's cheap upper bounds tried first.

    Mining checks every window candidate against the positives: most pairs are rejected by
    the length bound (O(1)) or the multiset bound (O(n)) before the O(n²) matcher runs.
    """
    if max_diff <= 0:
        return False
    ta, tb = tokens(a), tokens(b)
    if not ta and not tb:
        return True
    m = SequenceMatcher(None, ta, tb, autojunk=False)
    floor = 1.0 - max_diff
    return m.real_quick_ratio() > floor and m.quick_ratio() > floor and m.ratio() > floor
