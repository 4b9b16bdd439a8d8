"""The prepare stage's unit logic without Ray: planning, bad rows, markers."""

import json

import pytest

from embedforge import io as eio
from embedforge.data.spec import SourceSpec, parse_source_arg
from embedforge.prepare.units import plan_source, process_unit


def _run(spec: SourceSpec, out: str, chunk: int = 1 << 20):
    stats = [process_unit(t, out) for t in plan_source(spec, {}, chunk)]
    table = eio.read_samples(out) if any(s["samples"] for s in stats) else None
    rejected = [r for f in eio.list_files(f"{out}/rejected", ".jsonl") for r in eio.read_jsonl(f)]
    return stats, table, sorted(rejected, key=lambda r: r["line"])


def test_broken_jsonl_rows_are_reported_with_line_and_reason(fixtures_dir, tmp_path):
    spec = SourceSpec(name="arts", format="title_body", path=str(fixtures_dir / "broken_articles.jsonl"))
    stats, table, rejected = _run(spec, str(tmp_path))
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (2, "invalid_json"), (3, "missing_field"), (4, "empty_text"), (5, "wrong_type"),
        (6, "wrong_type"),
    ]
    assert all(r["file"].endswith("broken_articles.jsonl") and r["message"] for r in rejected)
    assert table.column("query").to_pylist() == ["A good first row", "Mapped column", "A good last row"]
    meta = [json.loads(m) for m in table.column("meta").to_pylist()]
    assert [m["line"] for m in meta] == [1, 8, 9]
    assert stats[0]["rows_in"] == 8 and stats[0]["samples"] == 3


def test_broken_sts_nli_and_classification(fixtures_dir, tmp_path):
    _, table, rej = _run(SourceSpec(name="s", format="sts", path=str(fixtures_dir / "broken_sts.tsv")),
                         str(tmp_path / "s"))
    assert [(r["line"], r["reason"]) for r in rej] == [
        (3, "missing_field"), (4, "bad_score"), (5, "bad_score"), (6, "empty_text")]
    assert table.num_rows == 4  # 2 good rows, each also swapped

    _, table, rej = _run(SourceSpec(name="n", format="nli", path=str(fixtures_dir / "broken_nli.tsv")),
                         str(tmp_path / "n"))
    assert [(r["line"], r["reason"]) for r in rej] == [(4, "unknown_label")]
    # identical premise/hypothesis is not emitted twice
    assert sorted(table.column("score").to_pylist()) == [0.0, 0.0, 1.0, 2.0, 2.0]

    spec = SourceSpec(name="c", format="classification", path=str(fixtures_dir / "broken_intents.csv"),
                      labels=[str(fixtures_dir / "intent_labels.json")])
    _, table, rej = _run(spec, str(tmp_path / "c"))
    assert [(r["line"], r["reason"]) for r in rej] == [(4, "unknown_label"), (5, "empty_text")]
    assert table.column("query").to_pylist() == ["where is my card", "hello, I lost my card"]


def test_headerless_file_with_wrong_field_count_names_the_fix(shared_data):
    spec = parse_source_arg(f"stsb=sts:{shared_data}/stsb/sts-test.csv")
    with pytest.raises(eio.SourceError, match=r"--option stsb.columns="):
        plan_source(spec, {}, 1 << 20)


def test_unreadable_file_is_a_fatal_unit_not_a_crash(fixtures_dir, tmp_path):
    spec = SourceSpec(name="g", format="title_body", path=str(fixtures_dir / "garbage.jsonl"))
    stats, table, rejected = _run(spec, str(tmp_path))
    assert stats[0]["samples"] == 0 and table is None
    assert rejected and {r["reason"] for r in rejected} <= {"bad_encoding", "invalid_json", "wrong_type"}


def test_unit_marker_written_last_and_ids_stable(fixtures_dir, tmp_path):
    spec = SourceSpec(name="arts", format="title_body", path=str(fixtures_dir / "broken_articles.jsonl"))
    [task] = plan_source(spec, {}, 1 << 20)
    [again] = plan_source(spec, {}, 1 << 20)
    assert task["unit_id"] == again["unit_id"]
    changed = plan_source(spec.model_copy(update={"instruction": "other"}), {}, 1 << 20)[0]
    assert changed["unit_id"] != task["unit_id"]
    process_unit(task, str(tmp_path))
    marker = eio.read_json(str(tmp_path / "_units" / f"{task['unit_id']}.json"))
    assert marker["samples"] == 3 and marker["rejected"]["invalid_json"] == 1


