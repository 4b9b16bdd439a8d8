"""Field access for raw rows: role -> column resolution, header detection, row-level errors.

Shared by prepare's source formats and evaluation's file readers, with the column names of
:mod:`.vocab`, so both read a file the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class RowError(ValueError):
    """A bad input row. ``reason`` is a short stable code counted in ``stats.json``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def column_for(
    data: Mapping[str, Any], role: str, candidates: Sequence[str], mapping: Mapping[str, str]
) -> str | None:
    """The column that holds ``role``: the user's mapping first, else the first candidate present
    (exact name first, then ignoring case: a header ``Sentence1`` is a ``sentence1`` column)."""
    if role in mapping:
        return mapping[role]
    names = (role, *candidates)
    for cand in names:
        if cand in data:
            return cand
    lower = {str(k).lower(): k for k in data}
    for cand in names:
        if cand.lower() in lower:
            return lower[cand.lower()]
    return None


def names_header(fields: Sequence[str], columns: Iterable[str]) -> bool:
    """Does a first line (split into ``fields``) name one of ``columns``? Then it is a header."""
    names = {f.strip().lstrip("\ufeff").lower() for f in fields}
    return bool(names & {c.lower() for c in columns})


def get_value(
    data: Mapping[str, Any],
    role: str,
    candidates: Sequence[str],
    mapping: Mapping[str, str],
    required: bool = True,
) -> Any:
    col = column_for(data, role, candidates, mapping)
    if col is None or col not in data:
        if not required:
            return None
        looked = mapping.get(role) or ", ".join(dict.fromkeys((role, *candidates)))
        raise RowError(
            "missing_field",
            f"missing field for {role!r} (looked for column: {looked}); "
            f"map it with --map NAME.{role}=COLUMN",
        )
    return data[col]


def as_text(value: Any, role: str, allow_empty: bool = False) -> str:
    """A non-empty string, or a RowError saying what was wrong."""
    if value is None:
        if allow_empty:
            return ""
        raise RowError("empty_text", f"field {role!r} is null")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError("wrong_type", f"field {role!r} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if not text and not allow_empty:
        raise RowError("empty_text", f"field {role!r} is empty")
    return text


def as_text_list(value: Any, role: str) -> list[str]:
    """A list of non-empty strings from a string, a list, or a JSON-encoded list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            import json

            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise RowError("wrong_type", f"field {role!r} looks like a JSON list but is not: {exc.msg}") from exc
        else:
            return [stripped] if stripped else []
    if not isinstance(value, (list, tuple)):
        raise RowError("wrong_type", f"field {role!r} must be text or a list of texts, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping):
            item = item.get("text", item.get("content"))
        out.append(as_text(item, f"{role}[{i}]"))
    return out


def as_float(value: Any, role: str) -> float:
    if isinstance(value, bool):
        raise RowError("wrong_type", f"field {role!r} must be a number, got a boolean")
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise RowError("bad_score", f"field {role!r} is not a number: {value!r}") from exc
    if out != out:  # NaN
        raise RowError("bad_score", f"field {role!r} is NaN")
    return out
