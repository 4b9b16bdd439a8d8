"""Cross-unit dedup of prepare: the pure parts without Ray, and the Ray Data stage against the
driver loop it replaced (same copy kept, same files, same counts)."""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedforge import io as eio
from embedforge.prepare.stage import (
    SAMPLES_DIR,
    bucket_of,
    drop_cross_unit_duplicates,
    drop_rows,
    id_rows,
    later_copies,
    ordered_parts,
)
from embedforge.schema import Sample, rows_to_table


def driver_loop_dedup(out_dir, unit_order):
    """The implementation before Ray Data (a set of every id on the driver): the oracle."""
    files = eio.list_files(eio.join(out_dir, SAMPLES_DIR), ".parquet")
    rank = {u: i for i, u in enumerate(unit_order)}

    def key(path):
        uid = path.rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet").rsplit("-", 1)[0]
        return rank.get(uid, len(rank)), path

    seen, dropped = set(), defaultdict(Counter)
    for path in sorted(files, key=key):
        cols = pq.read_table(path, columns=["id", "dataset", "kind"]).to_pylist()
        keep = []
        for row in cols:
            dup = row["id"] in seen
            keep.append(not dup)
            if dup:
                dropped[row["dataset"]][row["kind"]] += 1
            seen.add(row["id"])
        if not all(keep):
            eio.write_parquet_atomic(pq.read_table(path).filter(pa.array(keep)), path)
    return {d: dict(c) for d, c in dropped.items()}


def _sample(i, dataset, kind="retrieval", tag=""):
    extra = {"retrieval": {}, "pair": dict(score=1.0, meta={"range": [0, 2]}),
             "classification": dict(label="L")}[kind]
    return Sample(id=f"id{i}", dataset=dataset, kind=kind, query=f"q{i}{tag}", positive=f"p{i}{tag}",
                  **extra)


def _write_parts(out_dir, parts):
    os.makedirs(os.path.join(out_dir, SAMPLES_DIR), exist_ok=True)
    for name, samples in parts.items():
        eio.write_parquet_atomic(rows_to_table([s.to_row() for s in samples]),
                                 os.path.join(out_dir, SAMPLES_DIR, f"part-{name}.parquet"))


def _parts():
    """Units b (first in the plan), a, c, and a unit no longer in the plan (z); ids repeated
    across units, across parts of one unit, inside one part, and in different datasets."""
    return {
        "a-0000": [_sample(i, "docs", tag="a") for i in range(0, 10)],
        "a-0001": [_sample(i, "docs", tag="a1") for i in range(8, 14)],
        "b-0000": [_sample(i, "docs", tag="b") for i in range(5, 12)],
        "c-0000": [_sample(i, "sts", "pair", tag="c") for i in (1, 2, 20, 21, 21, 30)],
        "c-0001": [_sample(i, "intent", "classification", tag="c") for i in (3, 40, 41)],
        "c-0002": [_sample(i, "intent", "classification", tag="c2") for i in (50, 51)],
        "z-0000": [_sample(i, "docs", tag="z") for i in (0, 13, 99)],
    }


ORDER = ["b", "a", "c"]


def test_later_copies_keeps_the_first_copy_in_file_then_row_order():
    rows = pa.table({"id": ["x", "y", "x", "z", "y", "x"], "file": [2, 0, 0, 1, 0, 0],
                     "row": [0, 3, 5, 0, 1, 2], "dataset": list("abcdef"), "kind": ["k"] * 6})
    got = later_copies(rows).to_pylist()
    # x: first copy is (file 0, row 2); y: (0, 1); z has one copy
    assert sorted((r["file"], r["row"]) for r in got) == [(0, 3), (0, 5), (2, 0)]
    assert later_copies(rows.slice(0, 0)).num_rows == 0


def test_id_rows_number_rows_and_buckets_are_stable(tmp_path):
    _write_parts(str(tmp_path), _parts())
    paths = ordered_parts(str(tmp_path), ORDER)
    assert [p.rsplit("/", 1)[-1] for p in paths][:2] == ["part-b-0000.parquet", "part-a-0000.parquet"]
    assert paths[-1].endswith("part-z-0000.parquet")
    t = id_rows(pa.table({"file": [0, 3]}), paths, 4)
    assert t.column("file").to_pylist() == [0] * 7 + [3] * 6
    assert t.column("row").to_pylist() == list(range(7)) + list(range(6))
    assert t.column("bucket").to_pylist() == bucket_of(t.column("id").to_pylist(), 4)
    assert bucket_of(["id1"], 1000) == bucket_of(["id1"], 1000)  # crc32, not hash()
    assert id_rows(pa.table({"file": pa.array([], pa.int64())}), paths, 4).num_rows == 0


def test_drop_rows_rewrites_one_file_and_counts(tmp_path):
    _write_parts(str(tmp_path), _parts())
    paths = ordered_parts(str(tmp_path), ORDER)
    f = [p.endswith("part-c-0000.parquet") for p in paths].index(True)
    counts = drop_rows(pa.table({"file": [f, f], "row": [0, 4], "dataset": ["sts", "sts"],
                                 "kind": ["pair", "pair"]}), paths)
    assert counts.to_pylist() == [{"dataset": "sts", "kind": "pair", "dropped": 2}]
    assert pq.read_table(paths[f]).column("id").to_pylist() == ["id2", "id20", "id21", "id30"]


@pytest.mark.integration
def test_ray_dedup_keeps_the_same_copies_as_the_driver_loop(tmp_path, ray_local):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    _write_parts(old, _parts())
    shutil.copytree(old, new)
    want = driver_loop_dedup(old, ORDER)
    got = drop_cross_unit_duplicates(new, ORDER)
    assert got == want and sum(sum(c.values()) for c in want.values()) > 5
    names = sorted(os.listdir(os.path.join(old, SAMPLES_DIR)))
    assert names == sorted(os.listdir(os.path.join(new, SAMPLES_DIR)))
    for name in names:
        a = pq.read_table(os.path.join(old, SAMPLES_DIR, name))
        b = pq.read_table(os.path.join(new, SAMPLES_DIR, name))
        assert a.equals(b, check_metadata=True), name
    assert eio.read_samples(new).column("id").to_pylist().count("id8") == 1
    assert drop_cross_unit_duplicates(new, ORDER) == {}  # idempotent: nothing left to drop
    empty = str(tmp_path / "empty")
    os.makedirs(os.path.join(empty, SAMPLES_DIR))
    assert drop_cross_unit_duplicates(empty, ORDER) == {}
