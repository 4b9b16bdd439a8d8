"""Versioned prompt templates (YAML + Jinja2) and validation of the JSON they ask for.

The template ``version`` goes into the cache key and into every output row's ``meta``, so a
prompt change never silently reuses answers to an older prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jinja2
import yaml

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                          keep_trailing_newline=False)
_ENV.policies["json.dumps_kwargs"] = {"ensure_ascii": False}


class OutputError(ValueError):
    """The LLM's answer is not the JSON the template asked for (reason: bad_json/wrong_schema)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    schema: dict[str, Any]
    system: str
    user: str

    def render(self, **values: Any) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": _ENV.from_string(self.system).render(**values)},
            {"role": "user", "content": _ENV.from_string(self.user).render(**values)},
        ]

    def parse(self, content: str) -> dict[str, str]:
        """Parse and validate the answer: an object with exactly the required string fields."""
        text = content.strip()
        if text.startswith("```"):  # tolerate a fenced block
            text = text.strip("`")
            text = text[text.find("{"):] if "{" in text else text
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            raise OutputError("bad_json", "answer holds no JSON object")
        try:
            obj = json.loads(text[start:end + 1])
        except json.JSONDecodeError as exc:
            raise OutputError("bad_json", f"answer is not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise OutputError("wrong_schema", "answer is not a JSON object")
        required = self.schema.get("required", [])
        missing = [k for k in required if k not in obj]
        if missing:
            raise OutputError("wrong_schema", f"answer lacks field(s) {missing}")
        bad = [k for k in required if not isinstance(obj[k], str)]
        if bad:
            raise OutputError("wrong_schema", f"field(s) {bad} are not strings")
        return {k: obj[k].strip() for k in required}


@cache
def load_template(name: str, version: str | None = None) -> Template:
    """Load ``templates/<name>.<version>.yaml`` (the highest version when none is given)."""
    folder = resources.files("embedforge.synth").joinpath("templates")
    files = sorted(p.name for p in folder.iterdir() if p.name.startswith(f"{name}.v"))
    if version:
        files = [f for f in files if f == f"{version}.yaml"]
    if not files:
        raise ValueError(f"no prompt template {name!r}{f' version {version}' if version else ''}")
    data = yaml.safe_load(folder.joinpath(files[-1]).read_text("utf-8"))
    return Template(data["name"], data["version"], data["schema"], data["system"], data["user"])
