"""prepare as a Ray Data job on the real shared data: counts, label mapping, bad input, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from embedforge import io as eio
from embedforge.config import parse_config
from embedforge.prepare import PrepareConfig, run_prepare

pytestmark = pytest.mark.integration


def _rows(path: Path, skip_header: bool = False) -> list[list[str]]:
    with open(path, encoding="utf-8-sig") as fh:
        lines = [ln.rstrip("\r\n").split("\t") for ln in fh if ln.strip()]
    return lines[1:] if skip_header else lines


def _queries(shared_data: Path) -> dict[str, str]:
    rows = [json.loads(x) for x in (shared_data / "scifact/queries.jsonl").read_text().splitlines()]
    return {r["_id"]: r["text"] for r in rows}


@pytest.fixture(scope="module")
def prepared(ray_local, shared_data, fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "out"
    argv = [
        "--source", f"scifact=beir:{shared_data}/scifact:train",
        "--source", f"stsb=sts:{shared_data}/stsb/sts-test.csv",
        "--option", "stsb.columns=genre,file,year,id,score,text1,text2",
        "--source", f"banking77=classification:{shared_data}/banking77/train.csv",
        "--option", f"banking77.labels={shared_data}/banking77/categories.json",
        "--source", f"snli=nli:{shared_data}/zh_sts/Chinese-SNLI/dev.txt",
        "--source", f"lcqmc=pair_label:{shared_data}/zh_sts/LCQMC/dev.txt",
        "--source", f"broken=title_body:{fixtures_dir}/broken_articles.jsonl",
        "--source", f"missing=qa:{fixtures_dir}/does-not-exist.jsonl",
        "--output", str(out),
        "--chunk-mb", "0.25",  # SNLI/LCQMC and the SciFact corpus split into several pieces
    ]
    cfg = parse_config(PrepareConfig, argv)
    stats = run_prepare(cfg, log=lambda *_: None)
    table = eio.read_samples(str(out))
    return cfg, stats, table.to_pandas()


def test_scifact_one_sample_per_relevant_qrel(prepared, shared_data):
    _, stats, df = prepared
    qrels = _rows(shared_data / "scifact/qrels/train.tsv", skip_header=True)
    queries_text = _queries(shared_data)
    relevant = [r for r in qrels if float(r[2]) > 0]
    sf = df[df.dataset == "scifact"]
    # one sample per relevant qrel row; rows repeating an identical (query, doc) pair collapse
    pairs = {(queries_text[r[0]], r[1]) for r in relevant}
    dropped = stats["datasets"]["scifact"]["duplicates_dropped"]
    assert len(sf) == len(pairs) == len(relevant) - dropped == stats["datasets"]["scifact"]["samples"]
    assert set(sf.kind) == {"retrieval"} and all(len(n) == 0 for n in sf.negatives)
    queries = queries_text
    first = json.loads(sf.iloc[0].meta)
    assert sf.iloc[0].query == queries[first["query_id"]]
    assert sf.iloc[0].instruction.startswith("Given a scientific claim")


def _expected_pairs(rows, i1, i2, score_of):
    """Every row as (text1, text2, score) plus its swap; identical samples collapse."""
    out = set()
    for r in rows:
        a, b, sc = r[i1].strip(), r[i2].strip(), score_of(r)
        out |= {(a, b, sc), (b, a, sc)}
    return out


def _got(df, name):
    sub = df[df.dataset == name]
    return sub, list(zip(sub["query"], sub["positive"], sub["score"], strict=True))


def test_sts_rows_swapped_and_scores_kept(prepared, shared_data):
    _, stats, df = prepared
    rows = _rows(shared_data / "stsb/sts-test.csv")
    st, got = _got(df, "stsb")
    expected = _expected_pairs(rows, 5, 6, lambda r: float(r[4]))
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected
    assert stats["datasets"]["stsb"]["rows_in"] == len(rows)
    assert st.score.min() >= 0 and st.score.max() <= 5
    assert {json.dumps(json.loads(m)["range"]) for m in st.meta} == {"[0.0, 5.0]"}


def test_nli_rows_doubled_and_labels_mapped(prepared, shared_data):
    _, _, df = prepared
    rows = _rows(shared_data / "zh_sts/Chinese-SNLI/dev.txt")
    expected_score = {"entailment": 2.0, "neutral": 1.0, "contradiction": 0.0}
    _, got = _got(df, "snli")
    expected = _expected_pairs(rows, 0, 1, lambda r: expected_score[r[2]])
    assert len(got) == len(expected) and set(got) == expected
    # nearly every row doubled by swapping
    assert len(got) >= 2 * len(rows) - 30


def test_pair_labels_binary(prepared, shared_data):
    _, _, df = prepared
    rows = _rows(shared_data / "zh_sts/LCQMC/dev.txt")
    _, got = _got(df, "lcqmc")
    expected = _expected_pairs(rows, 0, 1, lambda r: {"1": 1.0, "0": 0.0}[r[2]])
    assert len(got) == len(expected) and set(got) == expected


def test_classification_kept_with_labels(prepared, shared_data):
    _, _, df = prepared
    with open(shared_data / "banking77/train.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    b = df[df.dataset == "banking77"]
    assert set(zip(b["query"], b["label"], strict=True)) == {(r["text"].strip(), r["category"]) for r in rows}
    assert len(b) == len({(r["text"].strip(), r["category"]) for r in rows})
    assert b.label.nunique() == 77 and set(b.positive) == {""}
    assert b.iloc[0].instruction == "Given a online banking query, find the corresponding intents"


def test_bad_rows_reported_good_rows_kept_missing_source_unusable(prepared):
    cfg, stats, df = prepared
    assert stats["datasets"]["broken"]["samples"] == 3
    assert stats["datasets"]["broken"]["rejected"] == {
        "invalid_json": 1, "missing_field": 1, "empty_text": 1, "wrong_type": 2}
    assert "missing" in stats["unusable_sources"]
    assert "does not exist" in stats["unusable_sources"]["missing"]
    rejected = [r for f in eio.list_files(f"{cfg.output}/rejected", ".jsonl") for r in eio.read_jsonl(f)]
    assert {(r["dataset"], r["line"], r["reason"]) for r in rejected} >= {
        ("broken", 2, "invalid_json"), ("broken", 3, "missing_field")}
    on_disk = eio.read_json(f"{cfg.output}/stats.json")
    assert on_disk["total_samples"] == len(df) == stats["total_samples"]


def test_large_files_split_into_units(prepared):
    _, stats, _ = prepared
    assert stats["datasets"]["snli"]["units"] > 1 and stats["datasets"]["lcqmc"]["units"] > 1
    # SciFact's 7.8 MB corpus: a qrels unit plus its pieces (the scifact test above checks
    # they give one sample per relevant qrels row)
    assert stats["datasets"]["scifact"]["units"] > 20


def test_ids_unique_and_rerun_resumes_without_work(prepared):
    cfg, stats, df = prepared
    assert df.id.is_unique
    again = run_prepare(cfg, log=lambda *_: None)
    assert again["units_reused"] == again["units"] == stats["units"]
    assert again["total_samples"] == stats["total_samples"]
