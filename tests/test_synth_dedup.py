"""Synthesis dedup on raw output files (no Ray): exact id repeats keep their first copy."""

from __future__ import annotations

import json

from embedforge.schema import rows_to_table
from synth_reference import _finalise, _random_raw, _row


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


# --- the partitioned dedup (embedforge.synth.dedup) agrees with the reference above ---------


def _partitioned(rows: list[dict], parts: int, seed: int) -> tuple[list[dict], dict]:
    """Both steps as the job runs them: hash partitions (in shuffled order) of complete
    groups, by id, then by text key; counts from the blocks as the writer sums them."""
    import random

    import pyarrow as pa

    from embedforge.synth import dedup as d

    rng = random.Random(seed)

    def shuffle(table: pa.Table, key: str) -> list[pa.Table]:
        groups: dict[int, list[int]] = {}
        for i, k in enumerate(table[key].to_pylist()):
            groups.setdefault(hash(k) % parts, []).append(i)
        out = []
        for idx in groups.values():
            rng.shuffle(idx)
            out.append(table.take(pa.array(idx, pa.int64())))
        rng.shuffle(out)
        return out

    step1 = pa.concat_tables([d.resolve_ids(t) for t in shuffle(rows_to_table(rows), "id")])
    blocks = [d.resolve_texts(t) for t in shuffle(step1, d.KEY)]
    totals = d.merge_stats([d.block_stats(b) for b in blocks])
    kept = pa.concat_tables(blocks).drop_columns(list(d.STAT_COLUMNS)).to_pylist()
    return kept, totals


def _canon(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_partitioned_dedup_keeps_the_same_rows_and_counts_as_the_reference(tmp_path):
    for seed in range(6):
        rows = _random_raw(seed)
        blocks = [rows[i:i + 37] for i in range(0, len(rows), 37)]
        ref, dedup = _finalise(tmp_path / f"ref{seed}", blocks)
        assert dedup.drop and dedup.repeated  # the input exercises both rules
        for parts in (1, 3, 7):
            kept, totals = _partitioned(rows, parts, seed)
            assert _canon(kept) == _canon(ref), (seed, parts)
            assert totals["rows_dropped"] == dedup.rows_dropped
            assert totals["text_repeats"] == len(dedup.drop)
            assert totals["repeated_ids"] == len(dedup.repeated)
            assert totals["repeated_examples"] == sorted(
                f"{i} {n}" for i, n in dedup.repeated.items())[:20]
            by_source: dict[str, int] = {}
            for r in ref:
                by_source[r["source"]] = by_source.get(r["source"], 0) + 1
            assert totals["rows_by_source"] == by_source


def test_partitioned_dedup_on_the_reference_cases():
    from embedforge.synth.dedup import block_stats, copy_digest, dedup_table

    orig = _row("What do bees do?", "Bees make honey.", source="original")
    repeat = _row("what do bees do", "bees make honey", parent="p1")
    a = _row("what do bees make", "honey is made by bees", parent="p1", meta={"parent": 1})
    b = _row("what do bees make", "honey is made by bees", parent="p2", meta={"parent": 2})
    for order in ([orig, repeat, b, a, dict(repeat)], [a, dict(repeat), b, repeat, orig]):
        out = dedup_table(rows_to_table(order))
        assert sorted(out["id"].to_pylist()) == sorted([orig["id"], a["id"]])
        kept_a = [r for r in out.select(list(a)).to_pylist() if r["id"] == a["id"]]
        assert kept_a == [min(a, b, key=copy_digest)]  # the smaller digest, in any order
        st = block_stats(out)
        # b (a later copy of a), and both copies of repeat (its first copy repeats orig)
        assert st["rows_dropped"] == 3 and st["text_repeats"] == 1 and st["repeated_ids"] == 2
