"""Deterministic "LLM" answers for the synthesis templates, for the fake server in tests.

They obey the templates' JSON schemas and the checked rules (word order reversed and rotated:
same length and language, far from the original, different for every distinct prompt), so
tests exercise the real pipeline and rules without a model.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_FIELD = re.compile(r'^(Query|Passage|Text|Relevant passage): (".*")$', re.MULTILINE)


def _scramble(text: str, salt: int) -> str:
    cjk = any("\u4e00" <= c <= "\u9fff" for c in text)
    units = [c for c in text if not c.isspace()] if cjk else text.split()
    if len(units) < 2:
        return text
    units = units[::-1]
    k = salt % len(units)
    units = units[k:] + units[:k]
    return ("" if cjk else " ").join(units)


def _salt(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16)


def _asked_fields(request: dict[str, Any], user: str) -> list[str]:
    """The answer's fields: the requested schema's, else the keys the prompt's last line names."""
    fmt = request.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
    if schema.get("required"):
        return list(schema["required"])
    last = user.strip().splitlines()[-1] if user.strip() else ""
    return re.findall(r'"(query|positive|negative|text)"', last)


def synth_responder(request: dict[str, Any]) -> str:
    """Answer a synthesis prompt (paraphrase / augment / hard negative) with valid JSON."""
    user = next((m["content"] for m in reversed(request.get("messages", []))
                 if m.get("role") == "user"), "")
    fields = {k: json.loads(v) for k, v in _FIELD.findall(user)}
    salt = _salt(user) + int(request.get("_choice_index", 0))
    asked = set(_asked_fields(request, user))
    if asked == {"query", "positive", "negative"}:
        pos = fields.get("Passage", "")
        return json.dumps({"query": _scramble(fields.get("Query", ""), salt),
                           "positive": _scramble(pos, salt),
                           "negative": _scramble(pos, salt + len(pos.split()) // 2 + 1)},
                          ensure_ascii=False)
    if asked == {"query", "positive"}:
        return json.dumps({"query": _scramble(fields.get("Query", ""), salt),
                           "positive": _scramble(fields.get("Passage", ""), salt)},
                          ensure_ascii=False)
    if asked == {"text"}:
        return json.dumps({"text": _scramble(fields.get("Text", "") or user[:200], salt)},
                          ensure_ascii=False)
    if asked == {"negative"}:
        return json.dumps({"negative": _scramble(fields.get("Relevant passage", ""), salt)},
                          ensure_ascii=False)
    return json.dumps({"echo": user[:200]}, ensure_ascii=False)
