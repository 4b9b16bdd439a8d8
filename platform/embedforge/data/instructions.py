"""Instructions in the QZhou-Embedding format: ``Instruct: {task}\\nQuery: {text}``.

Asymmetric retrieval puts the instruction on the query only (documents stay raw, so one corpus
index serves every task); symmetric tasks (STS, pairs, classification, clustering) put it on
both sides, because both sides are "queries" of the same task.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

PROMPT_TEMPLATE = "Instruct: {task}\nQuery: "
SYMMETRIC_KINDS = frozenset({"pair", "classification", "clustering", "sts"})


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


@lru_cache(maxsize=1)
def default_instructions() -> dict[str, dict[str, str]]:
    """Shipped defaults: ``{"datasets": {name: task}, "formats": {format: task}}``."""
    text = resources.files("embedforge.data").joinpath("instructions.yaml").read_text("utf-8")
    data = yaml.safe_load(text) or {}
    return {"datasets": dict(data.get("datasets", {})), "formats": dict(data.get("formats", {}))}


def resolve_instruction(
    dataset: str, fmt: str, explicit: str | None = None, overrides: dict[str, str] | None = None
) -> str:
    """Pick the task description: explicit > config overrides > shipped dataset > format default."""
    if explicit:
        return explicit
    if overrides and dataset in overrides:
        return overrides[dataset]
    defaults = default_instructions()
    key = dataset.lower()
    if key in defaults["datasets"]:
        return defaults["datasets"][key]
    return defaults["formats"].get(fmt, "")
