"""Which instruction a task gets at evaluation time, and on which side of it.

Shipped as data (``eval/instructions.yaml``) so a new task needs no code change, overridable per
run (``instruction_map``, ``instruction_file``). The prompt format and the symmetric/asymmetric
rule are the training ones (:mod:`embedforge.data.instructions`), so a model is evaluated
with exactly the prompts it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from ..config import ConfigError
from ..data.instructions import default_instructions, format_instruction, is_symmetric

# mteb task type -> the platform's sample kind (decides symmetric vs asymmetric)
TYPE_KIND: dict[str, str] = {
    "STS": "sts",
    "PairClassification": "pair",
    "Classification": "classification",
    "MultilabelClassification": "classification",
    "Clustering": "clustering",
}


def task_kind(task_type: str) -> str:
    """``retrieval`` for every asymmetric type (Retrieval, Reranking, …)."""
    return TYPE_KIND.get(task_type, "retrieval")


def applies(task_type: str, prompt_type: str | None) -> bool:
    """Instruction on this side? Documents of asymmetric tasks stay raw (one index serves every
    task); symmetric tasks format both sides, as in training."""
    return prompt_type != "document" or is_symmetric(task_kind(task_type))


@lru_cache(maxsize=1)
def shipped() -> dict[str, dict[str, str]]:
    text = resources.files("embedforge.eval").joinpath("instructions.yaml").read_text("utf-8")
    return _validated(yaml.safe_load(text) or {}, "embedforge/eval/instructions.yaml")


def _validated(data: Any, origin: str) -> dict[str, dict[str, str]]:
    if not isinstance(data, dict) or set(data) - {"tasks", "types"}:
        raise ConfigError(f"{origin}: expected a mapping with `tasks:` and/or `types:`")
    out = {}
    for key in ("tasks", "types"):
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{origin}: `{key}:` must map names to task descriptions")
        out[key] = {str(k): str(v) for k, v in section.items()}
    return out


@dataclass
class InstructionMap:
    """Task descriptions by task name and task type, with per-run overrides on top."""

    tasks: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, file: str | None = None, overrides: Mapping[str, str] | None = None,
             replace: bool = False) -> InstructionMap:
        """Shipped map, extended (or replaced, ``replace=True``) by ``file``, then ``overrides``."""
        base = {"tasks": {}, "types": {}} if replace and file else shipped()
        tasks = {k.lower(): v for k, v in base["tasks"].items()}
        types = dict(base["types"])
        if file:
            from ..config import load_yaml

            extra = _validated(load_yaml(file), file)
            tasks.update({k.lower(): v for k, v in extra["tasks"].items()})
            types.update(extra["types"])
        return cls(tasks=tasks, types=types, overrides=dict(overrides or {}))

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
        if key in self.tasks:
            return self.tasks[key]
        trained = default_instructions()["datasets"]
        if key in trained:
            return trained[key]
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
