"""The synthesize stage's partitioned dedup + writer on a real local Ray cluster."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from embedforge import io as eio
from embedforge.schema import ARROW_SCHEMA, rows_to_table
from embedforge.synth.config import SynthConfig
from embedforge.synth.stage import _finalise
from synth_reference import _finalise as _reference
from synth_reference import _random_raw

pytestmark = pytest.mark.integration


def test_duplicates_across_many_blocks_resolve_as_the_reference_does(ray_local, tmp_path):
    rows = _random_raw(seed=11, n=400)
    blocks = [rows[i:i + 29] for i in range(0, len(rows), 29)]  # 14 raw part files
    raw = tmp_path / "raw"
    for i, block in enumerate(blocks):
        eio.write_parquet_atomic(rows_to_table(block), str(raw / f"part-{i:03d}.parquet"))
    ref, dedup = _reference(tmp_path / "ref", blocks)
    cfg = SynthConfig(input=str(tmp_path), output=str(tmp_path / "o"), num_actors=3,
                      cpus_per_actor=0.5)
    totals = _finalise(cfg, cfg.model_dump_json(), str(raw), str(tmp_path / "samples"))
    files = eio.list_files(str(tmp_path / "samples"), ".parquet")
    assert files and all(pq.read_schema(f).equals(ARROW_SCHEMA) for f in files)  # no _columns
    out = pq.ParquetDataset(files).read().to_pylist()
    assert sorted(json.dumps(r, sort_keys=True) for r in out) == sorted(
        json.dumps(r, sort_keys=True) for r in ref)
    assert dedup.drop and dedup.repeated and dedup.rows_dropped > 10
    assert totals["rows_dropped"] == dedup.rows_dropped
    assert totals["text_repeats"] == len(dedup.drop)
    assert totals["repeated_ids"] == len(dedup.repeated)
    by_source: dict[str, int] = {}
    for r in ref:
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    assert totals["rows_by_source"] == by_source
