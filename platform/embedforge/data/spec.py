"""How one input source is described: name, format, path and per-source options."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import parse_range, safe_name
from ..safety import path_field

FORMAT_NAMES = (
    "beir", "title_body", "qa", "reading", "claim", "sts", "nli", "pair_label", "classification",
)


class SourceSpec(BaseModel):
    """One source of raw data for the prepare stage.

    ``map`` maps a format's *role* (``query``, ``positive``, ``text1``…) to the column holding
    it; ``columns`` names the fields of header-less TSV/CSV files in order.
    """

    model_config = ConfigDict(extra="forbid")
    cli_label: ClassVar[str] = "--source {name}"  # how data-safety errors name its path

    name: str = Field(description="dataset name written to the `dataset` column")
    format: str = Field(description="one of " + ", ".join(FORMAT_NAMES))
    path: str = path_field("input", description="file, folder, glob, fsspec URI, or hf:ORG/NAME[:split]")
    split: str | None = Field(None, description="BEIR qrels split / HF split")
    map: dict[str, str] = Field(default_factory=dict, description="role -> column")
    columns: list[str] | None = path_field("none", None, description="field names of header-less files")
    header: bool | None = Field(None, description="first line is a header (auto when unset)")
    delimiter: str | None = Field(None, description="field separator (TSV/TXT tab, CSV comma)")
    instruction: str | None = Field(None, description="task description for the instruction")
    score_range: tuple[float, float] | None = Field(
        None, description="STS score range, e.g. [0, 5]; rows outside are rejected"
    )
    labels: list[str] | None = Field(
        None, description="allowed labels (classification); others are rejected"
    )
    label_map: dict[str, Any] | None = Field(
        None, description="raw label -> canonical label/score (NLI, pair_label, classification)"
    )
    limit: int | None = Field(None, ge=1, description="read at most this many rows per file")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in FORMAT_NAMES:
            raise ValueError(f"unknown format {v!r}; choose one of {', '.join(FORMAT_NAMES)}")
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_name(v, "source")

    @field_validator("score_range", mode="before")
    @classmethod
    def _parse_range(cls, v: Any) -> Any:
        return parse_range(v)


def parse_source_arg(text: str) -> SourceSpec:
    """``NAME=FORMAT:PATH[:split]`` -> SourceSpec.

    A trailing ``:split`` is recognised only when it holds no ``/`` so fsspec URIs such as
    ``s3://bucket/x`` stay intact; for ``hf:`` paths the split stays inside the URI.
    """
    name, sep, rest = text.partition("=")
    fmt, sep2, path = rest.partition(":")
    if not (sep and sep2 and name.strip() and path.strip()):
        raise ValueError(f"--source expects NAME=FORMAT:PATH, got {text!r}")
    split = None
    if path.startswith("hf:"):
        split = path[3:].rpartition(":")[2] if ":" in path[3:] else None
    else:
        head, colon, tail = path.rpartition(":")
        if colon and head and re.fullmatch(r"[A-Za-z0-9_.\-]+", tail):
            path, split = head, tail
    return SourceSpec(name=name.strip(), format=fmt.strip(), path=path.strip(), split=split)
