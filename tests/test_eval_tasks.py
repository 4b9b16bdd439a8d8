"""Evaluation inputs without a model: task specs, file readers, caps, splits, instructions."""

from __future__ import annotations

import json

import pytest

from embedforge.config import ConfigError, parse_config
from embedforge.eval import readers
from embedforge.eval.config import EvalConfig
from embedforge.eval.spec import TaskSpec, parse_task_arg
from embedforge.instructions import InstructionMap, applies


def test_parse_task_arg_kinds_and_splits():
    s = parse_task_arg("scifact=beir:../shared/data/scifact:dev")
    assert (s.name, s.kind, s.path, s.split, s.eval_split) == (
        "scifact", "beir", "../shared/data/scifact", "dev", "dev")
    assert parse_task_arg("x=beir:s3://bucket/scifact").path == "s3://bucket/scifact"
    assert parse_task_arg("x=beir:s3://bucket/scifact").eval_split == "test"
    assert parse_task_arg("stsb=sts:a/b.csv").path == "a/b.csv"
    with pytest.raises(ValueError, match="NAME=KIND:PATH"):
        parse_task_arg("nope")
    with pytest.raises(ValueError, match="kind"):
        parse_task_arg("x=foo:a.csv")


def test_config_cli_tasks_options_benchmarks():
    cfg = parse_config(EvalConfig, [
        "--encoder.model", "m", "--output", "o", "--no-instructions",
        "--task", "sci=beir:/d/scifact:dev", "--option", "sci.max_corpus=1000",
        "--option", "sci.columns=a,b", "--option", "sci.delimiter=\\t",
        "--benchmark", "MTEB(eng, v2)", "--mteb-task", "STSBenchmark",
        "--baseline", "runs/old", "--tolerance", "0.02"])
    t = cfg.tasks[0]
    assert (t.max_corpus, t.columns, t.delimiter) == (1000, ["a", "b"], "\t")
    assert cfg.benchmarks == ["MTEB(eng, v2)"]  # the comma inside the name is kept
    assert cfg.mteb_tasks == ["STSBenchmark"]
    assert cfg.instructions is False and cfg.tolerance == 0.02
    with pytest.raises(ConfigError, match="names task 'zz'"):
        parse_config(EvalConfig, ["--encoder.model", "m", "--output", "o",
                                  "--task", "a=sts:f.tsv", "--option", "zz.limit=3"])
    with pytest.raises(ConfigError, match="unique"):
        parse_config(EvalConfig, ["--encoder.model", "m", "--output", "o",
                                  "--task", "a=sts:f.tsv", "--task", "a=sts:g.tsv"])


def test_cap_corpus_keeps_every_relevant_doc_and_is_seeded():
    ids = [f"d{i}" for i in range(100)]
    keep = {"d3", "d97", "d50"}
    out = readers.cap_corpus(ids, keep, cap=10, seed=1)
    assert len(out) == 10 and keep <= set(out)
    assert out == readers.cap_corpus(ids, keep, cap=10, seed=1)
    assert out != readers.cap_corpus(ids, keep, cap=10, seed=2)
    assert out == [d for d in ids if d in set(out)]  # corpus order kept
    # a cap below the relevant set still keeps all of it
    assert set(readers.cap_corpus(ids, keep, cap=1, seed=1)) == keep
    assert readers.cap_corpus(ids, keep, cap=None, seed=1) == ids


