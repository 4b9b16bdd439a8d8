"""Plan a source into units of work and turn one unit into unified samples (no Ray here).

A unit writes its own Parquet part(s), rejected rows and a small ``_units/<id>.json`` marker
last, so a killed job keeps every finished unit and a re-run skips them (``resume``). A unit
whose file could not be read writes no marker (it is tried again next time) and never
overwrites earlier parts. Unit ids include the file's size and mtime (or ETag), so an edited
file is read again.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from .. import __version__
from .. import io as eio
from ..data.fields import RowError
from ..data.formats import get_format, looks_like_header
from ..data.retrieval import beir_doc_text, beir_qrel_ids, from_beir_qrel
from ..data.spec import SourceSpec
from ..instructions import resolve_instruction
from ..redact import redact
from ..schema import rows_to_table

SAMPLES_DIR = "samples"
REJECTED_DIR = "rejected"
UNITS_DIR = "_units"
MAX_RAW_CHARS = 500


def _unit_id(spec: SourceSpec, unit: eio.FileUnit, instruction: str,
             version: Any = None) -> str:
    """Stable id of a unit's output: source options, byte range, instruction, embedforge
    version, and the version of the file content (size + mtime, or the object store's ETag),
    so an edited source gets new ids and is read again instead of being resumed."""
    fp = json.dumps([spec.model_dump(mode="json"), asdict(unit), instruction, __version__,
                     version], sort_keys=True, ensure_ascii=False, default=str)
    return f"{spec.name}-{hashlib.sha1(fp.encode()).hexdigest()[:16]}"


def unit_dataset(unit_id: str) -> str:
    """The source name a unit id starts with (``NAME-<16 hex>``)."""
    return unit_id[:-17]


def resolve_labels(spec: SourceSpec) -> SourceSpec:
    """``labels`` may name a JSON file holding the label list (e.g. Banking77 categories.json)."""
    if spec.labels and len(spec.labels) == 1 and spec.labels[0].endswith(".json"):
        try:
            labels = eio.read_json(spec.labels[0])
        except (OSError, ValueError) as exc:
            raise eio.SourceError(f"source {spec.name!r}: cannot read labels file {spec.labels[0]}: {exc}") from exc
        if not isinstance(labels, list):
            raise eio.SourceError(f"source {spec.name!r}: labels file {spec.labels[0]} must hold a JSON list")
        return spec.model_copy(update={"labels": [str(x) for x in labels]})
    return spec


def plan_source(spec: SourceSpec, overrides: dict[str, str], chunk_bytes: int) -> list[dict[str, Any]]:
    """Units of work for one source; raises SourceError when the source cannot be used at all."""
    spec = resolve_labels(spec)
    instruction = resolve_instruction(spec.name, spec.format, spec.instruction, overrides)
    if spec.format == "beir":
        return _plan_beir(spec, instruction, chunk_bytes)
    fmt = get_format(spec.format)
    units: list[dict[str, Any]] = []
    for path in eio.expand_paths(spec.path):
        ext = eio.base_ext(path)
        try:
            version = eio.file_version(path)
        except OSError as exc:
            raise eio.SourceError(f"{path}: unreadable file: {exc}") from exc
        has_header = False
        header: list[str] | None = None
        delim: str | None = None
        if ext in (".tsv", ".txt", ".csv") and not path.startswith(eio.HF_PREFIX):
            try:
                delim, first = eio.sniff_delimited(path, spec.delimiter)
            except (OSError, UnicodeDecodeError) as exc:
                raise eio.SourceError(f"{path}: unreadable file: {exc}") from exc
            has_header = spec.header if spec.header is not None else looks_like_header(first, fmt, spec)
            if has_header:
                header = spec.columns or first
            elif spec.columns is None:
                lo = len(fmt.positional) - fmt.optional_positional
                if not lo <= len(first) <= len(fmt.positional):
                    raise eio.SourceError(
                        f"{path}: line 1 has {len(first)} {delim!r}-separated fields and no "
                        f"header; name them with --option {spec.name}.columns=a,b,c "
                        f"(roles for {spec.format}: {', '.join(fmt.positional)})")
                header = list(fmt.positional[: len(first)])
            else:
                header = spec.columns
        line_based = delim == "\t" or ext in (".tsv", ".txt")
        if path.startswith(eio.HF_PREFIX):  # row ranges from the dataset card's counts
            pieces = (eio.plan_hf_units(path, chunk_bytes) if spec.limit is None
                      else [eio.FileUnit(path=path, header=header)])
        elif ext == ".csv" and not line_based and spec.limit is not None:
            pieces = [eio.FileUnit(path=path, header=header)]
        elif ext == ".csv" and not line_based:  # quoted CSV: pieces on record boundaries
            pieces = eio.plan_csv_units(path, chunk_bytes, header, delim or ",")
        elif ext == ".json" and spec.limit is None:  # a list: pieces of whole items
            pieces = eio.plan_json_units(path, chunk_bytes)
        elif ext == ".parquet" and spec.limit is None and not eio.is_compressed(path):
            # whole row groups per piece; with a limit the first rows of the file, not of
            # each piece, are wanted: one unit
            pieces = eio.plan_parquet_units(path, chunk_bytes)
        else:
            pieces = eio.plan_file_units(path, chunk_bytes, header, force=line_based)
        for u in pieces:
            u.extras = {"delimiter": delim, "line_based": line_based}
        units.extend(_unit_dict(spec, u, instruction, has_header=has_header, version=version)
                     for u in pieces)
    return units


def _unit_dict(spec: SourceSpec, unit: eio.FileUnit, instruction: str, *, has_header: bool,
               kind: str = "file", version: Any = None) -> dict[str, Any]:
    return {
        "unit_id": _unit_id(spec, unit, instruction, version),
        "kind": kind,
        "spec": spec.model_dump(mode="json"),
        "unit": asdict(unit),
        "instruction": instruction,
        "has_header": has_header,
    }


def _plan_beir(spec: SourceSpec, instruction: str, chunk_bytes: int) -> list[dict[str, Any]]:
    """One unit for a corpus of up to ``chunk_bytes``; a larger one is split like a line file.

    Split, one ``qrels`` unit checks every qrels row (and rejects the bad ones, by line) and
    writes no sample, and each ``docs`` piece, a byte range of corpus.jsonl, writes the samples
    of the documents in its range. So every row is still rejected once, with the same reason,
    no task holds more of the corpus than its range, and no task keeps more than ids for all
    of it. (A corpus-id repeated in corpus.jsonl in two pieces gives a sample for each copy;
    in one unit the last copy wins.)
    """
    split = _beir_split(spec)
    version = _beir_version(spec.path, split)
    whole = eio.FileUnit(path=spec.path, extras={"split": split})
    pieces = eio.plan_file_units(_beir_file(spec.path, "corpus"), chunk_bytes, force=True)
    if len(pieces) == 1:
        return [_unit_dict(spec, whole, instruction, has_header=True, kind="beir", version=version)]
    whole.extras["role"] = "qrels"
    units = [_unit_dict(spec, whole, instruction, has_header=True, kind="beir", version=version)]
    for piece in pieces:
        piece.extras = {"split": split, "role": "docs", "folder": spec.path}
        units.append(_unit_dict(spec, piece, instruction, has_header=True, kind="beir",
                                version=version))
    return units


def _beir_file(folder: str, name: str) -> str:
    """``corpus.jsonl`` / ``queries.jsonl`` of a BEIR folder, or its compressed copy."""
    return eio.expand_paths(eio.join(folder, f"{name}.jsonl*"))[0]


def _beir_split(spec: SourceSpec) -> str:
    qrels_dir = eio.join(spec.path, "qrels")
    if not eio.exists(eio.join(spec.path, "corpus.jsonl")) and not eio.exists(eio.join(spec.path, "corpus.jsonl.gz")):
        raise eio.SourceError(f"{spec.path}: not a BEIR folder (no corpus.jsonl)")
    available = sorted(posixpath.basename(p)[:-4] for p in eio.list_files(qrels_dir, ".tsv"))
    if spec.split:
        if spec.split not in available:
            raise eio.SourceError(f"{spec.path}: no qrels/{spec.split}.tsv (available: {', '.join(available) or 'none'})")
        return spec.split
    if "train" in available:
        return "train"
    if len(available) == 1:
        return available[0]
    raise eio.SourceError(f"{spec.path}: choose a qrels split with {spec.name}=beir:PATH:SPLIT "
                          f"(available: {', '.join(available) or 'none'})")


def _beir_version(folder: str, split: str) -> list[Any]:
    """Versions of the files a BEIR unit reads (corpus, queries, the split's qrels)."""
    files = [eio.join(folder, "qrels", f"{split}.tsv")]
    for name in ("corpus", "queries"):
        files += eio.expand_paths(eio.join(folder, f"{name}.jsonl*"))
    try:
        return [[posixpath.basename(f), eio.file_version(f)] for f in files]
    except OSError as exc:
        raise eio.SourceError(f"{folder}: unreadable BEIR file: {exc}") from exc


class _Writer:
    """Collects rows of one unit and flushes them to Parquet parts of bounded size."""

    def __init__(self, out_dir: str, unit_id: str, flush_rows: int):
        self.out_dir, self.unit_id, self.flush_rows = out_dir, unit_id, flush_rows
        self.rows: list[dict[str, Any]] = []
        self.parts = 0
        self.total = 0
        self.seen: set[str] = set()
        self.duplicates = 0

    def add(self, row: dict[str, Any]) -> None:
        if row["id"] in self.seen:  # exact duplicate sample (same dataset + content)
            self.duplicates += 1
            return
        self.seen.add(row["id"])
        self.rows.append(row)
        if len(self.rows) >= self.flush_rows:
            self.flush()

    def flush(self, final: bool = False) -> None:
        if not self.rows and not (final and self.parts == 0):
            return
        path = eio.join(self.out_dir, SAMPLES_DIR, f"part-{self.unit_id}-{self.parts:04d}.parquet")
        eio.write_parquet_atomic(rows_to_table(self.rows), path)
        self.total += len(self.rows)
        self.parts += 1
        self.rows = []


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def process_unit(task: dict[str, Any], out_dir: str, flush_rows: int = 100_000) -> dict[str, Any]:
    """Read one unit, write samples + rejected rows + its marker; return its stats."""
    spec = SourceSpec.model_validate(task["spec"])
    unit = eio.FileUnit(**task["unit"])
    uid = task["unit_id"]
    writer = _Writer(out_dir, uid, flush_rows)
    rejected: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    rows_in = 0
    by_kind: Counter[str] = Counter()
    fatal: str | None = None

    def reject(file: str, line: int, reason: str, message: str, raw: Any) -> None:
        reasons[reason] += 1
        if not isinstance(raw, str):
            raw = json.dumps(raw, ensure_ascii=False, default=str)
        rejected.append({"dataset": spec.name, "file": file, "line": line, "reason": reason,
                         "message": message, "raw": raw[:MAX_RAW_CHARS]})

    shown: dict[str, str] = {}  # a source URI's password stays out of every sample's meta

    def emit(samples: list[Any], file: str, line: int) -> None:
        if file not in shown:
            shown[file] = redact(file)
        for s in samples:
            s.meta.setdefault("file", shown[file])
            s.meta.setdefault("line", line)
            before = writer.duplicates
            writer.add(s.to_row())
            if writer.duplicates == before:
                by_kind[s.kind] += 1

    try:
        if task["kind"] == "beir":
            records, transform, counted = _beir_reader(spec, unit, task["instruction"])
        else:
            counted = True
            fmt = get_format(spec.format)
            assert fmt.transform is not None
            records = eio.iter_records(unit, delimiter=unit.extras.get("delimiter"),
                                       columns=unit.header, has_header=task["has_header"],
                                       limit=spec.limit,
                                       line_based=unit.extras.get("line_based", False))
            transform = lambda d: fmt.transform(d, spec, task["instruction"])  # noqa: E731
        for rec in records:
            rows_in += counted  # a corpus piece's rows were counted by its qrels unit
            if rec.error is not None:
                reject(rec.file, rec.line, rec.reason or "unreadable_row", rec.error, rec.raw)
                continue
            assert rec.data is not None
            try:
                emit(transform(rec.data), rec.file, rec.line)
            except RowError as exc:
                reject(rec.file, rec.line, exc.reason, exc.message, rec.data)
            except ValidationError as exc:
                reject(rec.file, rec.line, "invalid_sample", _first_error(exc), rec.data)
    except eio.SourceError as exc:
        fatal = str(exc)
        reasons["unreadable_file"] += 1
        rejected.append({"dataset": spec.name, "file": unit.path, "line": 0,
                         "reason": "unreadable_file", "message": fatal, "raw": ""})
    if fatal is None:
        # a unit that could not be read leaves earlier parts of the same content alone (no
        # empty part over them) and gets no marker, so the next run tries it again
        writer.flush(final=True)
    if rejected:
        eio.write_jsonl_atomic(rejected, eio.join(out_dir, REJECTED_DIR, f"{uid}.jsonl"))
    stats = {
        "unit_id": uid,
        "dataset": spec.name,
        "format": spec.format,
        "path": unit.path,
        "rows_in": rows_in,
        "samples": writer.total,
        "samples_by_kind": dict(by_kind),
        "rejected": dict(reasons),
        "duplicates_dropped": writer.duplicates,
        "fatal": fatal,
        "parts": writer.parts,
    }
    try:
        import ray

        if ray.is_initialized():
            stats["node_id"] = ray.get_runtime_context().get_node_id()
    except ImportError:  # pragma: no cover - ray is a hard dependency
        pass
    if fatal is None:
        eio.write_json(stats, eio.join(out_dir, UNITS_DIR, f"{uid}.json"))
    return stats


def _beir_reader(spec: SourceSpec, unit: eio.FileUnit, instruction: str):
    """``(qrels records, transform, whether they count as rows read)`` of a BEIR unit.

    Its role (see :func:`_plan_beir`): ``all`` reads and checks everything; ``qrels`` checks
    every row against the ids of the whole corpus (streamed, ids only) and makes no sample;
    ``docs`` makes the samples of the rows whose document lies in its byte range, skipping
    the rows the ``qrels`` unit rejects so none is reported twice (an empty document is only
    seen, and so only rejected, by its piece).
    """
    role = unit.extras.get("role", "all")
    split = unit.extras["split"]
    folder = unit.extras.get("folder", unit.path)
    qrels_path = eio.join(folder, "qrels", f"{split}.tsv")
    header = eio.read_header(qrels_path)

    def qrels() -> Iterator[eio.Record]:
        return eio.iter_records(eio.FileUnit(qrels_path, header=header), delimiter="\t",
                                has_header=True, limit=spec.limit)

    def samples(queries: dict[str, str], corpus: Mapping[str, str]):
        return lambda d: from_beir_qrel(d, queries, corpus, spec.name, instruction, split)

    queries_file = eio.FileUnit(_beir_file(folder, "queries"))
    corpus_file = eio.FileUnit(_beir_file(folder, "corpus"))
    if role == "all":
        rows = list(qrels())
        need_q, need_d = _qrel_ids(rows)
        return rows, samples(_texts(queries_file, need_q, _query_text),
                             _texts(corpus_file, need_d, beir_doc_text)), True
    if role == "qrels":
        need_q, need_d = _qrel_ids(qrels())
        # every document counts as non-empty here (its piece rejects an empty one): ids only
        present = dict.fromkeys(_texts(corpus_file, need_d, None), "(in corpus)")
        check = samples(_texts(queries_file, need_q, _query_text), present)
        return qrels(), lambda d: check(d) and [], True  # rejects only; the pieces write
    # one read and one parse of the qrels: the (record, ids) list holds them (small next to a
    # corpus piece), and both the needed ids and the rows this piece keeps come from it
    parsed = [(r, ids) for r in qrels() if (ids := _valid_ids(r))]
    corpus = _texts(unit, {ids[1] for _, ids in parsed}, beir_doc_text)  # this byte range only
    mine = [(r, ids) for r, ids in parsed if ids[1] in corpus]
    queries = {q: t for q, t in _texts(queries_file, {ids[0] for _, ids in mine}, _query_text).items()
               if t.strip()}  # an unknown or empty query is the qrels unit's to reject
    return [r for r, ids in mine if ids[0] in queries], samples(queries, corpus), False


def _query_text(d: Mapping[str, Any]) -> str:
    return str(d.get("text") or "")


def _valid_ids(rec: eio.Record) -> tuple[str, str, float] | None:
    """``(query-id, corpus-id, score)`` of a qrels record, or None for a row it rejects."""
    if rec.data is None:
        return None
    try:
        return beir_qrel_ids(rec.data)
    except RowError:
        return None


def _qrel_ids(records: Iterable[eio.Record]) -> tuple[set[str], set[str]]:
    """The query ids and corpus ids of the rows that get as far as the id look-ups (a row
    rejected for a missing id or a bad score never looks one up)."""
    need_q: set[str] = set()
    need_d: set[str] = set()
    for ids in filter(None, map(_valid_ids, records)):
        need_q.add(ids[0])
        need_d.add(ids[1])
    return need_q, need_d


def _texts(unit: eio.FileUnit, need: set[str], text_of) -> dict[str, Any]:
    """``{_id: text_of(record)}`` of the JSON lines of ``unit`` whose ``_id`` is in ``need``
    (the last copy of an id wins); ``text_of=None`` keeps the ids only."""
    out: dict[str, Any] = {}
    for rec in eio.iter_records(unit):
        if rec.data is None:
            continue
        key = str(rec.data.get("_id", ""))
        if key in need:
            out[key] = text_of(rec.data) if text_of else None
    return out