def test_unit_ids_follow_the_file_content_not_only_its_path(tmp_path):
    import os

    src = tmp_path / "a.jsonl"
    src.write_text('{"title": "t", "body": "one"}\n')
    spec = SourceSpec(name="a", format="title_body", path=str(src))
    [first] = plan_source(spec, {}, 1 << 20)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))    # touched: same bytes, new mtime
    [touched] = plan_source(spec, {}, 1 << 20)
    src.write_text('{"title": "t", "body": "two"}\n')               # same size, new content
    [edited] = plan_source(spec, {}, 1 << 20)
    assert len({first["unit_id"], touched["unit_id"], edited["unit_id"]}) == 3
    assert all(u["unit_id"].startswith("a-") for u in (first, touched, edited))
    assert eio.file_version(str(src)) == {"size": src.stat().st_size,
                                          "mtime_ns": src.stat().st_mtime_ns}
    assert eio.file_version("hf:org/name") == {}


def test_an_unreadable_unit_keeps_earlier_parts_and_writes_no_marker(tmp_path, fixtures_dir):
    spec = SourceSpec(name="arts", format="title_body", path=str(fixtures_dir / "broken_articles.jsonl"))
    [task] = plan_source(spec, {}, 1 << 20)
    out = str(tmp_path / "out")
    process_unit(task, out)
    part = tmp_path / "out" / "samples" / f"part-{task['unit_id']}-0000.parquet"
    before = part.read_bytes()
    gone = dict(task, unit={**task["unit"], "path": str(tmp_path / "gone.jsonl")})
    (tmp_path / "out" / "_units" / f"{task['unit_id']}.json").unlink()
    stats = process_unit(gone, out)
    assert stats["fatal"] and "unreadable" in stats["fatal"]
    assert part.read_bytes() == before                      # no empty part over the earlier one
    assert not (tmp_path / "out" / "_units" / f"{task['unit_id']}.json").exists()   # retried next run


def _dedup_without_ray(out: str, order: list[str]) -> None:
    """drop_cross_unit_duplicates' steps, composed in one process (its pure parts)."""
    import pyarrow as pa

    from embedforge.prepare.stage import drop_rows, id_rows, later_copies, ordered_parts

    paths = ordered_parts(out, order)
    dups = later_copies(id_rows(pa.table({"file": list(range(len(paths)))}), paths, 1))
    for f in sorted(set(dups.column("file").to_pylist())):
        drop_rows(dups.filter(pa.compute.equal(dups.column("file"), f)), paths)


def test_a_large_parquet_source_splits_by_row_groups_with_the_same_samples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text1": f"left {i % 37}", "text2": f"right {i % 37}", "score": str(i % 37 % 6)}
            for i in range(300)]  # each pair 8 times: duplicates inside and across pieces
    rows[5]["score"] = "not a number"
    rows[200]["text1"] = ""
    src = tmp_path / "sts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=25)
    spec = SourceSpec(name="s", format="sts", path=str(src), score_range=(0, 5))
    whole = plan_source(spec, {}, 1 << 30)
    pieces = plan_source(spec, {}, 600)
    assert len(whole) == 1 and whole[0]["unit"]["end"] == -1
    assert len(pieces) > 3
    assert pieces[0]["unit"]["start"] == 0 and pieces[-1]["unit"]["end"] == 12
    assert [p["unit"]["first_line"] for p in pieces] == [1 + 25 * p["unit"]["start"] for p in pieces]
    results = {}
    for name, tasks in (("whole", whole), ("pieces", pieces)):
        out = str(tmp_path / name)
        stats = [process_unit(t, out) for t in tasks]
        _dedup_without_ray(out, [t["unit_id"] for t in tasks])
        samples = eio.read_samples(out).drop_columns(["id"]).to_pylist()
        rejected = [(r["line"], r["reason"]) for f in eio.list_files(f"{out}/rejected", ".jsonl")
                    for r in eio.read_jsonl(f)]
        results[name] = (sorted(samples, key=lambda r: json.dumps(r, sort_keys=True)),
                         sorted(rejected), sum(s["rows_in"] for s in stats))
    assert results["pieces"] == results["whole"]
    assert results["whole"][1] == [(6, "bad_score"), (201, "empty_text")]
    assert results["whole"][2] == 300 and len(results["whole"][0]) == 2 * 37


