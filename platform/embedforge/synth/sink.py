"""The synthesize stage's writer for ``samples/`` (Ray Data edge; imports Ray)."""

from __future__ import annotations

from typing import Any

from ray.data._internal.datasource.parquet_datasink import ParquetDatasink
from ray.data.block import BlockAccessor

from ..schema import ARROW_SCHEMA
from .dedup import KEEP, block_stats, merge_stats


class FinalSink(ParquetDatasink):
    """Writes ``samples/`` one part file per write task as blocks finish, dropping rows whose
    ``_keep`` is false and the internal columns.

    Each write task returns its blocks' counts (:func:`.dedup.block_stats`); Ray hands the
    returns of the tasks that succeeded to ``on_write_complete`` on the driver, which adds
    them up: the summary gets exact counts (a retried task is counted once) without reading
    the output back, and the driver holds one small dict per write task, never rows.
    """

    totals: dict[str, Any] | None = None

    def write(self, blocks: Any, ctx: Any) -> dict[str, Any]:  # type: ignore[override]
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        stats = merge_stats([block_stats(t) for t in tables])
        clean = [t.filter(t[KEEP]).select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA)
                 if KEEP in t.column_names else t for t in tables]
        super().write(clean, ctx)
        return stats

    def on_write_complete(self, write_result: Any) -> None:
        super().on_write_complete(write_result)
        self.totals = merge_stats([r for r in write_result.write_returns if r is not None])
