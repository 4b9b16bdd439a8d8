"""Read local evaluation files into plain rows: BEIR folders, STS / pair files, classification,
clustering and reranking.

Pure Python (no mteb, no torch): tests check the capping and splitting rules in milliseconds,
and :mod:`embedforge.eval.tasks` only wraps the result in mteb datasets. Every sample and split
is seeded by the task's ``seed``, so two runs (and the baseline run) score the same rows.

Files are read with prepare's stack: :mod:`embedforge.io` (records, delimiter sniffing) and the
column / label vocabulary and column resolution of :mod:`embedforge.data`, so an evaluation
file is read the same way as a training source of the same shape.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import io as eio
from ..config import ConfigError
from ..data import vocab
from ..data.fields import column_for, names_header
from .spec import TaskSpec

# the roles of ``--option NAME.map=ROLE:COLUMN`` -> the columns looked for (data.vocab)
ROLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "text1": vocab.TEXT1, "text2": vocab.TEXT2, "score": vocab.SCORE, "label": vocab.LABEL,
    "text": vocab.TEXT,
}


@dataclass
class ReadStats:
    """Rows kept and skipped (with a few examples) so a bad file is visible, not silent."""

    kept: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        self.skipped += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {why}")


def _exists(path: str) -> bool:
    try:
        return eio.exists(path)
    except (OSError, ValueError):
        return False


def check_spec(spec: TaskSpec) -> None:
    """Fail fast, naming the task, when a local task's files are missing (before any model load)."""
    if not spec.is_local:
        return
    if spec.from_beir:
        base = spec.path.rstrip("/")
        for part in ("corpus.jsonl", "queries.jsonl", f"qrels/{spec.eval_split}.tsv"):
            if not _exists(f"{base}/{part}"):
                raise ConfigError(f"task {spec.name!r}: {base}/{part} not found "
                                  f"(a BEIR folder needs corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)")
        return
    for p in [spec.path] + ([spec.test_file] if spec.test_file else []):
        if not _exists(p):
            raise ConfigError(f"task {spec.name!r}: file not found: {p}")


def _seeded_sample(items: Sequence[Any], k: int | None, seed: int) -> list[Any]:
    """``k`` items in their original order, chosen by a seeded draw (all when k is None)."""
    if k is None or k >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in keep]


# --- BEIR -------------------------------------------------------------------------------------

@dataclass
class BeirSplit:
    """Queries, corpus and qrels of one split, after the query limit and the corpus cap."""

    queries: dict[str, str]
    corpus: list[dict[str, str]]  # {"id", "title", "text"}
    relevant: dict[str, dict[str, int]]
    corpus_total: int = 0


def cap_corpus(doc_ids: Sequence[str], must_keep: set[str], cap: int | None, seed: int) -> list[str]:
    """Corpus ids to keep: every id in ``must_keep`` plus a seeded sample up to ``cap``.

    The relevant documents of the evaluated queries are never dropped, whatever the cap (a cap
    that removed them would score a different task); the cap only thins the distractors.
    """
    if cap is None or cap >= len(doc_ids):
        return list(doc_ids)
    others = [d for d in doc_ids if d not in must_keep]
    room = max(0, cap - len(must_keep))
    chosen = set(_seeded_sample(others, room, seed)) | must_keep
    return [d for d in doc_ids if d in chosen]


