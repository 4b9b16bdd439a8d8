"""The three techniques for one input sample: prompts, checked rules, bounded regeneration.

Runs against any object with the gateway's ``complete`` coroutine, so it tests without Ray.
A sample's outputs are generated one after another (each retry sees the earlier answers, and
the cache key of every call is deterministic); many samples run concurrently.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import Field

from ..config import ConfigSection
from ..llm.gateway import Completion, LLMError
from ..schema import Sample
from . import rules
from .templates import OutputError, Template, load_template

TECHNIQUES = ("paraphrase", "augment", "hard_negative")
LANGUAGE_NAMES = {"zh": "Chinese", "ja": "Japanese", "ko": "Korean", "cyrillic": "Russian or "
                  "the original's Cyrillic-script language", "latin": "the original's language"}


class CompleteFn(Protocol):
    async def complete(self, messages: list[dict[str, str]], *, template_version: str,
                       sample_index: str | int, schema: dict[str, Any] | None = None,
                       schema_name: str = "output") -> Completion: ...


class TechniqueSettings(ConfigSection):
    """How many outputs per sample and the report's constraints."""

    n_paraphrase: int = Field(1, ge=0, description="paraphrases per sample (per side for pairs)")
    n_augment: int = Field(1, ge=0, description="augmented triples per retrieval sample")
    n_negatives: int = Field(2, ge=0, description="LLM hard negatives per retrieval sample")
    max_retries_per_sample: int = Field(
        20, ge=0, description="regenerations per sample and technique after rejected answers"
    )
    paraphrase_length_tolerance: float = Field(0.15, gt=0, description="±length for paraphrases")
    augment_length_tolerance: float = Field(0.20, gt=0, description="±length for augmentation")
    negative_length_tolerance: float = Field(0.20, gt=0, description="±length for hard negatives")
    sentence_diff: float = Field(0.30, ge=0, le=1, description="min difference, one sentence")
    paragraph_diff: float = Field(0.20, ge=0, le=1, description="min difference, a paragraph")


@dataclass
class SampleResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)
    negatives: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _lang(text: str) -> str:
    code = rules.language_of(text)
    return LANGUAGE_NAMES.get(code, "the original's language")


class _Run:
    """Shared state of one (sample, technique): the retry budget and provenance."""

    def __init__(self, gw: CompleteFn, sample: dict[str, Any], technique: str,
                 settings: TechniqueSettings, model: str, result: SampleResult):
        self.gw, self.sample, self.technique, self.s = gw, sample, technique, settings
        self.model, self.result = model, result
        self.budget = settings.max_retries_per_sample
        self.calls = 0

    async def ask(self, tpl: Template, slot: str, values: dict[str, Any], check,
                  avoid: list[str] | None = None) -> tuple[dict[str, str], dict[str, Any]] | None:
        """Ask until ``check(answer)`` passes or the sample's retry budget is spent.

        ``avoid`` (earlier accepted outputs, then rejected ones) goes into the prompt so a
        regeneration is asked for something new rather than re-rolled blindly.
        """
        attempt = 0
        avoid = [a[:300] for a in avoid or []]
        while True:
            messages = tpl.render(**values, avoid=avoid)
            self.calls += 1
            try:
                comp = await self.gw.complete(messages, template_version=tpl.version,
                                              sample_index=f"{slot}:{attempt}",
                                              schema=tpl.schema, schema_name=tpl.name)
            except LLMError as exc:
                self.error(exc.reason, str(exc), attempt)
                return None
            try:
                answer = tpl.parse(comp.content)
                reason = check(answer)
            except OutputError as exc:
                reason = exc.reason
                answer = None
            if reason is None and answer is not None:
                meta = {"technique": self.technique, "template": tpl.version,
                        "model": self.model, "attempt": attempt, "cached": comp.cached}
                return answer, meta
            self.result.rejections[f"{self.technique}:{reason}"] += 1
            if answer:
                avoid.append(next(iter(answer.values()))[:300])
            if self.budget <= 0:
                self.error("retries_exhausted",
                           f"last answer rejected ({reason}) and the sample's "
                           f"{self.s.max_retries_per_sample} regenerations are spent", attempt)
                return None
            self.budget -= 1
            attempt += 1

    def error(self, reason: str, message: str, attempt: int) -> None:
        self.result.errors.append({
            "parent_id": self.sample["id"], "dataset": self.sample["dataset"],
            "kind": self.sample["kind"], "technique": self.technique, "reason": reason,
            "message": message, "attempts": attempt + 1,
        })


def _row(sample: dict[str, Any], meta: dict[str, Any], source: str, **changes: Any) -> dict[str, Any]:
    base = {k: sample[k] for k in ("dataset", "kind", "instruction", "query", "positive",
                                   "score", "label")}
    base.update(negatives=[])
    base.update(changes)
    return Sample(**base, source=source, parent_id=sample["id"], meta=meta).to_row()


