import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedforge.config import ConfigError
from embedforge.schema import Sample, rows_to_table
from embedforge.train.data import TrainData, materialize
from embedforge.train.sampler import BatchPlan, canonical_order, distinct_capacity, pack_batches


def write_samples(folder, samples):
    os.makedirs(folder / "samples", exist_ok=True)
    pq.write_table(rows_to_table([s.to_row() for s in samples]), folder / "samples" / "part-0.parquet")
    return str(folder)


def fixture_samples():
    out = []
    for i in range(8):
        out.append(Sample(dataset="docs", kind="retrieval", instruction="Find the doc", query=f"q{i}",
                          positive=f"d{i}", negatives=[f"n{i}a", f"n{i}b"][: i % 3]))
        out.append(Sample(dataset="sts", kind="pair", query=f"a{i}", positive=f"b{i}", score=i % 3,
                          meta={"range": [0, 2]}))
        out.append(Sample(dataset="intent", kind="classification", instruction="Classify",
                          query=f"text {i}", label=f"L{i % 3}"))
    return out


def test_materialize_groups_by_dataset_and_kind(tmp_path):
    src = write_samples(tmp_path / "in", fixture_samples())
    manifest = materialize([src], str(tmp_path / "data"), ("retrieval", "pair", "classification"))
    assert {(d["name"], d["kind"], d["size"]) for d in manifest} == {
        ("docs", "retrieval", 8), ("sts", "pair", 8), ("intent", "classification", 8)}
    only = materialize([src], str(tmp_path / "data1"), ("retrieval",))
    assert [d["kind"] for d in only] == ["retrieval"]


def test_a_sample_id_is_taken_from_the_first_input_that_has_it(tmp_path):
    import pyarrow.ipc as ipc

    everything = fixture_samples()
    mined = [s.model_copy(update={"negatives": ["mined negative"]}) for s in everything[:6]
             if s.kind == "retrieval"]
    a = write_samples(tmp_path / "mined", mined)
    b = write_samples(tmp_path / "all", everything)
    manifest = materialize([a, b], str(tmp_path / "data"), ("retrieval", "pair", "classification"))
    sizes = {d["name"]: d["size"] for d in manifest}
    assert sizes == {"docs": 8, "sts": 8, "intent": 8}  # 2 mined + 6 from the second folder
    docs = ipc.open_file(str(tmp_path / "data" / "docs.arrow")).read_all().to_pylist()
    by_id = {r["id"]: r["negatives"] for r in docs}
    assert [by_id[s.id] for s in mined] == [["mined negative"]] * 2
    assert len(by_id) == 8


def test_batches_apply_instructions_pad_negatives_and_draw_same_label_positives(tmp_path):
    src = write_samples(tmp_path / "in", fixture_samples())
    manifest = materialize([src], str(tmp_path / "data"), ("retrieval", "pair", "classification"))
    data = TrainData(str(tmp_path / "data"), manifest, num_negatives=3)
    idx = {d.name: i for i, d in enumerate(data.infos)}
    r = data.batch(idx["docs"], [0, 1, 2], step=0)
    assert r.prompts[0] == "Instruct: Find the doc\nQuery: " and not r.symmetric
    assert r.queries[0] == "q0" and r.positives[0] == "d0"
    assert data.k_of(idx["docs"]) == 2  # no sample has 3 negatives: 2 slots, not 3
    assert r.negatives == ["", "", "n1a", "", "n2a", "n2b"]
    assert r.neg_mask == [False, False, True, False, True, True]
    c = data.batch(idx["intent"], [0, 1, 2, 3], step=5)
    assert c.symmetric and set(c.prompts) == {"Instruct: Classify\nQuery: "}
    for q, p, lab in zip(c.queries, c.positives, c.labels, strict=True):
        assert q.startswith("text ") and p != q
        assert lab == int(p[-1]) % 3  # "text i" has label L(i % 3)
    assert all(nl != lab for lab, nl in zip(c.labels, [c.neg_labels[i * 3] for i in range(4)], strict=True))
    again = data.batch(idx["intent"], [0, 1, 2, 3], step=5)
    assert again.positives == c.positives  # draws are a function of (seed, step, row)
    p = data.batch(idx["sts"], [0, 1], step=0)
    assert p.scores == [0.0, 1.0] and p.negatives == []
    plan = BatchPlan(data.infos, {"retrieval": 4, "pair": 4, "classification": 4}, keys_of=data.keys)
    assert all(len(plan.batch(s)[1]) == 4 for s in range(20))


