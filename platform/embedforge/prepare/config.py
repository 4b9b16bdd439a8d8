"""Config of `jobs/prepare.py`."""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ..config import ConfigError, JobConfig, _parse_scalar, named_option
from ..data.spec import SourceSpec, parse_source_arg
from ..safety import FORCE_HELP, path_field


class PrepareConfig(JobConfig):
    """Turn raw sources into the unified multi-task sample table (Parquet) with a Ray Data job.

    Sources: --source NAME=FORMAT:PATH (repeatable). FORMAT is one of beir, title_body, qa,
    reading, claim, sts, nli, pair_label, classification. PATH is a file, folder, glob, fsspec
    URI, or hf:ORG/NAME[:split]. Column roles: --map NAME.ROLE=COLUMN. Other per-source options
    (split, columns, header, delimiter, instruction, score_range, labels, label_map, limit):
    --option NAME.KEY=VALUE.
    """

    cli_exclude: ClassVar[frozenset[str]] = frozenset({"sources"})

    sources: list[SourceSpec] = Field(default_factory=list, description="input sources")
    output: str = path_field("output", description="output folder (local path or fsspec URI)")
    instructions: dict[str, str] = Field(
        default_factory=dict, description="dataset name -> task description (overrides defaults)"
    )
    chunk_mb: float = Field(64.0, gt=0, description="split large files into pieces of about this size")
    flush_rows: int = Field(100_000, ge=1, description="rows per Parquet part within one piece")
    num_cpus_per_task: float = Field(0.5, gt=0, description="Ray CPUs per read/transform task")
    resume: bool = Field(True, description="skip pieces already finished by an earlier run")
    force: bool = Field(False, description=FORCE_HELP)
    ray_address: str | None = Field(
        None, description="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)"
    )
    num_cpus: int | None = Field(None, description="CPUs of the local cluster when one is started")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[SourceSpec]) -> list[SourceSpec]:
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique, repeated: {', '.join(sorted(dup))}")
        return v

    @classmethod
    def add_cli_extras(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("sources")
        g.add_argument("--source", action="append", default=[], metavar="NAME=FORMAT:PATH",
                       help="add a source (repeatable)")
        g.add_argument("--map", action="append", default=[], metavar="NAME.ROLE=COLUMN",
                       help="column holding a role for a source (repeatable)")
        g.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE",
                       help="per-source option, e.g. stsb.columns=genre,file,year,id,score,text1,text2")

    @classmethod
    def apply_cli_extras(cls, ns: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
        sources: list[dict[str, Any]] = [
            s if isinstance(s, dict) else s.model_dump() for s in data.get("sources", [])
        ]
        for text in ns.source:
            try:
                spec = parse_source_arg(text)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            sources.append(spec.model_dump(exclude_none=True))
        by_name = {s.get("name"): s for s in sources}

        def target(item: str, flag: str) -> tuple[dict[str, Any], str, str]:
            return named_option(item, flag, by_name, "source")

        for item in ns.map:
            spec, role, column = target(item, "--map")
            spec.setdefault("map", {})[role] = column.strip()
        list_keys = {"columns", "labels"}
        for item in ns.option:
            spec, key, value = target(item, "--option")
            if key in list_keys and not value.strip().startswith("["):
                parsed: Any = [v.strip() for v in value.split(",")]
            elif key in ("instruction", "path", "split", "delimiter"):
                parsed = value.encode().decode("unicode_escape") if key == "delimiter" else value
            else:
                parsed = _parse_scalar(value, "scalar")
            spec[key] = parsed
        data["sources"] = sources
        return data