def _beir(tmp_path):
    (tmp_path / "qrels").mkdir()
    docs = [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(50)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    qs = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(5)]
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in qs))
    (tmp_path / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td10\t1\nq0\td11\t1\nq1\td40\t1\nq2\td5\t0\nqX\td1\t1\n")
    return tmp_path


def test_read_beir_caps_corpus_around_the_evaluated_queries(tmp_path):
    spec = TaskSpec(name="t", kind="beir", path=str(_beir(tmp_path)), split="dev", max_corpus=8)
    data = readers.read_beir(spec)
    # q2 has only a 0-relevance qrel and qX is not a query: neither is evaluated
    assert sorted(data.queries) == ["q0", "q1"]
    ids = {d["id"] for d in data.corpus}
    assert len(ids) == 8 and {"d10", "d11", "d40"} <= ids and data.corpus_total == 50
    assert data.relevant == {"q0": {"d10": 1, "d11": 1}, "q1": {"d40": 1}}
    one = readers.read_beir(spec.model_copy(update={"limit": 1}))
    assert len(one.queries) == 1


def test_check_spec_names_the_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"task 't'.*qrels/test.tsv"):
        readers.check_spec(TaskSpec(name="t", kind="beir", path=str(_beir(tmp_path))))
    with pytest.raises(ConfigError, match="file not found"):
        readers.check_spec(TaskSpec(name="t", kind="sts", path=str(tmp_path / "no.tsv")))


def test_read_pairs_stsb_layout_and_generic_files(tmp_path):
    stsb = tmp_path / "sts-test.csv"
    stsb.write_text("main\tMSRvid\t2012test\t0001\t5.000\tA \"girl\" smiles.\tA girl smiles.\n"
                    "main\tMSRvid\t2012test\t0002\t1.500\tA cat.\tA dog.\tsrc1\tsrc2\n"
                    "main\tMSRvid\t2012test\t0003\tbad\tx\ty\n")
    spec = TaskSpec(name="s", kind="sts", path=str(stsb))
    pairs = readers.read_pairs(spec, binary=False)
    assert pairs.text1 == ['A "girl" smiles.', "A cat."] and pairs.values == [5.0, 1.5]
    assert pairs.stats.skipped == 1 and readers.sts_range(spec, pairs) == (0.0, 5.0)

    plain = tmp_path / "zh.txt"
    plain.write_text("一\t二\t2\n三\t四\t4\n")
    p2 = readers.read_pairs(TaskSpec(name="z", kind="sts", path=str(plain)), binary=False)
    assert (p2.text1, p2.values) == (["一", "三"], [2.0, 4.0])

    csv = tmp_path / "bq.csv"
    csv.write_text("\ufeffsentence1,sentence2,label\n\"a, b\",c,1\nd,e,0\nf,g,maybe\n")
    p3 = readers.read_pairs(TaskSpec(name="b", kind="pair", path=str(csv)), binary=True)
    assert (p3.text1, p3.values, p3.stats.skipped) == (["a, b", "d"], [1.0, 0.0], 1)

    jl = tmp_path / "p.jsonl"
    jl.write_text('{"s1": "x", "s2": "y", "score": 0.3}\n{"s1": "u", "s2": "v", "score": 0.9}\n')
    spec4 = TaskSpec(name="j", kind="sts", path=str(jl))
    p4 = readers.read_pairs(spec4, binary=False)
    assert p4.values == [0.3, 0.9] and readers.sts_range(spec4, p4) == (0.3, 0.9)


def test_stratified_split_is_deterministic_and_keeps_labels_in_train():
    items = [(f"t{i}", "a") for i in range(10)] + [(f"u{i}", "b") for i in range(5)] + [("v", "c")]
    train, test = readers.stratified_split(items, 0.2, seed=3)
    assert (train, test) == readers.stratified_split(items, 0.2, seed=3)
    assert sorted(lab for _, lab in test) == ["a", "a", "b"]
    assert {lab for _, lab in train} == {"a", "b", "c"}  # a one-row label stays in train
    assert len(train) + len(test) == len(items)