def test_bad_rows_are_named(tmp_path):
    bad = rows_to_table([Sample(dataset="sts", kind="pair", query="a", positive="b", score=1,
                                meta={"range": [0, 5]}).to_row()])
    bad = bad.set_column(bad.schema.get_field_index("score"), "score", pa.array([None], pa.float64()))
    os.makedirs(tmp_path / "in" / "samples")
    pq.write_table(bad, tmp_path / "in" / "samples" / "p.parquet")
    with pytest.raises(ConfigError, match=r"id=.*\(pair\): field 'score' is null"):
        materialize([str(tmp_path / "in")], str(tmp_path / "data"), ("pair",))
    with pytest.raises(ConfigError, match="no unified samples"):
        materialize([str(tmp_path / "nothing")], str(tmp_path / "d2"), ("pair",))


def test_packing_keys_are_64_bit_hashes_that_pack_like_the_texts(tmp_path):
    samples = []
    for i in range(30):  # shared positives, negatives and swapped pairs: real clashes
        samples.append(Sample(dataset="docs", kind="retrieval", query=f"q{i % 17}",
                              positive=f"d{i % 7}", negatives=[f"d{(i + 1) % 7}", f"n{i % 5}"]))
        a, b = f"a{i % 5}", f"b{i % 3}"
        samples.append(Sample(dataset="sts", kind="pair", query=a if i % 2 else b,
                              positive=b if i % 2 else a, score=i % 3, meta={"range": [0, 2]}))
        samples.append(Sample(dataset="intent", kind="classification", query=f"text {i % 11}",
                              label=f"L{i % 3}"))
    src = write_samples(tmp_path / "in", samples)
    manifest = materialize([src], str(tmp_path / "data"), ("retrieval", "pair", "classification"))
    data = TrainData(str(tmp_path / "data"), manifest, num_negatives=2)
    for i, info in enumerate(data.infos):
        t = data.table(i)
        q, p = t.column("query").to_pylist(), t.column("positive").to_pylist()
        if info.kind == "classification":
            texts = [frozenset((x,)) for x in q]
        elif info.kind == "pair":
            texts = [frozenset(("\x1f".join(sorted((a, b))),)) for a, b in zip(q, p, strict=True)]
        else:
            texts = [frozenset((a, b, *n[:2])) for a, b, n in
                     zip(q, p, t.column("negatives").to_pylist(), strict=True)]
        keys = data.keys(i)
        assert all(isinstance(k, int) and 0 <= k < 2**64 for ks in keys for k in ks)
        assert [len(k) for k in keys] == [len(k) for k in texts]
        assert canonical_order(keys) == canonical_order(texts)
        assert distinct_capacity(keys) < info.size  # the fixture really clashes
        assert distinct_capacity(keys) == distinct_capacity(texts)
        order = canonical_order(texts)
        for size in (2, 3, 4):
            assert pack_batches(keys, order, size) == pack_batches(texts, order, size)


def _whole_file_materialize(inputs, out_dir, kinds):
    """The implementation before streaming (pq.read_table per file), kept as the oracle."""
    import pyarrow.compute as pc

    from embedforge import io as eio
    from embedforge.train.data import COLUMNS, _safe, sample_files

    os.makedirs(out_dir, exist_ok=True)
    writers, sizes, names, seen = {}, {}, {}, set()
    for inp in inputs:
        for path in sample_files(inp):
            fs, p = eio.fs_and_path(path)
            table = pq.read_table(p, filesystem=fs)
            ds, kd = table.column("dataset"), table.column("kind")
            for pair in sorted(set(zip(ds.to_pylist(), kd.to_pylist(), strict=True))):
                part = table.filter(pc.and_(pc.equal(ds, pair[0]), pc.equal(kd, pair[1])))
                dataset, kind = pair
                if kind not in kinds:
                    continue
                ids = part.column("id").to_pylist()
                fresh = [i not in seen for i in ids]
                if not all(fresh):
                    part = part.filter(pa.array(fresh))
                    if part.num_rows == 0:
                        continue
                seen.update(ids)
                part = part.select(COLUMNS)
                if pair not in writers:
                    names[pair] = _safe(dataset if kind == "retrieval" else f"{dataset}.{kind}")
                    writers[pair] = pa.ipc.new_file(os.path.join(out_dir, f"{names[pair]}.arrow"),
                                                    part.schema)
                writers[pair].write_table(part)
                sizes[pair] = sizes.get(pair, 0) + part.num_rows
    for w in writers.values():
        w.close()
    return sorted(({"name": d, "kind": k, "size": sizes[(d, k)], "file": f"{names[(d, k)]}.arrow"}
                   for (d, k) in writers), key=lambda d: (d["kind"], d["name"]))


