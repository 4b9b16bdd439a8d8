"""Training data: unified samples -> one memory-mapped Arrow file per dataset -> text batches.

The driver streams the stage's input Parquet file by file, in record batches, into one Arrow
IPC file per dataset (``DIR/data/<dataset>.arrow`` + ``manifest.json``). Workers memory-map those files:
the batch sampler needs random access by row (one dataset per batch, p ∝ n^α), which a
sequential Ray Data stream cannot give, and a memory map touches only the pages of the rows
a batch uses, so no process ever holds the corpus in memory.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from .. import io as eio
from ..config import ConfigError
from ..data.classification import draw_positive_and_negatives
from ..instructions import format_instruction, is_symmetric
from .sampler import BatchDecision, BatchPlan, DatasetInfo

if TYPE_CHECKING:
    from .config import TrainConfig

COLUMNS = ("id", "instruction", "query", "positive", "negatives", "score", "label")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def sample_files(path: str) -> list[str]:
    """:func:`embedforge.io.sample_files`, failing as a config error (exit 2) when empty."""
    files = eio.sample_files(path)
    if not files:
        raise ConfigError(f"no unified samples (Parquet) under {path}")
    return files


def _check(table: pa.Table | pa.RecordBatch, kind: str, path: str) -> None:
    """Reject rows a loss cannot use, naming the file, row id and field."""
    ids = table.column("id").to_pylist()
    if kind in ("retrieval", "pair"):
        for col in ("query", "positive"):
            bad = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table.column(col))), 0)
            if pc.any(bad).as_py():
                i = bad.to_pylist().index(True)
                raise ConfigError(f"{path}: sample id={ids[i]} ({kind}): field {col!r} is empty")
    if kind == "pair" and table.column("score").null_count:
        i = table.column("score").is_null().to_pylist().index(True)
        raise ConfigError(f"{path}: sample id={ids[i]} (pair): field 'score' is null")
    if kind == "classification" and table.column("label").null_count:
        i = table.column("label").is_null().to_pylist().index(True)
        raise ConfigError(f"{path}: sample id={ids[i]} (classification): field 'label' is null")


BATCH_ROWS = 1024
"""Rows per record batch read while materializing: peak memory is about this many samples
(with their negatives) per input file, whatever the file's size."""

_GROUP_COLUMNS = ["id", "dataset", "kind"]


def read_batches(path: str, columns: list[str] | None = None,
                 batch_size: int | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of one Parquet file (local or fsspec URI), ``batch_size`` rows at most.

    Why: ``pq.read_table`` decodes the whole file at once, so a single multi-GB part file
    would have to fit in the driver's memory; a batch iterator holds one batch (plus the
    row group page being decoded) at a time.
    """
    return eio.parquet_batches(path, columns, batch_size or BATCH_ROWS)


def owners(batches: Iterable[pa.RecordBatch], kinds: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Per sample id of one file, the smallest ``(dataset, kind)`` group (with a kind in
    ``kinds``) that holds it: the group that takes the id when the file's groups are taken in
    sorted order, as the whole-file implementation did. Reads only the id/dataset/kind columns.
    """
    owner: dict[str, tuple[str, str]] = {}
    for b in batches:
        for i, d, k in zip(b.column("id").to_pylist(), b.column("dataset").to_pylist(),
                           b.column("kind").to_pylist(), strict=True):
            if k not in kinds:
                continue
            cur = owner.get(i)
            if cur is None or (d, k) < cur:
                owner[i] = (d, k)
    return owner


def kept_parts(batch: pa.RecordBatch, owner: dict[str, tuple[str, str]],
               seen: set[str]) -> Iterator[tuple[tuple[str, str], pa.RecordBatch]]:
    """The rows of ``batch`` to train on, per ``(dataset, kind)`` group in sorted order.

    A row is kept when its id came in no earlier input file (``seen``) and its group owns the
    id in this file (:func:`owners`); rows of the same group sharing an id are all kept, like
    before. Pure: ``seen`` and ``owner`` are only read.
    """
    ids = batch.column("id").to_pylist()
    groups = list(zip(batch.column("dataset").to_pylist(), batch.column("kind").to_pylist(),
                      strict=True))
    keep = [i not in seen and owner.get(i) == g for i, g in zip(ids, groups, strict=True)]
    for g in sorted({g for g, k in zip(groups, keep, strict=True) if k}):
        part = batch.filter(pa.array([k and h == g for h, k in zip(groups, keep, strict=True)]))
        yield g, part


