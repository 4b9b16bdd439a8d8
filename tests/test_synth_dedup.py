"""Synthesis dedup on raw output files (no Ray): exact id repeats keep their first copy."""

from __future__ import annotations

import json

from embedforge import io as eio
from embedforge.schema import Sample, rows_to_table
from embedforge.synth.config import SynthConfig
from embedforge.synth.stage import Finalizer, duplicate_ids


def _row(query: str, positive: str, source: str = "paraphrase", parent: str | None = "p0",
         meta: dict | None = None) -> dict:
    return Sample(dataset="d", kind="retrieval", query=query, positive=positive, source=source,
                  parent_id=parent if source != "original" else None, meta=meta or {}).to_row()


def _finalise(tmp_path, blocks: list[list[dict]]) -> tuple[list[dict], object]:
    raw = tmp_path / "raw"
    for i, rows in enumerate(blocks):
        eio.write_parquet_atomic(rows_to_table(rows), str(raw / f"part-{i}.parquet"))
    dedup = duplicate_ids(str(raw))
    fin = Finalizer(dedup, SynthConfig(input=str(tmp_path), output=str(tmp_path / "o"))
                    .model_dump_json())
    out: list[dict] = []
    for rows in blocks:  # one finaliser sees every block, as the single-actor pool does
        out += fin(rows_to_table(rows)).to_pylist()
    return out, dedup


def test_exact_duplicate_id_keeps_one_copy_and_drops_only_the_later(tmp_path):
    orig = _row("what do bees do", "bees make honey", source="original")
    a = _row("what do bees make", "honey is made by bees", parent="p1",
             meta={"technique": "paraphrase", "parent": 1})
    b = _row("what do bees make", "honey is made by bees", parent="p2",
             meta={"technique": "paraphrase", "parent": 2})
    assert a["id"] == b["id"] and a["meta"] != b["meta"]
    other = _row("where do bees live", "in hives")
    # the copies land in different blocks, in the order opposite to their digest order
    out, dedup = _finalise(tmp_path, [[orig, b, other], [a]])
    ids = [r["id"] for r in out]
    assert sorted(ids) == sorted([orig["id"], a["id"], other["id"]])  # one copy survives
    assert dedup.repeated == {a["id"]: 2} and dedup.rows_dropped == 1
    # which copy survives is fixed by content, not by block order
    again, _ = _finalise(tmp_path / "again", [[a], [other, orig, b]])
    assert [r for r in again if r["id"] == a["id"]] == [r for r in out if r["id"] == a["id"]]


def test_byte_identical_copies_and_normalised_repeats(tmp_path):
    orig = _row("What do bees do?", "Bees make honey.", source="original")
    repeat = _row("what do bees do", "bees make honey", parent="p1")  # normalises to orig
    twin = _row("how big is a hive", "a hive holds 50,000 bees", parent="p3")
    out, dedup = _finalise(tmp_path, [[orig, twin], [repeat, dict(twin)], [dict(twin)]])
    assert [r["id"] for r in out].count(twin["id"]) == 1
    assert repeat["id"] not in {r["id"] for r in out}  # a generated repeat never displaces
    assert orig["id"] in {r["id"] for r in out}
    assert dedup.rows_dropped == 3 and dedup.repeated == {twin["id"]: 3}
    # a repeated id whose first copy repeats an earlier text goes entirely
    out2, d2 = _finalise(tmp_path / "b", [[orig, repeat], [dict(repeat)]])
    assert [r["id"] for r in out2] == [orig["id"]] and d2.rows_dropped == 2
    assert json.loads(out[0]["meta"]) == {}
