"""Cross-output dedup as two pure, partition-local steps (no Ray, no I/O).

The synthesize stage must drop (a) later copies of an exact id and (b) generated rows whose
normalised text repeats an earlier row, over the *whole* output, which at corpus scale does
not fit one process. Both decisions only ever compare rows that share a key, so each runs on
hash partitions (a keyed Ray Data ``repartition``, one call per partition) and needs no
global state:

1. :func:`resolve_ids` (rows grouped by ``id``): one copy of every id survives: an original
   before a generated row, then the smallest :func:`copy_digest`; it gets ``_copies`` (how
   many rows shared the id) and ``_key`` (:func:`text_key`).
2. :func:`resolve_texts` (the survivors grouped by ``_key``): in the order originals first,
   then by id, the first row of a key and every original stay; every later generated row goes
   ("first original wins"; a generated row never displaces one).

This is the order the former single-process ``duplicate_ids`` walked the whole output in
(originals first, then id, then copy digest), so the same rows survive. Step 2 puts the
group's counts on the group's first row (which always survives step 2) in ``_dropped_rows``,
``_text_repeats`` and ``_repeated``, so the summary adds them up while the output streams to
disk instead of reading it back. Every table in and out is a ``pyarrow.Table``; a table may
hold any number of complete groups.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

import pyarrow as pa

from . import rules

#: sources that are input rows (or replace one): text dedup never drops them
GENERATED_EXCLUDED = ("original", "llm_negative")
#: the columns an id does not cover (ids hash the sample's content, not these): copies of one
#: id can differ only here, so this digest tells them apart
COPY_COLUMNS = ("source", "instruction", "parent_id", "meta")
#: internal columns added by the two steps; the writer strips them (see ``_FinalSink``)
KEY, COPIES = "_key", "_copies"
DROPPED_ROWS, TEXT_REPEATS, REPEATED, KEEP = "_dropped_rows", "_text_repeats", "_repeated", "_keep"
STAT_COLUMNS = (DROPPED_ROWS, TEXT_REPEATS, REPEATED, KEEP)


def copy_digest(row: dict[str, Any]) -> str:
    """Digest of the columns copies of one id may differ in (picks a copy by content)."""
    return hashlib.sha1(json.dumps([row.get(c) for c in COPY_COLUMNS], ensure_ascii=False)
                        .encode("utf-8")).hexdigest()


def text_key(row: dict[str, Any]) -> str:
    """Digest of what makes two rows the same training example after normalisation.

    A digest, not the texts, so the shuffle moves 40 bytes per row for the key."""
    key = [row["kind"], rules.normalize(row["query"]), rules.normalize(row["positive"]),
           row["label"]]
    return hashlib.sha1(json.dumps(key, ensure_ascii=False).encode("utf-8")).hexdigest()


def is_generated(source: str) -> bool:
    """Rows the text dedup may drop (not an input row, nor the llm_negative that replaces one)."""
    return source not in GENERATED_EXCLUDED


def resolve_ids(table: pa.Table) -> pa.Table:
    """One row per id (input: complete groups of rows by id), plus ``_copies`` and ``_key``.

    Of several copies the original-before-generated, then smallest-copy-digest one stays, so
    the survivor never depends on the order Ray Data wrote or shuffled the blocks in.
    """
    meta = table.select(["id", *COPY_COLUMNS]).to_pylist()
    by_id: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(meta):
        by_id[r["id"]].append(i)
    take: list[int] = []
    copies: list[int] = []
    for idx in by_id.values():
        if len(idx) == 1:
            take.append(idx[0])
        else:
            take.append(min(idx, key=lambda i: (is_generated(meta[i]["source"]),
                                                copy_digest(meta[i]))))
        copies.append(len(idx))
    out = table.take(pa.array(take, pa.int64()))
    keys = [text_key(r) for r in out.select(["kind", "query", "positive", "label"]).to_pylist()]
    return out.append_column(COPIES, pa.array(copies, pa.int64())).append_column(
        KEY, pa.array(keys, pa.string()))


def resolve_texts(table: pa.Table) -> pa.Table:
    """The rows that survive text dedup (input: complete groups by ``_key`` of
    :func:`resolve_ids` output), without ``_key``/``_copies`` and with the stat columns.

    ``_dropped_rows`` counts every raw row the group lost (later copies of ids, and all copies
    of a dropped id), ``_text_repeats`` the ids dropped for repeating a text, ``_repeated``
    ``"id copies"`` for each id that had several copies; all on the group's first row.
    ``_keep`` starts true (a later filter may clear it; the writer drops those rows).
    """
    meta = table.select(["id", "source", KEY, COPIES]).to_pylist()
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(meta):
        by_key[r[KEY]].append(i)
    take: list[int] = []
    dropped: list[int] = []
    repeats: list[int] = []
    repeated: list[list[str]] = []
    for idx in by_key.values():
        # ids are unique here (step 1), so (generated, id) is a total order
        idx.sort(key=lambda i: (is_generated(meta[i]["source"]), meta[i]["id"]))
        first, n_drop, n_rep = idx[0], meta[idx[0]][COPIES] - 1, 0
        group_take = [first]
        for i in idx[1:]:
            if is_generated(meta[i]["source"]):
                n_drop += meta[i][COPIES]  # this row and its later copies
                n_rep += 1
            else:
                group_take.append(i)
                n_drop += meta[i][COPIES] - 1
        take += group_take
        dropped += [n_drop] + [0] * (len(group_take) - 1)
        repeats += [n_rep] + [0] * (len(group_take) - 1)
        rep = [f"{meta[i]['id']} {meta[i][COPIES]}" for i in sorted(idx, key=lambda i: meta[i]["id"])
               if meta[i][COPIES] > 1]
        repeated += [rep] + [[] for _ in group_take[1:]]
    out = table.take(pa.array(take, pa.int64())).drop_columns([KEY, COPIES])
    return (out.append_column(DROPPED_ROWS, pa.array(dropped, pa.int64()))
            .append_column(TEXT_REPEATS, pa.array(repeats, pa.int64()))
            .append_column(REPEATED, pa.array(repeated, pa.list_(pa.string())))
            .append_column(KEEP, pa.array([True] * len(take), pa.bool_())))


def dedup_table(table: pa.Table) -> pa.Table:
    """Both steps on one in-memory table (every group complete): for tests and small inputs."""
    return resolve_texts(resolve_ids(table))


def block_stats(table: pa.Table) -> dict[str, Any]:
    """Counts of one written block (stat columns over all rows; sources of the kept rows):
    what each write task returns so the driver adds counts, never rows. The repeated-id
    examples are the block's smallest ids, so the merged list does not depend on blocks."""
    kept = table.filter(table[KEEP]) if KEEP in table.column_names else table
    by_source: dict[str, int] = {}
    for src in kept.column("source").to_pylist():
        by_source[src] = by_source.get(src, 0) + 1
    stats: dict[str, Any] = {"rows_by_source": by_source, "rows_dropped": 0, "text_repeats": 0,
                             "repeated_ids": 0, "repeated_examples": []}
    if DROPPED_ROWS in table.column_names:
        stats["rows_dropped"] = sum(table[DROPPED_ROWS].to_pylist())
        stats["text_repeats"] = sum(table[TEXT_REPEATS].to_pylist())
        reps = [x for rep in table[REPEATED].to_pylist() for x in rep]
        stats["repeated_ids"] = len(reps)
        stats["repeated_examples"] = sorted(reps)[:MAX_EXAMPLES]
    return stats


#: repeated-id examples kept for the log (the count is exact; the list is capped)
MAX_EXAMPLES = 20


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum :func:`block_stats` dicts (examples: the smallest ``MAX_EXAMPLES`` ids)."""
    total: dict[str, Any] = {"rows_by_source": {}, "rows_dropped": 0, "text_repeats": 0,
                             "repeated_ids": 0, "repeated_examples": []}
    for p in parts:
        for src, n in p["rows_by_source"].items():
            total["rows_by_source"][src] = total["rows_by_source"].get(src, 0) + n
        for k in ("rows_dropped", "text_repeats", "repeated_ids"):
            total[k] += p[k]
        total["repeated_examples"] = sorted(total["repeated_examples"] + p["repeated_examples"])[
            :MAX_EXAMPLES]
    return total
