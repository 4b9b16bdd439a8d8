import itertools
import json

import pytest

from embedforge import io as eio


def _write_jsonl(path, n):
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"i": i, "text": "x" * (i % 17)}) + "\n")
            if i % 10 == 3:
                fh.write("\n")  # blank lines are skipped but still counted as lines


def test_chunked_file_gives_same_records_and_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    _write_jsonl(path, 500)
    whole = [(r.line, r.data["i"]) for r in eio.iter_records(eio.FileUnit(str(path)))]
    units = eio.plan_file_units(str(path), chunk_bytes=997)
    assert len(units) > 10
    assert units[0].start == 0 and units[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in itertools.pairwise(units))
    pieces = [(r.line, r.data["i"]) for u in units for r in eio.iter_records(u)]
    assert pieces == whole
    lines = path.read_text().split("\n")
    for line, i in whole[::37]:
        assert json.loads(lines[line - 1])["i"] == i


def test_small_or_compressed_files_are_one_unit(tmp_path):
    path = tmp_path / "a.jsonl"
    _write_jsonl(path, 5)
    assert len(eio.plan_file_units(str(path), chunk_bytes=1 << 20)) == 1
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("text,label\n" * 200)
    assert len(eio.plan_file_units(str(csv_path), chunk_bytes=10)) == 1


def test_jsonl_bad_lines_become_error_records(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n[1, 2]\n\xff\xfe\n{"a": 2}\n')
    recs = list(eio.iter_records(eio.FileUnit(str(path))))
    assert [(r.line, r.reason or "ok") for r in recs] == [
        (1, "ok"), (2, "invalid_json"), (3, "wrong_type"), (4, "bad_encoding"), (5, "ok")]


def test_csv_quotes_and_missing_columns(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('text,label\n"hello, world",a\n"multi\nline",b\nonly\n')
    recs = list(eio.iter_records(eio.FileUnit(str(path)), has_header=True))
    assert recs[0].data == {"text": "hello, world", "label": "a"}
    assert recs[1].data == {"text": "multi\nline", "label": "b"}
    assert recs[2].reason == "missing_field" and recs[2].line == 5


def test_tsv_headerless_with_columns(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('a\t"quoted" b\t1\nc\td\n')
    recs = list(eio.iter_records(eio.FileUnit(str(path)), columns=["x", "y", "z"]))
    assert recs[0].data == {"x": "a", "y": '"quoted" b', "z": "1"}
    assert recs[1].reason == "missing_field"


def test_expand_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jsonl", "sub/b.tsv", "sub/c.jsonl.gz", "skip.md"):
        (tmp_path / name).write_text("")
    assert [p.rsplit("/", 1)[1] for p in eio.expand_paths(str(tmp_path))] == ["a.jsonl", "b.tsv", "c.jsonl.gz"]
    assert len(eio.expand_paths(str(tmp_path / "*.jsonl"))) == 1
    with pytest.raises(eio.SourceError, match="does not exist"):
        eio.expand_paths(str(tmp_path / "nope"))
    with pytest.raises(eio.SourceError, match="no input files"):
        eio.expand_paths(str(tmp_path / "*.parquet"))


def test_parse_hf_uri():
    assert eio.parse_hf_uri("hf:org/name") == ("org/name", None, None)
    assert eio.parse_hf_uri("hf:org/name:validation") == ("org/name", None, "validation")
    assert eio.parse_hf_uri("hf:org/name/cfg:test") == ("org/name", "cfg", "test")


def test_hf_loader_on_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"title": "t1", "body": "b1"}\n{"title": "t2", "body": "b2"}\n')
    recs = list(eio.iter_records(eio.FileUnit(f"hf:{folder}:train")))
    assert [r.data["title"] for r in recs] == ["t1", "t2"]
    with pytest.raises(eio.SourceError, match="cannot load"):
        list(eio.iter_records(eio.FileUnit(f"hf:{tmp_path}/missing-dataset")))


def test_atomic_writers_and_samples_reader(tmp_path):
    from embedforge.schema import Sample, rows_to_table

    row = Sample(dataset="d", kind="retrieval", query="q", positive="p").to_row()
    eio.write_parquet_atomic(rows_to_table([row]), str(tmp_path / "out" / "samples" / "part-0.parquet"))
    assert not list((tmp_path / "out" / "samples").glob("*.tmp-*"))
    assert eio.read_samples(str(tmp_path / "out")).num_rows == 1
    with pytest.raises(eio.SourceError):
        eio.read_samples(str(tmp_path / "empty"))


def test_sniff_delimited(tmp_path):
    tabbed = tmp_path / "stsb.csv"  # a ".csv" that is tab-separated, as STS-B ships
    tabbed.write_text("main\tMSRvid\t5.0\ta\tb\n")
    assert eio.sniff_delimited(str(tabbed)) == ("\t", ["main", "MSRvid", "5.0", "a", "b"])
    quoted = tmp_path / "q.csv"
    quoted.write_text('\ufeff"text, raw",label\nx,1\n')
    assert eio.sniff_delimited(str(quoted)) == (",", ["text, raw", "label"])
    tsv = tmp_path / "one.tsv"
    tsv.write_text("only,column\n")
    assert eio.sniff_delimited(str(tsv)) == ("\t", ["only,column"])
    assert eio.sniff_delimited(str(tsv), ",") == (",", ["only", "column"])