def read_beir(spec: TaskSpec) -> BeirSplit:
    base = spec.path.rstrip("/")
    split = spec.eval_split
    queries_all = {str(r["_id"]): str(r.get("text") or "")
                   for r in eio.read_jsonl(f"{base}/queries.jsonl")}
    relevant: dict[str, dict[str, int]] = defaultdict(dict)
    unit = eio.FileUnit(f"{base}/qrels/{split}.tsv")
    header = eio.read_header(unit.path, "\t")
    has_header = "query-id" in header or "corpus-id" in header
    names = ["query-id", "corpus-id", "score"]
    for rec in eio.iter_records(unit, delimiter="\t", columns=names, has_header=has_header,
                                line_based=True):
        if rec.data is None:
            continue
        qid, did = str(rec.data["query-id"]).strip(), str(rec.data["corpus-id"]).strip()
        try:
            score = int(float(rec.data.get("score") or 1))
        except ValueError:
            continue
        if qid in queries_all and did:
            relevant[qid][did] = score
    qids = [q for q in sorted(relevant) if any(s > 0 for s in relevant[q].values())]
    qids = _seeded_sample(qids, spec.limit, spec.seed)
    if not qids:
        raise ConfigError(f"task {spec.name!r}: no query of {base}/queries.jsonl has a relevant "
                          f"document in qrels/{split}.tsv")
    corpus_rows = eio.read_jsonl(f"{base}/corpus.jsonl")
    docs = {str(r["_id"]): r for r in corpus_rows}
    must_keep = {d for q in qids for d, s in relevant[q].items() if s > 0 and d in docs}
    kept_ids = cap_corpus(list(docs), must_keep, spec.max_corpus, spec.seed)
    corpus = [{"id": d, "title": str(docs[d].get("title") or ""), "text": str(docs[d].get("text") or "")}
              for d in kept_ids]
    return BeirSplit(queries={q: queries_all[q] for q in qids}, corpus=corpus,
                     relevant={q: dict(relevant[q]) for q in qids}, corpus_total=len(docs))


# --- delimited / JSON rows --------------------------------------------------------------------

def read_rows(path: str, spec: TaskSpec) -> list[dict[str, Any]]:
    """Rows of a TSV/CSV/TXT/JSONL/JSON/Parquet file as dicts.

    Header-less delimited files get positional keys ``"0"``, ``"1"``… unless ``columns`` names
    them. Tab-separated files are read one physical line per row (no quoting: STS-B's texts
    contain quotes), comma-separated ones with the csv module.
    """
    ext = eio.base_ext(path)
    unit = eio.FileUnit(path)
    if ext not in (".csv", ".tsv", ".txt"):
        return [r.data for r in eio.iter_records(unit) if r.data is not None]
    delimiter, names = eio.sniff_delimited(path, spec.delimiter)
    header = spec.header if spec.header is not None else names_header(
        names, (*vocab.all_columns(), *spec.map.values()))
    columns = spec.columns
    if header and columns is None:
        columns = [f.strip().lstrip("\ufeff") for f in names]
    line_based = delimiter == "\t"
    rows = []
    for rec in eio.iter_records(unit, delimiter=delimiter, columns=columns, has_header=header,
                                line_based=line_based):
        if rec.data is not None:
            rows.append({k: (v.lstrip("\ufeff") if isinstance(v, str) else v)
                         for k, v in rec.data.items()})
    return rows


def _role_key(row: dict[str, Any], role: str, spec: TaskSpec, positional: int | None,
              columns: tuple[str, ...] | None = None) -> str | None:
    """The user's map, else a vocabulary column, else the column at ``positional`` of a
    header-less file (keys ``"0"``, ``"1"``...)."""
    key = column_for(row, role, columns or ROLE_COLUMNS[role], spec.map)
    if key is not None:
        return key
    if positional is not None and str(positional) in row:
        return str(positional)
    return None


def _pair_positions(row: dict[str, Any]) -> tuple[int, int, int]:
    """Positional (text1, text2, value) of a header-less pair file.

    STS-B: ``genre file year id score s1 s2 [sources]``; ATEC: ``id s1 s2 label``; the
    common ``s1 s2 value`` otherwise.
    """
    n = len(row)
    if n >= 7 and _is_float(row.get("4")):
        return 5, 6, 4
    if n == 4 and not _is_float(row.get("1")) and _is_float(row.get("3")):
        return 1, 2, 3
    return 0, 1, 2


def _is_float(v: Any) -> bool:
    try:
        float(str(v).strip())
        return True
    except ValueError:
        return False


