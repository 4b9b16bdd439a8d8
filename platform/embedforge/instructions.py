"""The platform's one instruction policy, for training and evaluation alike.

Format (QZhou-Embedding): ``Instruct: {task}\\nQuery: {text}``. Asymmetric tasks (retrieval,
reranking) put it on queries only: documents stay raw, so one corpus index serves every task.
Symmetric tasks (STS, pairs, classification, clustering) put it on both sides, because both
sides are "queries" of the same task.

Task descriptions ship as data (``embedforge/instructions.yaml``: per dataset or task name,
per source format, per mteb task type), so a new dataset needs no code change. Prepare resolves
a dataset's description once and stores it in each sample's ``instruction`` column; evaluation
resolves a task's description through :class:`InstructionMap` from the same entries, so a
model is evaluated with exactly the prompts it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from .config import ConfigError

PROMPT_TEMPLATE = "Instruct: {task}\nQuery: "
SYMMETRIC_KINDS = frozenset({"pair", "classification", "clustering", "sts"})

# mteb task type -> the platform's sample kind (decides symmetric vs asymmetric)
TYPE_KIND: dict[str, str] = {
    "STS": "sts",
    "PairClassification": "pair",
    "Classification": "classification",
    "MultilabelClassification": "classification",
    "Clustering": "clustering",
}


def format_instruction(task: str) -> str:
    """The prompt prefix for a task description ('' when the task is empty)."""
    return PROMPT_TEMPLATE.format(task=task.strip()) if task and task.strip() else ""


def format_query(task: str, text: str) -> str:
    return format_instruction(task) + text


def is_symmetric(kind: str) -> bool:
    return kind in SYMMETRIC_KINDS


def apply_instruction(kind: str, task: str, query: str, documents: list[str]) -> tuple[str, list[str]]:
    """Format a sample's texts for the model: query always, documents only when symmetric."""
    q = format_query(task, query)
    if is_symmetric(kind):
        return q, [format_query(task, d) for d in documents]
    return q, list(documents)


def task_kind(task_type: str) -> str:
    """The sample kind of an mteb task type: ``retrieval`` for every asymmetric type."""
    return TYPE_KIND.get(task_type, "retrieval")


def applies(task_type: str, prompt_type: str | None) -> bool:
    """Instruction on this side of an mteb task? Documents of asymmetric tasks stay raw;
    symmetric tasks format both sides, as in training."""
    return prompt_type != "document" or is_symmetric(task_kind(task_type))


# --------------------------------------------------------------------------- descriptions

@lru_cache(maxsize=1)
def shipped() -> dict[str, dict[str, str]]:
    """``{"datasets": {name: task}, "formats": {format: task}, "types": {type: task}}``;
    dataset/task names lower-case (lookups are case-insensitive)."""
    text = resources.files("embedforge").joinpath("instructions.yaml").read_text("utf-8")
    data = yaml.safe_load(text) or {}
    return {"datasets": {str(k).lower(): str(v) for k, v in (data.get("datasets") or {}).items()},
            "formats": {str(k): str(v) for k, v in (data.get("formats") or {}).items()},
            "types": {str(k): str(v) for k, v in (data.get("types") or {}).items()}}


def resolve_instruction(
    dataset: str, fmt: str, explicit: str | None = None, overrides: dict[str, str] | None = None
) -> str:
    """Training: explicit > config overrides > shipped dataset entry > source format default."""
    if explicit:
        return explicit
    if overrides and dataset in overrides:
        return overrides[dataset]
    defaults = shipped()
    key = dataset.lower()
    if key in defaults["datasets"]:
        return defaults["datasets"][key]
    return defaults["formats"].get(fmt, "")


def _user_file(data: Any, origin: str) -> dict[str, dict[str, str]]:
    """An ``--instruction-file``: ``tasks:`` (or ``datasets:``) by name and ``types:``."""
    if not isinstance(data, dict) or set(data) - {"tasks", "datasets", "types"}:
        raise ConfigError(f"{origin}: expected a mapping with `tasks:` and/or `types:`")
    out: dict[str, dict[str, str]] = {"names": {}, "types": {}}
    for key, target in (("datasets", "names"), ("tasks", "names"), ("types", "types")):
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{origin}: `{key}:` must map names to task descriptions")
        out[target].update({str(k): str(v) for k, v in section.items()})
    return out


@dataclass
class InstructionMap:
    """Evaluation: task descriptions by task name and task type, per-run overrides on top."""

    names: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, file: str | None = None,
             overrides: Mapping[str, str] | None = None) -> InstructionMap:
        """The shipped entries, extended by ``file`` (same layout), then ``overrides``."""
        base = shipped()
        names = dict(base["datasets"])
        types = dict(base["types"])
        if file:
            from .config import load_yaml

            extra = _user_file(load_yaml(file), file)
            names.update({k.lower(): v for k, v in extra["names"].items()})
            types.update(extra["types"])
        return cls(names=names, types=types, overrides=dict(overrides or {}))

    def describe(self, task_name: str, task_type: str, spec_instruction: str | None = None,
                 task_prompt: str | None = None) -> str:
        """The task description (not yet formatted); '' when nothing applies."""
        if task_name in self.overrides:
            return self.overrides[task_name]
        if task_type in self.overrides:
            return self.overrides[task_type]
        if spec_instruction:
            return spec_instruction
        key = task_name.lower()
        if key in self.names:
            return self.names[key]
        if task_prompt:
            return task_prompt
        return self.types.get(task_type, "")

    def prefix(self, task_name: str, task_type: str, prompt_type: str | None,
               spec_instruction: str | None = None, task_prompt: str | None = None) -> str:
        """The text put before every input of this side: ``Instruct: …\\nQuery: `` or ''."""
        if not applies(task_type, prompt_type):
            return ""
        return format_instruction(self.describe(task_name, task_type, spec_instruction, task_prompt))


def metadata_prompt(prompt: Any, prompt_type: str | None) -> str | None:
    """An mteb task's own prompt for one side (``prompt`` may be a str or {query, document})."""
    if isinstance(prompt, Mapping):
        value = prompt.get(prompt_type or "query") or prompt.get("query")
        return str(value) if value else None
    return str(prompt) if prompt else None