def _prepare_twice(tmp_path, spec, whole_chunk, piece_chunk):
    """(plans, results) of preparing ``spec`` as one unit and as pieces, without Ray."""
    results = {}
    # plan both before reading anything (a loaded hf: dataset replaces its card's counts)
    plans = {"whole": plan_source(spec, {}, whole_chunk), "pieces": plan_source(spec, {}, piece_chunk)}
    for name, tasks in plans.items():
        out = str(tmp_path / name)
        stats = [process_unit(t, out) for t in tasks]
        _dedup_without_ray(out, [t["unit_id"] for t in tasks])
        samples = eio.read_samples(out).drop_columns(["id"]).to_pylist()
        rejected = [(r["line"], r["reason"], r["raw"])
                    for f in eio.list_files(f"{out}/rejected", ".jsonl") for r in eio.read_jsonl(f)]
        results[name] = (sorted(samples, key=lambda r: json.dumps(r, sort_keys=True)),
                         sorted(rejected), sum(s["rows_in"] for s in stats))
    return plans, results


def test_a_large_quoted_csv_splits_on_record_boundaries_with_the_same_samples(tmp_path):
    lines = ["text1,text2,score"]
    for i in range(200):
        a = f'"first ""{i % 41}""\r\nstill the first, ünïcödé"' if i % 3 == 0 else f"plain {i % 41}"
        lines.append(f"{a},second {i % 41},{i % 41 % 6}")
        if i % 50 == 7:
            lines.append("")                     # blank line
        if i % 60 == 11:
            lines.append("only one field")       # missing_field
    src = tmp_path / "sts.csv"
    src.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    spec = SourceSpec(name="s", format="sts", path=str(src), score_range=(0, 5))
    plans, results = _prepare_twice(tmp_path, spec, 1 << 30, 700)
    assert len(plans["whole"]) == 1 and len(plans["pieces"]) > 5
    data = src.read_bytes()
    for t in plans["pieces"][1:]:  # every piece starts a record, never inside quotes
        assert data[t["unit"]["start"] - 2:t["unit"]["start"]] == b"\r\n"
        assert data[:t["unit"]["start"]].count(b'"') % 2 == 0
        assert t["unit"]["first_line"] == data[:t["unit"]["start"]].count(b"\n") + 1
    assert results["pieces"] == results["whole"]
    samples, rejected, rows_in = results["whole"]
    assert [r[1] for r in rejected] == ["missing_field"] * 4 and rows_in == 204
    assert len(samples) == 2 * 41 * 2  # quoted and plain first fields, each also swapped
    assert any("\r\nstill the first" in s["query"] for s in samples)


def _tricky_json(path, n=120):
    items = []
    for i in range(n):
        if i % 37 == 5:
            items.append(["not", "an", {"object": i}])  # wrong_type
            continue
        items.append({"query": f'q [{i % 29}], "quoted" \\ {{brace}} ünï',
                      "positive": f"p{i % 29} ]}},\\\"", "meta": {"nested": [[i, {"a": "]"}], []]}})
    text = json.dumps(items, ensure_ascii=False, indent=1 if n % 2 else None)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8") + b"\n")
    return items


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 22])
def test_json_pieces_hold_whole_items_whatever_the_scan_block(tmp_path, block):
    items = _tricky_json(tmp_path / "a.json")
    units = eio.plan_json_units(str(tmp_path / "a.json"), 500, block_bytes=block)
    assert len(units) > 5
    data = (tmp_path / "a.json").read_bytes()
    got = []
    for u in units:
        part = json.loads("[" + data[u.start:u.end].decode("utf-8") + "]")
        assert u.first_line == len(got) + 1
        got.extend(part)
    assert got == items


def test_json_that_is_not_a_plain_list_stays_one_unit(tmp_path):
    big = [{"query": "x" * 50, "positive": "y"}] * 40
    for name, text in (("obj.json", json.dumps({"data": big})),
                       ("trailing.json", json.dumps(big) + " garbage"),
                       ("two.json", json.dumps(big) + json.dumps(big)),
                       ("open.json", json.dumps(big)[:-1])):
        (tmp_path / name).write_text(text)
        assert eio.plan_json_units(str(tmp_path / name), 200) == [eio.FileUnit(str(tmp_path / name))]


def test_a_large_json_list_splits_into_items_with_the_same_samples(tmp_path):
    _tricky_json(tmp_path / "qa.json", 121)
    spec = SourceSpec(name="j", format="qa", path=str(tmp_path / "qa.json"))
    plans, results = _prepare_twice(tmp_path, spec, 1 << 30, 900)
    assert len(plans["whole"]) == 1 and len(plans["pieces"]) > 5
    assert results["pieces"] == results["whole"]
    samples, rejected, rows_in = results["whole"]
    assert [r[:2] for r in rejected] == [(6, "wrong_type"), (43, "wrong_type"), (80, "wrong_type"),
                                         (117, "wrong_type")]
    assert rows_in == 121 and len(samples) == 29


