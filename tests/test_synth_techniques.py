"""Techniques against an in-process fake gateway (no HTTP, no Ray)."""

import asyncio
import json

from embedforge.llm.gateway import Completion, LLMError
from embedforge.schema import Sample
from embedforge.synth.techniques import (
    TechniqueSettings,
    merge_negatives,
    synthesize_sample,
)
from embedforge.testing.responders import synth_responder


class FakeGW:
    def __init__(self, answer=None):
        self.answer = answer
        self.calls: list[dict] = []

    async def complete(self, messages, *, template_version, sample_index, schema=None, schema_name=""):
        self.calls.append({"template": template_version, "index": sample_index, "messages": messages})
        if isinstance(self.answer, Exception):
            raise self.answer
        content = self.answer(messages) if self.answer else synth_responder({"messages": messages})
        return Completion(content, 10, 5, False, 1, "k")


def _sample(kind="retrieval", **kw):
    base = dict(dataset="d", kind=kind, query="How do honeybees tell each other where flowers are?",
                positive="Scout bees perform a waggle dance whose angle and length encode the "
                         "direction and distance of a patch of flowers.")
    if kind == "pair":
        base.update(query="A man is slicing bread in the kitchen.",
                    positive="A man cuts a loaf of bread in his kitchen.", score=4.5)
    if kind == "classification":
        base.update(query="I lost my debit card yesterday at the mall", positive="", label="lost_card")
    base.update(kw)
    return Sample(**base).to_row()


def run(gw, sample, techniques=("paraphrase", "augment", "hard_negative"), **settings):
    return asyncio.run(synthesize_sample(gw, sample, list(techniques), TechniqueSettings(**settings), "m"))


def test_retrieval_gets_all_three_techniques_with_provenance():
    s = _sample()
    res = run(FakeGW(), s, n_paraphrase=2, n_augment=1, n_negatives=2)
    assert not res.errors
    sources = sorted(r["source"] for r in res.rows)
    assert sources == ["augment", "paraphrase", "paraphrase"]
    for r in res.rows:
        meta = json.loads(r["meta"])
        assert r["parent_id"] == s["id"] and meta["model"] == "m" and meta["template"].endswith(".v2")
        assert meta["technique"] in ("paraphrase", "augment") and "attempt" in meta
    aug = next(r for r in res.rows if r["source"] == "augment")
    assert len(aug["negatives"]) == 1
    assert len(res.negatives) == 2 and res.negatives[0][0] != res.negatives[1][0]
    merged = merge_negatives(s, res)
    assert merged["source"] == "llm_negative" and merged["parent_id"] == s["id"]
    assert merged["negatives"] == [n for n, _ in res.negatives]
    assert json.loads(merged["meta"])["negative_sources"] == ["llm", "llm"]


def test_pairs_paraphrase_each_side_only_and_classification_keeps_label():
    pair = _sample("pair")
    res = run(FakeGW(), pair, n_paraphrase=1)
    assert sorted(json.loads(r["meta"])["side"] for r in res.rows) == ["positive", "query"]
    for r in res.rows:
        side = json.loads(r["meta"])["side"]
        other = "positive" if side == "query" else "query"
        assert r[other] == pair[other] and r[side] != pair[side] and r["score"] == 4.5
    cls = _sample("classification")
    res = run(FakeGW(), cls)
    assert [(r["kind"], r["label"], r["source"]) for r in res.rows] == [("classification", "lost_card", "paraphrase")]


def test_rejected_answers_are_regenerated_at_most_20_times():
    s = _sample()
    echo = FakeGW(lambda m: json.dumps({"query": s["query"], "positive": s["positive"]}))
    res = run(echo, s, techniques=["paraphrase"])
    assert len(echo.calls) == 21  # first try + 20 regenerations
    assert res.rows == []
    assert res.rejections["paraphrase:repeats_original"] == 21
    [err] = res.errors
    assert err["reason"] == "retries_exhausted" and err["parent_id"] == s["id"]
    assert len({c["index"] for c in echo.calls}) == 21  # every retry is a distinct cache key


def test_bad_json_counts_as_rejection_then_recovers():
    answers = iter(["not json", json.dumps({"unexpected": True})])
    s = _sample()

    def answer(messages):
        try:
            return next(answers)
        except StopIteration:
            return synth_responder({"messages": messages})

    res = run(FakeGW(answer), s, techniques=["hard_negative"], n_negatives=1)
    assert res.rejections == {"hard_negative:bad_json": 1, "hard_negative:wrong_schema": 1}
    assert len(res.negatives) == 1 and not res.errors


def test_llm_failure_becomes_an_error_row_not_an_exception():
    s = _sample()
    res = run(FakeGW(LLMError("exhausted_http_500", "gave up")), s)
    assert {e["technique"] for e in res.errors} == {"paraphrase", "augment", "hard_negative"}
    assert {e["reason"] for e in res.errors} == {"exhausted_http_500"}
