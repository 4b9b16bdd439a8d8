"""The serve showcase's documents come from the first row groups, not the whole data folder."""

import os
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from embedforge import io as eio
from embedforge.pipeline.stages import demo_documents, first_documents
from embedforge.schema import Sample, rows_to_table


def _folder(tmp_path, n_files=3, rows=400):
    os.makedirs(tmp_path / "prepared" / "samples")
    for f in range(n_files):
        samples = []
        for i in range(rows):
            j = f * rows + i
            if j % 5 == 0:
                samples.append(Sample(dataset="sts", kind="pair", query=f"a{j}", positive=f"pair {j}",
                                      score=1.0, meta={"range": [0, 2]}))
            else:  # repeated positives: distinctness matters
                samples.append(Sample(dataset="docs", kind="retrieval", query=f"q{j}",
                                      positive=f"doc {j // 3}"))
        pq.write_table(rows_to_table([s.to_row() for s in samples]),
                       tmp_path / "prepared" / "samples" / f"part-{f}.parquet", row_group_size=50)
    cfg = SimpleNamespace(stages=["prepare", "serve"])
    f = SimpleNamespace(prepared=str(tmp_path / "prepared"), synth=str(tmp_path / "synth"))
    return cfg, f


def _whole_table_documents(path, limit):
    """What demo_documents did before: read every sample, then keep the first ``limit``."""
    table = eio.read_samples(path)
    kinds, positives = table.column("kind").to_pylist(), table.column("positive").to_pylist()
    docs = [p for k, p in zip(kinds, positives, strict=True) if k == "retrieval" and p]
    return list(dict.fromkeys(docs))[:limit]


def test_first_documents_stops_pulling_batches_once_it_has_enough():
    pulled = []

    def batches():
        for n in range(100):
            pulled.append(n)
            yield pa.record_batch({"kind": ["retrieval", "pair", "retrieval", "retrieval"],
                                   "positive": [f"d{n}", "x", f"d{n}", ""]})

    assert first_documents(batches(), 3) == ["d0", "d1", "d2"]
    assert pulled == [0, 1, 2]
    assert first_documents(batches(), 0) == []
    assert first_documents(iter([]), 5) == []


def test_demo_documents_match_the_whole_table_and_read_only_the_first_row_groups(tmp_path,
                                                                                  monkeypatch):
    cfg, f = _folder(tmp_path)
    rows = []
    real = eio.parquet_batches

    def counting(path, columns=None, batch_size=1024):
        for b in real(path, columns, 50):  # one batch per row group
            rows.append(b.num_rows)
            assert set(b.schema.names) == {"kind", "positive"}  # the texts of nothing else
            yield b

    monkeypatch.setattr(eio, "parquet_batches", counting)
    for limit in (1, 30, 500, 10_000):
        rows.clear()
        got = demo_documents(cfg, f, limit)
        assert got == _whole_table_documents(f.prepared, limit)
        if limit <= 30:
            assert sum(rows) <= 100  # a couple of row groups of a 1,200-row folder
    assert len(demo_documents(cfg, f, 10_000)) == len(set(demo_documents(cfg, f, 10_000)))
