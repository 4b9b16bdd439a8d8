"""The single-process synthesize dedup the job used before it ran on hash partitions.

Kept here, not in the package, as the reference the partitioned path (``embedforge.synth
.dedup``) is tested against: it holds the whole output's text columns in one process, which
is exactly what the job must no longer do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from embedforge import io as eio
from embedforge.schema import Sample, rows_to_table
from embedforge.synth import rules
from embedforge.synth.config import SynthConfig
from embedforge.synth.dedup import COPY_COLUMNS, GENERATED_EXCLUDED, copy_digest
from embedforge.synth.stage import embed_filter, load_filter_model


@dataclass
class Dedup:
    """What the finaliser drops: every row of ``drop`` ids (they repeat an earlier row's text),
    and every copy of a repeated id but the one whose ``copy_digest`` is ``keep_copy[id]``."""

    drop: set[str] = field(default_factory=set)
    keep_copy: dict[str, str] = field(default_factory=dict)
    repeated: dict[str, int] = field(default_factory=dict)  # repeated id -> copies seen
    rows_dropped: int = 0


def duplicate_ids(raw_dir: str) -> Dedup:
    """Generated rows repeating (after normalisation) an earlier row of the whole output, and
    rows repeating an earlier row's exact id: the single-process reference.

    The job no longer calls this (it holds the whole output's text columns in one process);
    it runs :mod:`.dedup` on hash partitions instead, and the tests check both agree.

    Originals are seen first so a generated row never displaces one; among generated rows the
    smallest id wins. Of an exact id seen more than once only the later copies go (dropping by
    id alone would drop the first copy too).
    """
    import pyarrow.parquet as pq

    files = eio.list_files(raw_dir, ".parquet")
    cols = ["id", "kind", "query", "positive", "label", *COPY_COLUMNS]
    tables = []
    for f in files:
        fs, p = eio.fs_and_path(f)
        tables.append(pq.read_table(p, columns=cols, filesystem=fs))
    out = Dedup()
    if not tables:
        return out
    rows = pa.concat_tables(tables).to_pylist()
    counts = Counter(r["id"] for r in rows)
    # originals first; among generated rows the smallest id wins, and among copies of one id
    # the smallest digest, so which row survives never depends on the order Ray Data wrote
    # the blocks in
    rows.sort(key=lambda r: (r["source"] not in GENERATED_EXCLUDED, r["id"],
                             copy_digest(r) if counts[r["id"]] > 1 else ""))
    seen: set[tuple[Any, ...]] = set()
    first_copy: dict[str, str] = {}
    for r in rows:
        if r["id"] in first_copy:
            out.rows_dropped += 1  # a later copy of an exact id
            out.repeated[r["id"]] = counts[r["id"]]
            continue
        first_copy[r["id"]] = copy_digest(r) if counts[r["id"]] > 1 else ""
        key = (r["kind"], rules.normalize(r["query"]), rules.normalize(r["positive"]), r["label"])
        if key in seen and r["source"] not in GENERATED_EXCLUDED:
            out.drop.add(r["id"])
            out.rows_dropped += 1
        seen.add(key)
    out.keep_copy = {i: first_copy[i] for i in out.repeated if i not in out.drop}
    return out



class Finalizer:
    """Applies a :func:`duplicate_ids` result, then the optional embedding filter: the
    single-process reference the partitioned job path is tested against.

    One instance must see every row: keeping exactly one of two byte-identical copies of an id
    needs the ``kept`` set to.
    """

    def __init__(self, dedup: Dedup, cfg_json: str):
        self.drop = dedup.drop
        self.keep_copy = dedup.keep_copy
        self.kept: set[str] = set()
        self.cfg = SynthConfig.model_validate_json(cfg_json)
        self.model = load_filter_model(self.cfg)

    def _keep(self, row: dict[str, Any]) -> bool:
        if row["id"] in self.drop:
            return False
        want = self.keep_copy.get(row["id"])
        if want is None:
            return True
        if row["id"] in self.kept or copy_digest(row) != want:
            return False
        self.kept.add(row["id"])
        return True

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [r for r in batch.to_pylist() if self._keep(r)]
        if self.model is not None:
            rows = embed_filter(self.model, self.cfg, rows)
        return rows_to_table(rows)


def _row(query: str, positive: str, source: str = "paraphrase", parent: str | None = "p0",
         meta: dict | None = None) -> dict:
    return Sample(dataset="d", kind="retrieval", query=query, positive=positive, source=source,
                  parent_id=parent if source != "original" else None, meta=meta or {}).to_row()


def _finalise(tmp_path, blocks: list[list[dict]]) -> tuple[list[dict], object]:
    raw = tmp_path / "raw"
    for i, rows in enumerate(blocks):
        eio.write_parquet_atomic(rows_to_table(rows), str(raw / f"part-{i}.parquet"))
    dedup = duplicate_ids(str(raw))
    fin = Finalizer(dedup, SynthConfig(input=str(tmp_path), output=str(tmp_path / "o"))
                    .model_dump_json())
    out: list[dict] = []
    for rows in blocks:  # one finaliser sees every block, as the single-actor pool does
        out += fin(rows_to_table(rows)).to_pylist()
    return out, dedup


def _random_raw(seed: int, n: int = 300) -> list[dict]:
    """Raw rows full of collisions: texts that normalise alike, originals repeated by
    generated rows, ids repeated with different copy columns, byte-identical copies."""
    import random

    rng = random.Random(seed)
    texts = [("What do bees do?", "Bees make honey."), ("what do bees do", "bees make honey"),
             ("WHAT DO BEES DO", "Bees  make honey"), ("where do bees live", "in hives"),
             ("Where do bees live?", "In hives."), ("how big is a hive", "50,000 bees")]
    rows: list[dict] = []
    while len(rows) < n:
        q, p = rng.choice(texts)
        if rng.random() < 0.5:  # fresh text: most rows are unique
            q, p = f"{q} {rng.randrange(60)}", p
        source = rng.choice(["original", "paraphrase", "augment", "llm_negative"])
        row = _row(q, p, source=source, parent=f"p{rng.randrange(3)}",
                   meta={"technique": source, "n": rng.randrange(2)})
        rows.append(row)
        if rng.random() < 0.15:  # a byte-identical copy
            rows.append(dict(row))
    rng.shuffle(rows)
    return rows