def materialize(inputs: list[str], out_dir: str, kinds: tuple[str, ...],
                batch_size: int | None = None) -> list[dict[str, Any]]:
    """Write ``out_dir/<dataset>.arrow`` per (dataset, kind) of ``inputs``; returns the manifest.

    A sample id is taken once, from the first input that has it: ``[mined, synthesized]``
    trains on the mined copy of a retrieval sample (with its negatives) and on the synthesized
    folder's other rows, instead of on both copies. Idempotent: an existing ``manifest.json``
    whose inputs match is reused as is.

    Each file is streamed twice in record batches of ``batch_size`` rows (default
    :data:`BATCH_ROWS`): once over the id/dataset/kind columns to find which group owns an id
    repeated inside the file (:func:`owners`), once over all columns to write the kept rows.
    Peak memory is one batch plus the ids, not one file; rows and their order per output file
    are those of the whole-file implementation.
    """
    manifest_path = os.path.join(out_dir, "manifest.json")
    key = {"inputs": inputs, "kinds": list(kinds)}
    if os.path.exists(manifest_path):
        old = eio.read_json(manifest_path)
        if old.get("key") == key:
            return old["datasets"]
    os.makedirs(out_dir, exist_ok=True)
    writers: dict[tuple[str, str], pa.ipc.RecordBatchFileWriter] = {}
    sizes: dict[tuple[str, str], int] = {}
    names: dict[tuple[str, str], str] = {}
    seen: set[str] = set()
    for inp in inputs:
        for path in sample_files(inp):
            owner = owners(read_batches(path, _GROUP_COLUMNS, batch_size), kinds)
            for batch in read_batches(path, None, batch_size):
                for k, part in kept_parts(batch, owner, seen):
                    _check(part, k[1], path)
                    part = part.select(COLUMNS)
                    if k not in writers:
                        names[k] = _safe(k[0] if k[1] == "retrieval" else f"{k[0]}.{k[1]}")
                        writers[k] = pa.ipc.new_file(os.path.join(out_dir, f"{names[k]}.arrow.tmp"),
                                                     part.schema)
                    writers[k].write_batch(part)
                    sizes[k] = sizes.get(k, 0) + part.num_rows
            seen.update(owner)
    datasets = []
    for (dataset, kind), w in writers.items():
        w.close()
        name = names[(dataset, kind)]
        os.replace(os.path.join(out_dir, f"{name}.arrow.tmp"), os.path.join(out_dir, f"{name}.arrow"))
        datasets.append({"name": dataset, "kind": kind, "size": sizes[(dataset, kind)],
                         "file": f"{name}.arrow"})
    if not datasets:
        raise ConfigError(f"no {'/'.join(kinds)} samples in {inputs}")
    datasets.sort(key=lambda d: (d["kind"], d["name"]))
    eio.write_json({"key": key, "datasets": datasets}, manifest_path)
    return datasets


