"""Retrieval samples (query, positive, negatives) from the report's source shapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schema import Sample
from .fields import RowError, as_text, as_text_list, get_value

TITLE = ("title", "headline", "name")
BODY = ("body", "abstract", "text", "content", "document", "passage")
QUESTION = ("question", "query", "prompt", "instruction", "input")
ANSWER = ("answer", "answers", "response", "output", "completion", "reply")
MESSAGES = ("messages", "conversations", "conversation", "turns", "dialog")
CONTEXT = ("context", "passage", "document", "paragraph", "story")
CLAIM = ("claim", "statement", "hypothesis")
EVIDENCE = ("evidence", "supports", "supporting", "evidences")
REFUTING = ("refutes", "refuting", "contradicts", "negatives")
USER_ROLES = frozenset({"user", "human", "prompter", "question"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "bot", "model", "answer"})


def _sample(dataset: str, instruction: str, query: str, positive: str,
            negatives: list[str] | None = None, meta: dict[str, Any] | None = None) -> Sample:
    return Sample(dataset=dataset, kind="retrieval", instruction=instruction, query=query,
                  positive=positive, negatives=negatives or [], meta=meta or {})


def from_title_body(data: Mapping[str, Any], dataset: str, instruction: str,
                    mapping: Mapping[str, str]) -> list[Sample]:
    """Title -> query, body/abstract -> positive."""
    title = as_text(get_value(data, "query", TITLE, mapping), "query")
    body = as_text(get_value(data, "positive", BODY, mapping), "positive")
    return [_sample(dataset, instruction, title, body)]


def _answer_text(value: Any, role: str) -> str:
    """Answers come as text, a list of texts, or SQuAD's ``{"text": [...]}``: take the first."""
    if isinstance(value, Mapping):
        value = value.get("text", value.get("answer"))
    if isinstance(value, (list, tuple)):
        texts = as_text_list(list(value), role)
        if not texts:
            raise RowError("empty_text", f"field {role!r} has no answer")
        return texts[0]
    return as_text(value, role)


def _turn(msg: Any, i: int) -> tuple[str, str]:
    if not isinstance(msg, Mapping):
        raise RowError("wrong_type", f"messages[{i}] must be an object with role/content")
    role = msg.get("role", msg.get("from", msg.get("speaker")))
    content = msg.get("content", msg.get("value", msg.get("text")))
    if role is None:
        raise RowError("missing_field", f"messages[{i}] has no 'role' (or 'from')")
    return str(role).lower(), as_text(content, f"messages[{i}].content", allow_empty=True)


def from_qa(data: Mapping[str, Any], dataset: str, instruction: str,
            mapping: Mapping[str, str]) -> list[Sample]:
    """Question -> query, answer -> positive; chat turns give one sample per user/assistant pair."""
    msgs = get_value(data, "messages", MESSAGES, mapping, required=False)
    if msgs is not None and "query" not in mapping:
        if isinstance(msgs, str):
            import json

            try:
                msgs = json.loads(msgs)
            except json.JSONDecodeError as exc:
                raise RowError("wrong_type", f"field 'messages' is not a JSON list: {exc.msg}") from exc
        if not isinstance(msgs, list):
            raise RowError("wrong_type", f"field 'messages' must be a list, got {type(msgs).__name__}")
        turns = [_turn(m, i) for i, m in enumerate(msgs)]
        out = []
        for i in range(len(turns) - 1):
            (r1, user), (r2, assistant) = turns[i], turns[i + 1]
            if r1 in USER_ROLES and r2 in ASSISTANT_ROLES and user and assistant:
                out.append(_sample(dataset, instruction, user, assistant, meta={"turn": i // 2}))
        if not out:
            raise RowError("empty_text", "conversation has no user turn followed by an assistant turn")
        return out
    question = as_text(get_value(data, "query", QUESTION, mapping), "query")
    answer = _answer_text(get_value(data, "positive", ANSWER, mapping), "positive")
    return [_sample(dataset, instruction, question, answer)]


def from_reading(data: Mapping[str, Any], dataset: str, instruction: str,
                 mapping: Mapping[str, str]) -> list[Sample]:
    """Context + question -> query, answer -> positive (reading comprehension)."""
    context = as_text(get_value(data, "context", CONTEXT, mapping), "context")
    question = as_text(get_value(data, "question", QUESTION, mapping), "question")
    answer = _answer_text(get_value(data, "positive", ANSWER, mapping), "positive")
    return [_sample(dataset, instruction, f"{context}\n{question}", answer)]


def from_claim(data: Mapping[str, Any], dataset: str, instruction: str,
               mapping: Mapping[str, str]) -> list[Sample]:
    """Claim -> query; each supporting evidence -> one positive; refuting evidence -> negatives."""
    claim = as_text(get_value(data, "query", CLAIM, mapping), "query")
    support = as_text_list(get_value(data, "positive", EVIDENCE, mapping), "positive")
    refute = as_text_list(get_value(data, "negatives", REFUTING, mapping, required=False), "negatives")
    if not support:
        raise RowError("empty_text", "claim has no supporting evidence (field 'positive')")
    return [_sample(dataset, instruction, claim, ev, refute, meta={"evidence_index": i})
            for i, ev in enumerate(support)]


def beir_doc_text(doc: Mapping[str, Any]) -> str:
    """BEIR document text as mteb/sentence-transformers build it: ``title + " " + text``."""
    title = str(doc.get("title") or "").strip()
    text = str(doc.get("text") or "").strip()
    return f"{title} {text}".strip()


def beir_qrel_ids(qrel: Mapping[str, Any]) -> tuple[str, str, float]:
    """``(query-id, corpus-id, score)`` of a qrels row, or the RowError it is rejected with."""
    qid, did = str(qrel.get("query-id", "")).strip(), str(qrel.get("corpus-id", "")).strip()
    if not qid or not did:
        raise RowError("missing_field", "qrels row needs query-id and corpus-id")
    try:
        score = float(qrel.get("score", 1))
    except (TypeError, ValueError) as exc:
        raise RowError("bad_score", f"qrels score is not a number: {qrel.get('score')!r}") from exc
    return qid, did, score


def from_beir_qrel(qrel: Mapping[str, Any], queries: Mapping[str, str],
                   corpus: Mapping[str, str], dataset: str, instruction: str,
                   split: str) -> list[Sample]:
    """One sample per relevant (query, document) pair; negatives stay empty for mining."""
    qid, did, score = beir_qrel_ids(qrel)
    if score <= 0:
        return []
    if qid not in queries:
        raise RowError("unknown_id", f"query-id {qid!r} is not in queries.jsonl")
    if did not in corpus:
        raise RowError("unknown_id", f"corpus-id {did!r} is not in corpus.jsonl")
    query = as_text(queries[qid], "query")
    doc = as_text(corpus[did], "positive")
    return [_sample(dataset, instruction, query, doc,
                    meta={"query_id": qid, "doc_id": did, "split": split, "relevance": score})]