def _tricky_inputs(tmp_path):
    """Two folders, several files each, many small row groups, and every kind of repeated id:
    across folders, across files, across groups of one file (the later group's copy in an
    earlier row group), and inside one group."""
    def s(i, dataset="docs", kind="retrieval", tag=""):
        extra = {"retrieval": dict(negatives=[f"n{i}{tag}"][: i % 2]),
                 "pair": dict(score=i % 3, meta={"range": [0, 2]}),
                 "classification": dict(label=f"L{i % 3}")}[kind]
        return Sample(id=f"id{i}", dataset=dataset, kind=kind, query=f"q{i}{tag}",
                      positive=f"d{i}{tag}", **extra)

    def write(folder, name, samples):
        os.makedirs(folder, exist_ok=True)
        pq.write_table(rows_to_table([x.to_row() for x in samples]), folder / name, row_group_size=3)

    a, b = tmp_path / "a" / "samples", tmp_path / "b" / "samples"
    write(a, "part-0.parquet",
          [s(i, "zeta", "retrieval", "A") for i in range(0, 6)]         # zeta first in the file...
          + [s(i, "alpha", "retrieval", "A") for i in range(3, 9)]      # ...alpha wins ids 3-5
          + [s(9, "alpha", "retrieval", "A"), s(9, "alpha", "retrieval", "A2")]  # same group twice
          + [s(i, "sts", "pair", "A") for i in range(20, 25)])
    write(a, "part-1.parquet",
          [s(i, "alpha", "retrieval", "B") for i in range(7, 12)]       # 7-9 taken by part-0
          + [s(i, "intent", "classification", "B") for i in range(30, 37)])
    write(b, "part-0.parquet",
          [s(i, "beta", "retrieval", "C") for i in range(0, 14)]
          + [s(i, "sts", "pair", "C") for i in range(18, 26)]
          + [s(i, "intent", "classification", "C") for i in range(33, 40)])
    write(b, "part-1.parquet", [s(i, "skip", "pair", "D") for i in range(40, 43)])
    return [str(tmp_path / "a"), str(tmp_path / "b")]


@pytest.mark.parametrize("kinds", [("retrieval", "pair", "classification"), ("retrieval",),
                                   ("classification", "pair")])
@pytest.mark.parametrize("batch_size", [1, 2, 4, 1024])
def test_streamed_materialize_writes_what_the_whole_file_version_wrote(tmp_path, kinds, batch_size):
    import pyarrow.ipc as ipc

    inputs = _tricky_inputs(tmp_path)
    assert pq.ParquetFile(inputs[0] + "/samples/part-0.parquet").num_row_groups > 3
    want = _whole_file_materialize(inputs, str(tmp_path / "old"), kinds)
    got = materialize(inputs, str(tmp_path / "new"), kinds, batch_size=batch_size)
    assert got == want
    for d in want:
        old = ipc.open_file(str(tmp_path / "old" / d["file"])).read_all()
        new = ipc.open_file(str(tmp_path / "new" / d["file"])).read_all()
        assert new.schema.equals(old.schema, check_metadata=True)
        assert new.to_pylist() == old.to_pylist()  # same rows, same order
    names = {d["name"] for d in got}
    if "retrieval" in kinds:
        assert {"alpha", "zeta", "beta"} <= names


def test_materialize_reads_record_batches_not_whole_files(tmp_path, monkeypatch):
    """Peak Arrow memory while materializing a ~24 MB file stays near one batch: the
    whole-file version (pq.read_table) needs the decoded file at once."""
    import random as _random

    from embedforge.train import data as train_data

    rng = _random.Random(0)
    n, width = 6000, 4000
    blob = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(width + n))
    rows = [Sample(dataset="big", kind="retrieval", query=f"q{i}", positive=blob[i:i + width])
            .to_row() for i in range(n)]
    os.makedirs(tmp_path / "in" / "samples")
    path = tmp_path / "in" / "samples" / "part-0.parquet"
    pq.write_table(rows_to_table(rows), path, row_group_size=256, compression="none")
    decoded = n * width
    assert decoded > 20e6

    reads = []
    real = train_data.read_batches

    def counting(path, columns=None, batch_size=None):
        for b in real(path, columns, batch_size):
            reads.append(b.num_rows)
            yield b

    monkeypatch.setattr(train_data, "read_batches", counting)
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    old_pool = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        manifest = materialize([str(tmp_path / "in")], str(tmp_path / "data"), ("retrieval",),
                               batch_size=256)
    finally:
        pa.set_memory_pool(old_pool)
    assert manifest[0]["size"] == n
    assert max(reads) <= 256 and sum(reads) == 2 * n  # two passes, in batches
    assert pool.max_memory() < decoded / 4, (pool.max_memory(), decoded)