def text_key(text: str) -> int:
    """64-bit hash of a text: the batch-packing key (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass
class TextBatch:
    """One rank's share of a batch: raw texts plus each row's prompt (formatted instruction).

    The prompt goes in front of the query, and in front of the documents too for symmetric
    kinds (:func:`~embedforge.instructions.is_symmetric`).
    """

    dataset: str
    kind: str
    prompts: list[str]
    queries: list[str]
    positives: list[str]
    negatives: list[str] = field(default_factory=list)  # B*K, padding slots are ""
    neg_mask: list[bool] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    neg_labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    @property
    def symmetric(self) -> bool:
        return is_symmetric(self.kind)

    @property
    def num_negatives(self) -> int:
        return len(self.negatives) // max(len(self.queries), 1)


class _Classes(NamedTuple):
    texts: list[str]
    labels: list[str]
    by_label: dict[str, list[int]]
    label_ids: dict[str, int]
    label_of: dict[str, str]


class TrainData:
    """Memory-mapped datasets of one stage + the text batches the sampler asks for."""

    def __init__(self, data_dir: str, manifest: list[dict[str, Any]], num_negatives: int,
                 seed: int = 0):
        self.dir = _local_copy(data_dir)
        self.manifest = manifest
        self.k = num_negatives
        self.seed = seed
        self._tables: dict[int, pa.Table] = {}
        self._class_index: dict[int, _Classes] = {}
        self._k: dict[int, int] = {}

    @cached_property
    def infos(self) -> list[DatasetInfo]:
        return [DatasetInfo(d["name"], d["kind"], int(d["size"])) for d in self.manifest]

    def table(self, i: int) -> pa.Table:
        if i not in self._tables:
            source = pa.memory_map(os.path.join(self.dir, self.manifest[i]["file"]), "r")
            self._tables[i] = pa.ipc.open_file(source).read_all()  # zero-copy views of the map
        return self._tables[i]

    def k_of(self, i: int) -> int:
        """Negative slots per sample of dataset ``i``: the configured K, or fewer when no sample
        has that many (no forward passes over padding for datasets without negatives)."""
        if self.infos[i].kind != "retrieval":
            return self.k
        if i not in self._k:  # once per dataset, not per batch
            lengths = pc.list_value_length(self.table(i).column("negatives"))
            self._k[i] = min(self.k, int(pc.max(lengths).as_py() or 0))
        return self._k[i]

    def keys(self, i: int) -> list[frozenset[int]]:
        """64-bit hashes of the texts that must not repeat inside a batch, per row of dataset ``i``.

        Hashes, not the texts: every rank builds these for every dataset it samples from, and
        sets of full passages (with K negatives each) cost more memory than the data's own
        memory-mapped columns. Equal texts give equal hashes, so packing is unchanged; a 64-bit
        collision would at worst keep two distinct rows out of one batch.
        """
        t = self.table(i)
        kind = self.infos[i].kind
        q = t.column("query").to_pylist()
        if kind == "classification":
            return [frozenset((text_key(x),)) for x in q]
        p = t.column("positive").to_pylist()
        if kind == "pair":  # the swapped copy of a pair may share a batch; the same pair may not
            return [frozenset((text_key("\x1f".join(sorted((a, b)))),))
                    for a, b in zip(q, p, strict=True)]
        negs = t.column("negatives").to_pylist()
        k = self.k_of(i)
        return [frozenset(map(text_key, (a, b, *n[:k]))) for a, b, n in zip(q, p, negs, strict=True)]

    def _classes(self, i: int) -> _Classes:
        """Texts, labels and their indexes of a classification dataset, built once."""
        if i not in self._class_index:
            t = self.table(i)
            texts, labels = t.column("query").to_pylist(), [str(x) for x in t.column("label").to_pylist()]
            by: dict[str, list[int]] = {}
            for j, lab in enumerate(labels):
                by.setdefault(lab, []).append(j)
            ids = {lab: n for n, lab in enumerate(sorted(by))}
            label_of = dict(zip(texts, labels, strict=True))
            self._class_index[i] = _Classes(texts, labels, by, ids, label_of)
        return self._class_index[i]

    def batch(self, i: int, rows: list[int], step: int) -> TextBatch:
        info = self.infos[i]
        t = self.table(i).take(rows).to_pydict()
        prompts = [format_instruction(a) for a in t["instruction"]]
        if info.kind == "pair":
            return TextBatch(info.name, "pair", prompts, list(t["query"]), list(t["positive"]),
                             scores=[float(s) for s in t["score"]])
        if info.kind == "retrieval":
            negs, mask = [], []
            k = self.k_of(i)
            for n in t["negatives"]:
                n = list(n[:k])
                negs.extend(n + [""] * (k - len(n)))
                mask.extend([True] * len(n) + [False] * (k - len(n)))
            return TextBatch(info.name, "retrieval", prompts, list(t["query"]), list(t["positive"]),
                             negs, mask)
        texts, labels, by, ids, label_of = self._classes(i)
        queries, positives, negs, mask, labs, nlabs = [], [], [], [], [], []
        for row in rows:
            rng = random.Random(f"{self.seed}:{step}:{row}")
            drawn = draw_positive_and_negatives(texts, labels, row, self.k, rng, by)
            pos, n = drawn if drawn else (texts[row], [])  # a class of one: the anchor itself
            queries.append(texts[row])
            positives.append(pos)
            negs.extend(list(n) + [""] * (self.k - len(n)))
            mask.extend([True] * len(n) + [False] * (self.k - len(n)))
            labs.append(ids[labels[row]])
            nlabs.extend([ids[label_of[x]] for x in n] + [-1] * (self.k - len(n)))
        return TextBatch(info.name, "classification", prompts, queries, positives, negs, mask, labs,
                         nlabs)


def _local_copy(data_dir: str) -> str:
    """Memory maps need a local file: remote (fsspec) data dirs are copied once per node."""
    if "://" not in data_dir or data_dir.startswith("file://"):
        return data_dir.removeprefix("file://")
    target = os.path.join(tempfile.gettempdir(), "embedforge-train", _safe(data_dir))
    if not os.path.exists(os.path.join(target, "manifest.json")):
        fs, p = eio.fs_and_path(data_dir)
        tmp = target + f".tmp{os.getpid()}"
        fs.get(p, tmp, recursive=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def stage_plan(cfg: TrainConfig, stage: int, data: TrainData,
               decisions: list[BatchDecision] | list[dict[str, Any]]) -> BatchPlan:
    """The batch plan of training stage ``stage`` (1 or 2) over ``data``, as every rank builds it.

    One constructor for the workers and for anyone who must reproduce what a run trained on
    (the golden-value tests hash its batches): two copies of these arguments could drift
    apart, and a plan that differs from the workers' would pass for theirs.
    """
    st = cfg.stage1 if stage == 1 else cfg.stage2
    return BatchPlan(data.infos, cfg.batch_size.as_dict(), alpha=cfg.alpha,
                     retrieval_share=st.retrieval_share if stage == 2 else None, seed=cfg.seed,
                     keys_of=data.keys,
                     decisions=[x if isinstance(x, BatchDecision) else BatchDecision(**x)
                                for x in decisions])