def _is_stsb_layout(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and "4" in rows[0] and _pair_positions(rows[0]) == (5, 6, 4)


@dataclass
class PairRows:
    text1: list[str]
    text2: list[str]
    values: list[float]
    stats: ReadStats
    stsb_layout: bool = False


def read_pairs(spec: TaskSpec, binary: bool) -> PairRows:
    """(text1, text2, score) for STS or (text1, text2, 0/1) for pair classification."""
    rows = read_rows(spec.path, spec)
    stats = ReadStats()
    t1: list[str] = []
    t2: list[str] = []
    vals: list[float] = []
    value_role = "label" if binary else "score"
    for i, row in enumerate(rows, start=1):
        p1, p2, pv = _pair_positions(row)
        k1 = _role_key(row, "text1", spec, p1)
        k2 = _role_key(row, "text2", spec, p2)
        kv = _role_key(row, value_role, spec, pv, vocab.PAIR_LABEL if binary else None)
        if not (k1 and k2 and kv) or k1 not in row or k2 not in row or kv not in row:
            stats.skip(f"row {i}", "missing text1/text2/" + value_role)
            continue
        a, b = str(row[k1] or "").strip(), str(row[k2] or "").strip()
        raw = str(row[kv]).strip()
        if not a or not b:
            stats.skip(f"row {i}", "empty text")
            continue
        if binary:
            if raw.lower() not in vocab.BINARY:
                stats.skip(f"row {i}", f"label {raw!r} is not 0/1")
                continue
            value = vocab.BINARY[raw.lower()]
        else:
            try:
                value = float(raw)
            except ValueError:
                stats.skip(f"row {i}", f"score {raw!r} is not a number")
                continue
            if math.isnan(value):
                stats.skip(f"row {i}", "score is NaN")
                continue
        t1.append(a)
        t2.append(b)
        vals.append(value)
    keep = _seeded_sample(range(len(t1)), spec.limit, spec.seed)
    stats.kept = len(keep)
    if not keep:
        raise ConfigError(f"task {spec.name!r}: no usable pair in {spec.path} "
                          f"({stats.skipped} rows skipped, e.g. {stats.examples[:2]})")
    if binary and len({vals[i] for i in keep}) < 2:
        raise ConfigError(f"task {spec.name!r}: pair classification needs both labels 0 and 1")
    return PairRows([t1[i] for i in keep], [t2[i] for i in keep], [vals[i] for i in keep], stats,
                    stsb_layout=_is_stsb_layout(rows[:1]))


def sts_range(spec: TaskSpec, pairs: PairRows) -> tuple[float, float]:
    """The score range mteb normalises by: the option, 0-5 for the STS-B layout, else min/max."""
    if spec.score_range:
        return spec.score_range
    if pairs.stsb_layout:
        return 0.0, 5.0
    lo, hi = min(pairs.values), max(pairs.values)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


# --- classification ---------------------------------------------------------------------------

@dataclass
class ClassificationSplits:
    train_text: list[str]
    train_label: list[str]
    test_text: list[str]
    test_label: list[str]
    stats: ReadStats


def _text_label(rows: list[dict[str, Any]], spec: TaskSpec, stats: ReadStats,
                path: str = "") -> list[tuple[str, str]]:
    out = []
    where = f"{path} row" if path else "row"
    for i, row in enumerate(rows, start=1):
        kt = _role_key(row, "text", spec, 0)
        kl = _role_key(row, "label", spec, 1)
        if not (kt and kl) or kt not in row or kl not in row:
            stats.skip(f"{where} {i}", "missing field text/label")
            continue
        text, label = str(row[kt] or "").strip(), str(row[kl] if row[kl] is not None else "").strip()
        if not text or not label:
            stats.skip(f"{where} {i}", f"empty field {'text' if not text else 'label'!r}")
            continue
        out.append((text, label))
    return out


def stratified_split(items: Sequence[tuple[str, str]], test_fraction: float,
                     seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Deterministic per-label split: each label with ≥ 2 rows gives ⌈share⌉ rows to test.

    Per label, so every test label has training examples (mteb's k-shot classifier cannot
    predict a label it never saw) and the split does not depend on row order across labels.
    """
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(items):
        by_label[label].append(i)
    rng = random.Random(seed)
    test_idx: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label][:]
        rng.shuffle(idx)
        if len(idx) >= 2:
            n_test = min(len(idx) - 1, max(1, round(len(idx) * test_fraction)))
            test_idx.update(idx[:n_test])
    train = [items[i] for i in range(len(items)) if i not in test_idx]
    test = [items[i] for i in range(len(items)) if i in test_idx]
    return train, test


def read_classification(spec: TaskSpec) -> ClassificationSplits:
    """Train/test rows: ``test_file`` when given, else a stratified split of PATH.

    ``limit`` caps the rows read from each file by a seeded draw before splitting.
    """
    stats = ReadStats()
    items = _text_label(read_rows(spec.path, spec), spec, stats)
    items = _seeded_sample(items, spec.limit, spec.seed)
    if spec.test_file:
        train = items
        test = _seeded_sample(_text_label(read_rows(spec.test_file, spec), spec, stats),
                              spec.limit, spec.seed)
    else:
        train, test = stratified_split(items, spec.test_fraction, spec.seed)
    stats.kept = len(train) + len(test)
    if not train or not test:
        raise ConfigError(f"task {spec.name!r}: classification needs train and test rows, got "
                          f"{len(train)} / {len(test)} from {spec.path} ({stats.skipped} skipped)")
    return ClassificationSplits([t for t, _ in train], [lab for _, lab in train],
                                [t for t, _ in test], [lab for _, lab in test], stats)


# --- clustering -------------------------------------------------------------------------------

@dataclass
class ClusteringRows:
    texts: list[str]
    labels: list[str]
    stats: ReadStats


def read_clustering(spec: TaskSpec) -> ClusteringRows:
    """(text, label) rows of PATH, read like a classification file; ``limit`` is a seeded draw.

    No split: clustering scores how well the embeddings group texts of one label together,
    nothing is trained.
    """
    stats = ReadStats()
    items = _seeded_sample(_text_label(read_rows(spec.path, spec), spec, stats, spec.path),
                           spec.limit, spec.seed)
    stats.kept = len(items)
    if len({lab for _, lab in items}) < 2:
        raise ConfigError(f"task {spec.name!r}: clustering needs texts of at least 2 labels in "
                          f"{spec.path}, got {len(items)} rows ({stats.skipped} skipped, e.g. "
                          f"{stats.examples[:2]})")
    return ClusteringRows([t for t, _ in items], [lab for _, lab in items], stats)


# --- reranking --------------------------------------------------------------------------------

@dataclass
class RerankingSplit:
    """Queries, the union of their candidates as the corpus, qrels and each query's candidates."""

    queries: dict[str, str]
    corpus: list[dict[str, str]]  # {"id", "title", "text"}
    relevant: dict[str, dict[str, int]]
    candidates: dict[str, list[str]]
    stats: ReadStats = field(default_factory=ReadStats)


def _text_list(row: dict[str, Any], key: str) -> list[str] | str:
    """A list of non-empty strings under ``key`` (a single string counts as one), else why not."""
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return f"field {key!r} must be a list of strings, got {type(value).__name__}"
    wrong = next((v for v in value if not isinstance(v, str)), None)
    if wrong is not None or any(v is None for v in value):
        return f"field {key!r} must be a list of strings, holds {type(wrong).__name__} {wrong!r}"
    return [v.strip() for v in value if v.strip()]


def read_reranking(spec: TaskSpec) -> RerankingSplit:
    """A reranking task from a JSONL file or from a BEIR folder (see :func:`beir_reranking`).

    File rows: ``{"query": str, "positives": [str], "candidates": [str]}`` (``positive`` /
    ``negatives`` / ``negative`` are accepted too, mteb's own reranking layout). Candidates are
    the texts to rank; positives missing from them are added, so every positive is rankable.
    Texts become documents by content: a text shared by two queries is one document.
    """
    if spec.from_beir:
        return beir_reranking(spec)
    stats = ReadStats()
    queries: dict[str, str] = {}
    relevant: dict[str, dict[str, int]] = {}
    candidates: dict[str, list[str]] = {}
    doc_ids: dict[str, str] = {}
    for rec in eio.iter_records(eio.FileUnit(spec.path)):
        where = f"{spec.path} line {rec.line}"
        if rec.data is None:
            stats.skip(where, rec.error or "unreadable row")
            continue
        query = rec.data.get("query")
        if not isinstance(query, str) or not query.strip():
            stats.skip(where, "field 'query' must be a non-empty string")
            continue
        pos = _text_list(rec.data, "positives" if "positives" in rec.data else "positive")
        cand_key = next((k for k in ("candidates", "negatives", "negative") if k in rec.data),
                        "candidates")
        cands = _text_list(rec.data, cand_key)
        if isinstance(pos, str) or isinstance(cands, str):
            stats.skip(where, pos if isinstance(pos, str) else str(cands))
            continue
        if not pos:
            stats.skip(where, "field 'positives' is empty: a query needs a relevant text")
            continue
        ranked = list(dict.fromkeys([*cands, *pos]))
        if len(ranked) < 2:
            stats.skip(where, f"field {cand_key!r}: nothing to rank the positives against")
            continue
        qid = f"q{rec.line}"
        queries[qid] = query.strip()
        ids = [doc_ids.setdefault(t, f"d{len(doc_ids)}") for t in ranked]
        candidates[qid] = ids
        relevant[qid] = {doc_ids[t]: 1 for t in pos}
    keep = _seeded_sample(sorted(queries, key=lambda q: int(q[1:])), spec.limit, spec.seed)
    stats.kept = len(keep)
    if not keep:
        raise ConfigError(f"task {spec.name!r}: no usable reranking row in {spec.path} "
                          f"({stats.skipped} skipped, e.g. {stats.examples[:2]})")
    used = {d for q in keep for d in candidates[q]}
    corpus = [{"id": d, "title": "", "text": t} for t, d in doc_ids.items() if d in used]
    return RerankingSplit({q: queries[q] for q in keep}, corpus,
                          {q: relevant[q] for q in keep}, {q: candidates[q] for q in keep}, stats)


def beir_reranking(spec: TaskSpec) -> RerankingSplit:
    """Reranking derived from a BEIR folder: each query ranks its positives plus ``depth``
    other corpus documents drawn at random, seeded by (seed, query id).

    Random, not BM25, candidates: no lexical retriever to install or tune, and the draw depends
    only on the files, the seed and the query id, so a baseline and a candidate model (and a
    rerun with more queries) rank exactly the same lists. Easier than BM25 negatives, so scores
    sit above mteb's reranking tasks of the same data; compare runs with each other.
    """
    data = read_beir(spec.model_copy(update={"max_corpus": None}))
    all_ids = [d["id"] for d in data.corpus]
    docs = {d["id"]: d for d in data.corpus}
    candidates: dict[str, list[str]] = {}
    relevant: dict[str, dict[str, int]] = {}
    for qid, rels in data.relevant.items():
        pos = [d for d, s in rels.items() if s > 0 and d in docs]
        if not pos:
            continue
        pos_set = set(pos)
        rng = random.Random(f"{spec.seed}:{qid}")
        others: list[str] = []
        for i in rng.sample(range(len(all_ids)), min(len(all_ids), spec.depth + len(pos))):
            if all_ids[i] not in pos_set and len(others) < spec.depth:
                others.append(all_ids[i])
        candidates[qid] = sorted(pos + others)
        relevant[qid] = {d: rels[d] for d in pos}
    if not candidates:
        raise ConfigError(f"task {spec.name!r}: no query of {spec.path} has a relevant document "
                          f"in its corpus")
    used = {d for ids in candidates.values() for d in ids}
    corpus = [docs[d] for d in all_ids if d in used]
    return RerankingSplit({q: data.queries[q] for q in candidates}, corpus, relevant, candidates,
                          ReadStats(kept=len(candidates)))