def _hf_folder(path, rows, card_rows, card_bytes):
    path.mkdir()
    lines = [json.dumps({"query": f"q{i % 23}", "positive": f"p{i % 23}"}) for i in range(rows)]
    lines[9] = json.dumps({"query": "", "positive": "empty query"})
    (path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (path / "README.md").write_text(
        "---\ndataset_info:\n  splits:\n  - name: train\n"
        f"    num_bytes: {card_bytes}\n    num_examples: {card_rows}\n---\n")


def test_a_large_hf_split_splits_into_row_ranges_with_the_same_samples(tmp_path):
    card_rows = 90  # a card whose counts are wrong fails datasets' own split verification
    _hf_folder(tmp_path / "ds", 90, card_rows, 9000)
    spec = SourceSpec(name="h", format="qa", path=f"hf:{tmp_path / 'ds'}:train")
    plans, results = _prepare_twice(tmp_path, spec, 1 << 30, 2000)
    assert len(plans["whole"]) == 1 and plans["whole"][0]["unit"]["end"] == -1
    assert len(plans["pieces"]) == -(-card_rows // (card_rows * 2000 // 9000 + 1)) >= 4
    assert plans["pieces"][-1]["unit"]["end"] == -1  # the last piece runs to the end
    assert results["pieces"] == results["whole"]
    samples, rejected, rows_in = results["whole"]
    assert [r[0] for r in rejected] == [10] and rows_in == 90 and len(samples) == 23


def test_an_hf_split_without_counts_stays_one_unit(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text('{"query": "q", "positive": "p"}\n' * 50)
    uri = f"hf:{tmp_path / 'ds'}:train"
    assert eio.plan_hf_units(uri, 10) == [eio.FileUnit(uri)]
    assert eio.plan_hf_units(f"hf:{tmp_path}/missing", 10) == [eio.FileUnit(f"hf:{tmp_path}/missing")]


def _tricky_beir(folder, docs):
    """A BEIR folder with every kind of bad qrels row, an empty document and an empty query."""
    (folder / "qrels").mkdir(parents=True)
    corpus = []
    for i in range(docs):
        doc = {"_id": f"d{i}", "title": f"title {i % 7}", "text": f"passage {i} " + "word " * (i % 13)}
        if i % 17 == 5:
            doc = {"text": doc["text"], "_id": i}  # _id not first, and a number
        if i == 40:
            doc = {"_id": "d40", "title": "", "text": "  "}  # empty document
        corpus.append(json.dumps(doc))
    corpus.insert(11, "{not json")
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    queries = [json.dumps({"_id": f"q{i}", "text": "" if i == 3 else f"question {i}"}) for i in range(30)]
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    rows = ["query-id\tcorpus-id\tscore"]
    for i in range(docs):
        did = str(i) if i % 17 == 5 else f"d{i}"
        rows.append(f"q{i % 30}\t{did}\t{1 if i % 11 else 0}")
    rows += ["q1\tnope\t1", "q999\td2\t1", "q1\td2\tx", "\td2\t1", "q3\td40\t1", "q4\td40\t1",
             "q1\td1\t1", "q2\td2\t1"]  # unknown doc / query, bad score, missing id, empty texts
    (folder / "qrels" / "train.tsv").write_text("\n".join(rows) + "\n")


def test_a_large_beir_corpus_splits_into_pieces_with_the_same_samples_and_rejections(tmp_path):
    _tricky_beir(tmp_path / "beir", 120)
    spec = SourceSpec(name="b", format="beir", path=str(tmp_path / "beir"), split="train")
    plans, results = _prepare_twice(tmp_path, spec, 1 << 30, 600)
    assert len(plans["whole"]) == 1 and len(plans["pieces"]) > 5
    roles = [t["unit"]["extras"]["role"] for t in plans["pieces"]]
    assert roles[0] == "qrels" and set(roles[1:]) == {"docs"}
    assert results["pieces"] == results["whole"]
    samples, rejected, rows_in = results["whole"]
    assert rows_in == 128
    reasons = sorted((line, reason) for line, reason, _ in rejected)
    empty_query = [(i + 2, "empty_text") for i in range(120) if i % 30 == 3 and i % 11]
    assert reasons == sorted([*empty_query, (42, "empty_text"),  # d40 is empty
                              (122, "unknown_id"), (123, "unknown_id"), (124, "bad_score"),
                              (125, "missing_field"), (126, "empty_text"), (127, "empty_text")])
    # a sample per relevant row with a good query and document; (q1,d1), (q2,d2) come twice
    relevant = [i for i in range(120) if i % 11 and i % 30 != 3 and i != 40]
    assert len(samples) == len(relevant)