def test_read_classification_csv_with_limit(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("text,category\n" + "".join(f"text {i},l{i % 4}\n" for i in range(40)))
    spec = TaskSpec(name="c", kind="classification", path=str(f), limit=20)
    d = readers.read_classification(spec)
    assert len(d.train_text) + len(d.test_text) == 20
    assert set(d.test_label) <= set(d.train_label)
    assert d == readers.read_classification(spec)


def test_instruction_lookup_order_and_sides(tmp_path):
    imap = InstructionMap.load()
    # shipped per-task entry beats mteb's own prompt; type default is the last resort
    assert imap.describe("scifact", "Retrieval", task_prompt="x").startswith("Given a scientific")
    assert imap.describe("Unknown1", "Retrieval", task_prompt="from mteb") == "from mteb"
    assert imap.describe("Unknown1", "STS") == "Retrieve semantically similar text"
    assert imap.describe("scifact", "Retrieval", spec_instruction="mine") == "mine"
    over = InstructionMap.load(overrides={"scifact": "A", "STS": "B"})
    assert over.describe("scifact", "Retrieval", spec_instruction="mine") == "A"
    assert over.describe("stsb", "STS") == "B"
    # asymmetric retrieval: queries only; symmetric types: both sides
    assert imap.prefix("scifact", "Retrieval", "document") == ""
    assert imap.prefix("scifact", "Retrieval", "query").startswith("Instruct: Given a scientific")
    assert imap.prefix("stsb", "STS", None) == "Instruct: Retrieve semantically similar text\nQuery: "
    assert applies("PairClassification", "document") and not applies("Reranking", "document")
    f = tmp_path / "i.yaml"
    f.write_text("tasks:\n  Mine: Do this\ntypes:\n  STS: Sim\n")
    custom = InstructionMap.load(str(f))
    assert custom.describe("mine", "Retrieval") == "Do this" and custom.describe("x", "STS") == "Sim"
    f.write_text("bogus: 1\n")
    with pytest.raises(ConfigError, match="tasks"):
        InstructionMap.load(str(f))


def test_evaluation_and_prepare_read_a_pair_file_the_same_way(tmp_path):
    """One vocabulary and one reader stack: a binary pair file with capitalised headers and
    word labels gives evaluation and prepare's pair_label format the same pairs."""
    from embedforge import io as eio
    from embedforge.data.formats import get_format, looks_like_header
    from embedforge.data.pairs import from_pair_label
    from embedforge.data.spec import SourceSpec

    f = tmp_path / "rte.tsv"
    f.write_text("Sentence1\tSentence2\tLabel\na\tb\tentailment\nc\td\tnot_entailment\n"
                 "e\tf\tparaphrase\ng\th\tmaybe\n")
    ev = readers.read_pairs(TaskSpec(name="r", kind="pair", path=str(f)), binary=True)
    assert (ev.text1, ev.text2, ev.values) == (["a", "c", "e"], ["b", "d", "f"], [1.0, 0.0, 1.0])
    assert ev.stats.skipped == 1

    spec = SourceSpec(name="r", format="pair_label", path=str(f))
    delim, first = eio.sniff_delimited(str(f))
    assert delim == "\t" and looks_like_header(first, get_format("pair_label"), spec)
    prepared = []
    for rec in eio.iter_records(eio.FileUnit(str(f)), delimiter=delim, columns=first,
                                has_header=True, line_based=True):
        try:
            s = from_pair_label(rec.data, "r", "", {})[0]
        except ValueError:
            continue
        prepared.append((s.query, s.positive, s.score))
    assert prepared == list(zip(ev.text1, ev.text2, ev.values, strict=True))


def test_clustering_and_reranking_task_args():
    r = parse_task_arg("sfr=reranking:../shared/data/scifact:dev")
    assert (r.kind, r.path, r.split, r.eval_split, r.from_beir) == (
        "reranking", "../shared/data/scifact", "dev", "dev", True)
    f = parse_task_arg("rr=reranking:runs/rr.jsonl")
    assert (f.from_beir, f.eval_split) == (False, "test")
    c = parse_task_arg("b77=clustering:../shared/data/banking77/train.csv")
    assert (c.kind, c.is_local, c.eval_split) == ("clustering", True, "test")


def test_read_clustering_skips_bad_rows_by_name_and_needs_two_labels(tmp_path):
    f = tmp_path / "intents.csv"
    f.write_text("text,category\n" + "".join(f"text {i},l{i % 3}\n" for i in range(30))
                 + ",l1\nlonely,\n")
    spec = TaskSpec(name="c", kind="clustering", path=str(f), limit=12)
    d = readers.read_clustering(spec)
    assert len(d.texts) == len(d.labels) == 12 and set(d.labels) <= {"l0", "l1", "l2"}
    assert d == readers.read_clustering(spec)  # seeded draw
    assert d.texts != readers.read_clustering(spec.model_copy(update={"seed": 7})).texts
    full = readers.read_clustering(spec.model_copy(update={"limit": None}))
    assert (full.stats.kept, full.stats.skipped) == (30, 2)
    assert full.stats.examples == [f"{f} row 31: empty field 'text'",
                                   f"{f} row 32: empty field 'label'"]
    one = tmp_path / "one.csv"
    one.write_text("text,category\na,x\nb,x\n")
    with pytest.raises(ConfigError, match="at least 2 labels"):
        readers.read_clustering(TaskSpec(name="c", kind="clustering", path=str(one)))


def test_read_reranking_jsonl_rows_and_bad_rows(tmp_path):
    f = tmp_path / "rr.jsonl"
    f.write_text("\n".join([
        json.dumps({"query": "q a", "positives": ["pa"], "candidates": ["x", "y"]}),
        json.dumps({"query": "q b", "positive": "pb", "negative": ["x", "z"]}),
        "{not json",
        json.dumps({"query": "q c", "positives": "pc", "candidates": [1, 2]}),
        json.dumps({"query": "", "positives": ["p"], "candidates": ["x"]}),
        json.dumps({"query": "q d", "positives": [], "candidates": ["x"]}),
        json.dumps({"query": "q e", "positives": ["pe"]}),
    ]) + "\n")
    data = readers.read_reranking(TaskSpec(name="r", kind="reranking", path=str(f)))
    assert data.queries == {"q1": "q a", "q2": "q b"}
    text = {d["id"]: d["text"] for d in data.corpus}
    # a positive missing from the candidates is added; a text shared by queries is one doc
    assert [text[d] for d in data.candidates["q1"]] == ["x", "y", "pa"]
    assert [text[d] for d in data.candidates["q2"]] == ["x", "z", "pb"]
    assert {text[d] for d in data.relevant["q1"]} == {"pa"} and len(text) == 5
    assert data.stats.skipped == 5
    assert data.stats.examples[0].startswith(f"{f} line 3: invalid JSON")
    assert data.stats.examples[1:] == [
        f"{f} line 4: field 'candidates' must be a list of strings, holds int 1",
        f"{f} line 5: field 'query' must be a non-empty string",
        f"{f} line 6: field 'positives' is empty: a query needs a relevant text",
        f"{f} line 7: field 'candidates': nothing to rank the positives against"]
    one = readers.read_reranking(TaskSpec(name="r", kind="reranking", path=str(f), limit=1))
    assert len(one.queries) == 1 and {d["id"] for d in one.corpus} == set(
        next(iter(one.candidates.values())))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    with pytest.raises(ConfigError, match=r"no usable reranking row .*line 1: field 'positives'"):
        readers.read_reranking(TaskSpec(name="r", kind="reranking", path=str(bad)))


def test_reranking_from_beir_is_seeded_per_query(tmp_path):
    spec = TaskSpec(name="r", kind="reranking", path=str(_beir(tmp_path)), split="dev", depth=5)
    data = readers.read_reranking(spec)
    assert sorted(data.queries) == ["q0", "q1"]
    assert {"d10", "d11"} <= set(data.candidates["q0"]) and len(data.candidates["q0"]) == 7
    assert "d40" in data.candidates["q1"] and len(data.candidates["q1"]) == 6
    assert data.relevant == {"q0": {"d10": 1, "d11": 1}, "q1": {"d40": 1}}
    assert {d["id"] for d in data.corpus} == set(data.candidates["q0"]) | set(data.candidates["q1"])
    assert data == readers.read_reranking(spec)
    assert data.candidates != readers.read_reranking(spec.model_copy(update={"seed": 5})).candidates
    # a query's list depends only on (seed, query id): fewer queries rank the same lists
    one = readers.read_reranking(spec.model_copy(update={"limit": 1}))
    [(qid, cands)] = one.candidates.items()
    assert cands == data.candidates[qid]
