"""The unified sample schema: the contract between every stage.

One Parquet table, one row per training sample, whatever the task type (the QZhou-Embedding
"unified multi-task framework"). Column meanings by ``kind``:

=================  =========================  ==========================  =====================
column             retrieval                  pair                        classification
=================  =========================  ==========================  =====================
``query``          the query / title / claim  first text                  the text
``positive``       the relevant document      second text                 "" (drawn at training)
``negatives``      hard negatives (may be [])  []                          [] (drawn at training)
``score``          null                       similarity in ``meta.range`` null
``label``          null                       null                        the class label
=================  =========================  ==========================  =====================

``instruction`` holds the *task description* (e.g. "Given a claim, retrieve evidence"), never
the formatted prompt: the model side formats it (see :mod:`embedforge.instructions`),
so synthesis and mining work on raw text.

Classification contract: prepare keeps ``(text, label)`` rows as they are; the training stage
draws, per anchor, a random *same-label* text as positive and *other-label* texts as negatives
(:func:`embedforge.data.classification.draw_positive_and_negatives`) and masks every same-label
candidate out of the InfoNCE denominator.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Kind = Literal["retrieval", "pair", "classification"]
Source = Literal["original", "paraphrase", "augment", "llm_negative", "mined"]
KINDS: tuple[str, ...] = ("retrieval", "pair", "classification")
SOURCES: tuple[str, ...] = ("original", "paraphrase", "augment", "llm_negative", "mined")

COLUMNS: tuple[str, ...] = (
    "id",
    "dataset",
    "kind",
    "instruction",
    "query",
    "positive",
    "negatives",
    "score",
    "label",
    "source",
    "parent_id",
    "meta",
)

ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("positive", pa.string(), nullable=False),
        pa.field("negatives", pa.list_(pa.string()), nullable=False),
        pa.field("score", pa.float64(), nullable=True),
        pa.field("label", pa.string(), nullable=True),
        pa.field("source", pa.string(), nullable=False),
        pa.field("parent_id", pa.string(), nullable=True),
        pa.field("meta", pa.string(), nullable=False),
    ]
)


def make_id(dataset: str, *parts: Any) -> str:
    """Stable id from the dataset name and the sample's content.

    Content-addressed (not positional) so re-running prepare on the same data gives the same
    ids, and caches/resume logic in later stages can key on them.
    """
    h = hashlib.sha256()
    h.update(dataset.encode("utf-8"))
    for part in parts:
        h.update(b"\x1f")
        h.update(json.dumps(part, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:24]


class Sample(BaseModel):
    """One row of the unified table, validated."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    dataset: str
    kind: Kind
    instruction: str = ""
    query: str
    positive: str = ""
    negatives: list[str] = Field(default_factory=list)
    score: float | None = None
    label: str | None = None
    source: Source = "original"
    parent_id: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("query")
    @classmethod
    def _query_not_empty(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("query is empty")
        return v

    @model_validator(mode="after")
    def _kind_rules(self) -> Sample:
        if self.kind == "retrieval" and not self.positive.strip():
            raise ValueError("retrieval sample needs a non-empty positive")
        if self.kind == "pair":
            if not self.positive.strip():
                raise ValueError("pair sample needs a non-empty second text (positive)")
            if self.score is None:
                raise ValueError("pair sample needs a score")
        if self.kind == "classification" and (self.label is None or self.label == ""):
            raise ValueError("classification sample needs a label")
        if self.source != "original" and not self.parent_id:
            raise ValueError(f"source={self.source!r} needs a parent_id")
        if not self.id:
            self.id = make_id(
                self.dataset, self.kind, self.query, self.positive, self.negatives,
                self.score, self.label, self.source,
            )
        return self

    def to_row(self) -> dict[str, Any]:
        """Row for :data:`ARROW_SCHEMA` (``meta`` serialised to a JSON string)."""
        row = self.model_dump()
        row["meta"] = json.dumps(self.meta, ensure_ascii=False, sort_keys=True)
        return row


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Build an Arrow table with exactly the unified schema (also for zero rows)."""
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)


def validate_table(table: pa.Table) -> None:
    """Raise ``ValueError`` naming the first missing or mistyped column."""
    for field in ARROW_SCHEMA:
        if field.name not in table.column_names:
            raise ValueError(f"unified table is missing column {field.name!r}")
        actual = table.schema.field(field.name).type
        if actual != field.type and not (
            pa.types.is_large_string(actual) and pa.types.is_string(field.type)
        ):
            raise ValueError(f"column {field.name!r} has type {actual}, expected {field.type}")
