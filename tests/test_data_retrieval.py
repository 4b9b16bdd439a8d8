import pytest

from embedforge.data.fields import RowError
from embedforge.data.retrieval import (
    beir_doc_text,
    from_beir_qrel,
    from_claim,
    from_qa,
    from_reading,
    from_title_body,
)


def test_title_body_and_title_abstract():
    [s] = from_title_body({"title": "T", "body": "B"}, "d", "ins", {})
    assert (s.kind, s.query, s.positive, s.negatives, s.instruction) == ("retrieval", "T", "B", [], "ins")
    [s] = from_title_body({"title": "T", "abstract": "A"}, "d", "", {})
    assert s.positive == "A"
    [s] = from_title_body({"headline_x": "T", "txt": "A"}, "d", "", {"query": "headline_x", "positive": "txt"})
    assert (s.query, s.positive) == ("T", "A")


def test_title_body_errors_name_the_field():
    with pytest.raises(RowError) as e:
        from_title_body({"title": "T"}, "d", "", {})
    assert e.value.reason == "missing_field" and "'positive'" in e.value.message
    with pytest.raises(RowError) as e:
        from_title_body({"title": "", "body": "B"}, "d", "", {})
    assert e.value.reason == "empty_text" and "'query'" in e.value.message
    with pytest.raises(RowError) as e:
        from_title_body({"title": {"x": 1}, "body": "B"}, "d", "", {})
    assert e.value.reason == "wrong_type"


def test_qa_plain_and_squad_answers():
    [s] = from_qa({"question": "Q?", "answer": "A."}, "d", "", {})
    assert (s.query, s.positive) == ("Q?", "A.")
    [s] = from_qa({"question": "Q?", "answers": {"text": ["first", "second"]}}, "d", "", {})
    assert s.positive == "first"


def test_chat_turns_give_one_sample_per_exchange():
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    out = from_qa({"messages": msgs}, "d", "", {})
    assert [(s.query, s.positive) for s in out] == [("u1", "a1"), ("u2", "a2")]
    sharegpt = [{"from": "human", "value": "hi?"}, {"from": "gpt", "value": "hello"}]
    [s] = from_qa({"conversations": sharegpt}, "d", "", {})
    assert (s.query, s.positive) == ("hi?", "hello")
    with pytest.raises(RowError, match="no user turn"):
        from_qa({"messages": [{"role": "user", "content": "alone"}]}, "d", "", {})


def test_reading_comprehension_context_plus_question():
    [s] = from_reading({"context": "C.", "question": "Q?", "answer": "A"}, "d", "", {})
    assert s.query == "C.\nQ?" and s.positive == "A"


def test_claim_evidence():
    out = from_claim({"claim": "c", "evidence": ["e1", "e2"], "refutes": ["r"]}, "d", "", {})
    assert [(s.query, s.positive, s.negatives) for s in out] == [("c", "e1", ["r"]), ("c", "e2", ["r"])]
    [s] = from_claim({"claim": "c", "evidence": "e"}, "d", "", {})
    assert s.negatives == []
    with pytest.raises(RowError, match="supporting evidence"):
        from_claim({"claim": "c", "evidence": []}, "d", "", {})


def test_beir_qrel():
    queries = {"1": "claim one"}
    corpus = {"10": beir_doc_text({"title": "Title", "text": "Body."})}
    [s] = from_beir_qrel({"query-id": "1", "corpus-id": "10", "score": "1"}, queries, corpus, "sf", "", "train")
    assert (s.query, s.positive) == ("claim one", "Title Body.")
    assert s.meta == {"query_id": "1", "doc_id": "10", "split": "train", "relevance": 1.0}
    assert from_beir_qrel({"query-id": "1", "corpus-id": "10", "score": "0"}, queries, corpus, "sf", "", "t") == []
    with pytest.raises(RowError) as e:
        from_beir_qrel({"query-id": "1", "corpus-id": "99", "score": "1"}, queries, corpus, "sf", "", "t")
    assert e.value.reason == "unknown_id" and "99" in e.value.message