async def paraphrase(run: _Run) -> None:
    s, st = run.sample, run.s
    accepted: list[str] = []

    def para(orig: str):
        return lambda text: rules.check_paraphrase(
            orig, text, length_tolerance=st.paraphrase_length_tolerance,
            sentence_diff=st.sentence_diff, paragraph_diff=st.paragraph_diff)

    if s["kind"] == "retrieval":
        tpl = load_template("paraphrase_pair")
        for k in range(st.n_paraphrase):
            def check(a: dict[str, str]) -> str | None:
                return (para(s["query"])(a["query"]) or para(s["positive"])(a["positive"])
                        or rules.check_distinct(a["query"] + " " + a["positive"], accepted))
            got = await run.ask(tpl, f"p{k}", {
                "query": s["query"], "positive": s["positive"], "language": _lang(s["query"]),
                "query_chars": len(s["query"]), "positive_chars": len(s["positive"])}, check,
                [a for a in accepted])
            if got is None:
                return
            answer, meta = got
            accepted.append(answer["query"] + " " + answer["positive"])
            run.result.rows.append(_row(s, meta, "paraphrase", query=answer["query"],
                                        positive=answer["positive"]))
        return
    tpl = load_template("paraphrase_text")
    sides = ["query", "positive"] if s["kind"] == "pair" else ["query"]
    for side in sides:
        original = s[side]
        accepted = []
        for k in range(st.n_paraphrase):
            def check(a: dict[str, str], original: str = original, accepted=accepted) -> str | None:
                return para(original)(a["text"]) or rules.check_distinct(a["text"], accepted)
            got = await run.ask(tpl, f"{side}{k}", {
                "text": original, "label": s.get("label") if s["kind"] == "classification" else None,
                "language": _lang(original), "chars": len(original)}, check, list(accepted))
            if got is None:
                break
            answer, meta = got
            accepted.append(answer["text"])
            run.result.rows.append(_row(s, {**meta, "side": side}, "paraphrase",
                                        **{side: answer["text"]}))


async def augment(run: _Run) -> None:
    s, st = run.sample, run.s
    tpl = load_template("augment")
    accepted: list[str] = [s["query"]]
    for k in range(st.n_augment):
        def check(a: dict[str, str]) -> str | None:
            return (rules.check_augment(s["query"], s["positive"], a["query"], a["positive"],
                                        a["negative"], length_tolerance=st.augment_length_tolerance)
                    or rules.check_distinct(a["query"], accepted))
        got = await run.ask(tpl, f"a{k}", {
            "query": s["query"], "positive": s["positive"], "language": _lang(s["query"]),
            "query_chars": len(s["query"]), "positive_chars": len(s["positive"])}, check,
            accepted[1:])
        if got is None:
            return
        answer, meta = got
        accepted.append(answer["query"])
        run.result.rows.append(_row(s, {**meta, "negative_sources": ["llm"]}, "augment",
                                    query=answer["query"], positive=answer["positive"],
                                    negatives=[answer["negative"]]))


async def hard_negative(run: _Run) -> None:
    s, st = run.sample, run.s
    tpl = load_template("hard_negative")
    accepted: list[str] = list(s.get("negatives") or [])
    for k in range(st.n_negatives):
        def check(a: dict[str, str]) -> str | None:
            return (rules.check_hard_negative(s["query"], s["positive"], a["negative"],
                                              length_tolerance=st.negative_length_tolerance)
                    or rules.check_distinct(a["negative"], accepted))
        got = await run.ask(tpl, f"n{k}", {
            "query": s["query"], "positive": s["positive"], "language": _lang(s["positive"]),
            "positive_chars": len(s["positive"])}, check, list(accepted))
        if got is None:
            return
        answer, meta = got
        accepted.append(answer["negative"])
        run.result.negatives.append((answer["negative"], meta))


RUNNERS = {"paraphrase": paraphrase, "augment": augment, "hard_negative": hard_negative}


def applicable(technique: str, kind: str) -> bool:
    """The report: pairs and classification get paraphrase only."""
    return technique == "paraphrase" or kind == "retrieval"


async def synthesize_sample(gw: CompleteFn, sample: dict[str, Any], techniques: list[str],
                            settings: TechniqueSettings, model: str) -> SampleResult:
    """All requested techniques for one sample. Never raises for LLM or output problems."""
    result = SampleResult()
    # techniques are independent: run them concurrently (outputs within one stay sequential)
    await asyncio.gather(*(
        RUNNERS[t](_Run(gw, sample, t, settings, model, result))
        for t in techniques if applicable(t, sample["kind"])
    ))
    return result


def merge_negatives(sample: dict[str, Any], result: SampleResult) -> dict[str, Any] | None:
    """The sample with its LLM negatives, as a ``source=llm_negative`` row that replaces it.

    Replacing (not adding) keeps each (query, positive) pair once in the training data; the
    row's ``parent_id`` points at the original and ``meta.negative_sources`` says where each
    negative came from, which the mining stage reads when it merges mined negatives.
    """
    if not result.negatives:
        return None
    meta = json.loads(sample.get("meta") or "{}")
    existing = list(sample.get("negatives") or [])
    sources = meta.get("negative_sources") or ["original"] * len(existing)
    new = [n for n, _ in result.negatives]
    meta["negative_sources"] = sources + ["llm"] * len(new)
    meta["llm_negatives"] = [{"template": m["template"], "model": m["model"],
                              "attempt": m["attempt"]} for _, m in result.negatives]
    meta["technique"] = "hard_negative"
    base = {k: sample[k] for k in ("dataset", "kind", "instruction", "query", "positive",
                                   "score", "label")}
    return Sample(**base, negatives=existing + new, source="llm_negative",
                  parent_id=sample["id"], meta=meta).to_row()
