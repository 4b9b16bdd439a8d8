"""Field access for raw rows: role -> column resolution and row-level errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    """The column that holds ``role``: the user's mapping first, else the first candidate present."""
    if role in mapping:
        return mapping[role]
    for cand in (role, *candidates):
        if cand in data:
            return cand
    return None


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
