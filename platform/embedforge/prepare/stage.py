"""The prepare stage on Ray Data: plan units on the driver, transform them on the cluster."""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .. import io as eio
from ..cluster import connect
from ..safety import check_paths, claim_output
from .config import PrepareConfig
from .units import REJECTED_DIR, SAMPLES_DIR, UNITS_DIR, plan_source, process_unit, unit_dataset


def _process_row(row: dict[str, Any], out_dir: str, flush_rows: int) -> dict[str, Any]:
    stats = process_unit(json.loads(row["task"]), out_dir, flush_rows)
    return {"stats": json.dumps(stats)}


def _finished(out_dir: str) -> dict[str, dict[str, Any]]:
    done = {}
    for path in eio.list_files(eio.join(out_dir, UNITS_DIR), ".json"):
        try:
            stats = eio.read_json(path)
        except (OSError, ValueError):
            continue
        if stats.get("fatal"):  # an unreadable unit (older runs wrote a marker): try again
            continue
        done[stats["unit_id"]] = stats
    return done


def _remove_stale(out_dir: str, keep: set[str], unusable: set[str] = frozenset()) -> int:
    """Drop outputs of units that are no longer in the plan (inputs or config changed).

    Units of sources that are ``unusable`` this time (a missing mount, an unreachable store)
    keep their earlier output: the source is not known to have changed, only to be out of
    reach. Only called on a folder the prepare stage owns (``claim_output``).
    """
    import fsspec

    removed = 0
    for sub, suffix in ((SAMPLES_DIR, ".parquet"), (REJECTED_DIR, ".jsonl"), (UNITS_DIR, ".json")):
        for path in eio.list_files(eio.join(out_dir, sub), suffix):
            name = path.rsplit("/", 1)[-1]
            uid = name.removeprefix("part-").removesuffix(suffix)
            if sub == SAMPLES_DIR:
                uid = uid.rsplit("-", 1)[0]
            if uid not in keep and unit_dataset(uid) not in unusable:
                fs, p = fsspec.core.url_to_fs(path)
                fs.rm(p)
                removed += 1
    return removed


def _part_unit(path: str) -> str:
    """The unit id of a samples part file (``part-<unit>-<NNNN>.parquet``)."""
    return path.rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet").rsplit("-", 1)[0]


def ordered_parts(out_dir: str, unit_order: list[str]) -> list[str]:
    """The samples part files in the order whose first copy of an id is kept: units in plan
    order (units not in the plan last), then path."""
    rank = {u: i for i, u in enumerate(unit_order)}
    files = eio.list_files(eio.join(out_dir, SAMPLES_DIR), ".parquet")
    return sorted(files, key=lambda path: (rank.get(_part_unit(path), len(rank)), path))


def bucket_of(ids: list[str], buckets: int) -> list[int]:
    """A stable hash partition of sample ids (``hash()`` differs between processes)."""
    return [zlib.crc32(i.encode("utf-8")) % buckets for i in ids]


_ID_ROWS = pa.schema([("id", pa.string()), ("dataset", pa.string()), ("kind", pa.string()),
                      ("file", pa.int64()), ("row", pa.int64()), ("bucket", pa.int64())])


def id_rows(files: pa.Table, paths: list[str], buckets: int) -> pa.Table:
    """The ``id``/``dataset``/``kind`` of every row of the part files numbered ``files["file"]``
    (indexes into ``paths``), with its ``file`` and ``row`` (its position in the keep order)
    and its ``bucket``: one row per sample, a few dozen bytes each, no texts."""
    import pyarrow.parquet as pq

    out = []
    for f in files.column("file").to_pylist():
        fs, p = eio.fs_and_path(paths[f])
        t = pq.read_table(p, columns=["id", "dataset", "kind"], filesystem=fs)
        t = t.append_column("file", pa.array([f] * t.num_rows, pa.int64()))
        t = t.append_column("row", pa.array(range(t.num_rows), pa.int64()))
        t = t.append_column("bucket", pa.array(bucket_of(t.column("id").to_pylist(), buckets),
                                               pa.int64()))
        out.append(t)
    return pa.concat_tables(out) if out else _ID_ROWS.empty_table()


def later_copies(rows: pa.Table) -> pa.Table:
    """The rows of ``rows`` (``id``, ``file``, ``row``, ``dataset``, ``kind``; every copy of
    each id present) that are not the first copy of their id in (file, row) order: what the
    driver loop over files in order dropped. Pure and vectorized: one sort per partition."""
    cols = ["file", "row", "dataset", "kind"]
    if rows.num_rows == 0:
        return rows.select(cols)
    order = pc.sort_indices(rows, sort_keys=[("id", "ascending"), ("file", "ascending"),
                                             ("row", "ascending")])
    t = rows.take(order)
    ids = t.column("id").combine_chunks()
    repeat = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    mask = pa.concat_arrays([pa.array([False]), repeat.cast(pa.bool_())])
    return t.filter(mask).select(cols)


def drop_rows(drop: pa.Table, paths: list[str]) -> pa.Table:
    """Rewrite the part file of ``drop`` (rows ``file``, ``row``, ``dataset``, ``kind`` of one
    file) without those rows; returns the dropped counts per ``dataset``/``kind``."""
    import pyarrow.parquet as pq

    path = paths[drop.column("file")[0].as_py()]
    fs, p = eio.fs_and_path(path)
    table = pq.read_table(p, filesystem=fs)
    gone = set(drop.column("row").to_pylist())
    eio.write_parquet_atomic(table.filter(pa.array([i not in gone for i in range(table.num_rows)])),
                             path)
    counts = drop.group_by(["dataset", "kind"]).aggregate([("row", "count")])
    return counts.rename_columns(["dataset", "kind", "dropped"])


def drop_cross_unit_duplicates(out_dir: str, unit_order: list[str],
                               num_cpus: float = 0.5) -> dict[str, dict[str, int]]:
    """Keep the first occurrence of each sample id across units (units dedup internally).

    Runs on Ray Data, hash-partitioned, so the driver holds the list of part files and the
    counts, never the ids: read ``id``/``dataset``/``kind`` per file (:func:`id_rows`) →
    group by a hash bucket of the id (every copy of an id meets in one group) and keep all but
    the first copy in (unit order, path, row) order (:func:`later_copies`) → group those by
    file and rewrite just the files that hold one (:func:`drop_rows`). The same copy wins as
    in the former driver loop. Idempotent, so a resumed run can run it again. Needs a
    connected Ray. Returns ``{dataset: {kind: dropped}}``.
    """
    import ray

    paths = ordered_parts(out_dir, unit_order)
    if not paths:
        return {}
    buckets = len(paths)  # a bucket holds about as many ids as one part file holds rows
    parallel = max(1, min(len(paths), 64))
    files = ray.data.from_items([{"file": i} for i in range(len(paths))],
                                override_num_blocks=parallel)
    ids = files.map_batches(id_rows, fn_kwargs={"paths": paths, "buckets": buckets},
                            batch_format="pyarrow", batch_size=1, num_cpus=num_cpus)
    dups = ids.groupby("bucket", num_partitions=parallel).map_groups(
        later_copies, batch_format="pyarrow", num_cpus=num_cpus)
    counts = dups.groupby("file", num_partitions=parallel).map_groups(
        drop_rows, fn_kwargs={"paths": paths}, batch_format="pyarrow", num_cpus=num_cpus)
    dropped: dict[str, Counter[str]] = defaultdict(Counter)
    for batch in counts.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():  # one row per (rewritten file, dataset, kind)
            dropped[row["dataset"]][row["kind"]] += row["dropped"]
    return {d: dict(c) for d, c in dropped.items()}


def aggregate(unit_stats: list[dict[str, Any]], plan_errors: dict[str, str],
              datasets: list[str],
              cross_duplicates: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """Totals per dataset/kind, rejections by reason, and the sources that were unusable."""
    per_dataset: dict[str, dict[str, Any]] = {
        d: {"rows_in": 0, "samples": 0, "by_kind": Counter(), "rejected": Counter(), "units": 0,
            "duplicates_dropped": 0}
        for d in datasets
    }
    by_kind: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    nodes: set[str] = set()
    for s in unit_stats:
        d = per_dataset[s["dataset"]]
        d["rows_in"] += s["rows_in"]
        d["samples"] += s["samples"]
        d["by_kind"].update(s["samples_by_kind"])
        d["rejected"].update(s["rejected"])
        d["units"] += 1
        d["duplicates_dropped"] += s.get("duplicates_dropped", 0)
        by_kind.update(s["samples_by_kind"])
        rejected.update(s["rejected"])
        if s.get("node_id"):
            nodes.add(s["node_id"])
    for name, kinds in (cross_duplicates or {}).items():
        d = per_dataset[name]
        for kind, n in kinds.items():
            d["samples"] -= n
            d["by_kind"][kind] -= n
            by_kind[kind] -= n
            d["duplicates_dropped"] += n
    unusable = dict(plan_errors)
    for name, d in per_dataset.items():
        if name in unusable:
            continue
        fatal = [s["fatal"] for s in unit_stats if s["dataset"] == name and s.get("fatal")]
        if d["samples"] == 0:
            why = fatal[0] if fatal else (
                f"all {d['rows_in']} rows rejected ({dict(d['rejected'])})" if d["rows_in"]
                else "no rows read")
            unusable[name] = why
    for name, why in plan_errors.items():
        per_dataset[name]["rejected"]["unusable_source"] += 1
        rejected["unusable_source"] += 1
        per_dataset[name]["error"] = why
    return {
        "total_samples": sum(d["samples"] for d in per_dataset.values()),
        "samples_by_kind": dict(by_kind),
        "rejected_by_reason": dict(rejected),
        "duplicates_dropped": sum(d["duplicates_dropped"] for d in per_dataset.values()),
        "datasets": {
            n: {**d, "by_kind": dict(d["by_kind"]), "rejected": dict(d["rejected"])}
            for n, d in per_dataset.items()
        },
        "unusable_sources": unusable,
        "nodes": sorted(nodes),
    }


def run_prepare(cfg: PrepareConfig, log=print) -> dict[str, Any]:
    """Run the stage; returns the stats also written to ``OUTPUT/stats.json``."""
    import ray

    t0 = time.time()
    if not cfg.sources:
        from ..config import ConfigError

        raise ConfigError("no sources: add --source NAME=FORMAT:PATH (or `sources:` in --config)")
    check_paths(cfg)
    claim_output(cfg.output, "prepare", cfg.force)
    chunk = int(cfg.chunk_mb * 1024 * 1024)
    tasks: list[dict[str, Any]] = []
    plan_errors: dict[str, str] = {}
    for spec in cfg.sources:
        try:
            units = plan_source(spec, cfg.instructions, chunk)
        except (eio.SourceError, ValueError) as exc:
            plan_errors[spec.name] = str(exc)
            log(f"[prepare] source {spec.name!r} unusable: {exc}")
            continue
        log(f"[prepare] source {spec.name!r} ({spec.format}): {len(units)} unit(s)")
        tasks.extend(units)

    finished = _finished(cfg.output)
    done = finished if cfg.resume else {}
    keep = {t["unit_id"] for t in tasks}
    stale = _remove_stale(cfg.output, keep, set(plan_errors))
    if stale:
        log(f"[prepare] removed {stale} output file(s) of units no longer in the plan")
    # earlier output of a source that cannot be read now stays, and counts
    kept = [u for uid, u in finished.items() if unit_dataset(uid) in plan_errors]
    for name in sorted({u["dataset"] for u in kept}):
        n = sum(u["samples"] for u in kept if u["dataset"] == name)
        log(f"[prepare] source {name!r} unusable now: kept its {n} sample(s) of an earlier run")
    todo = [t for t in tasks if t["unit_id"] not in done]
    reused = [done[t["unit_id"]] for t in tasks if t["unit_id"] in done]
    log(f"[prepare] {len(tasks)} unit(s): {len(reused)} already done, {len(todo)} to run")

    new_stats: list[dict[str, Any]] = []
    with connect(cfg.ray_address, cfg.num_cpus) as info:
        if todo:
            ds = ray.data.from_items(
                [{"task": json.dumps(t)} for t in todo], override_num_blocks=len(todo)
            )
            ds = ds.map(_process_row, fn_kwargs={"out_dir": cfg.output, "flush_rows": cfg.flush_rows},
                        num_cpus=cfg.num_cpus_per_task)
            for i, row in enumerate(ds.iter_rows(), start=1):
                unit = json.loads(row["stats"])
                new_stats.append(unit)
                log(f"[prepare] {i}/{len(todo)} units done ({unit['dataset']}: "
                    f"{unit['samples']} samples, {sum(unit['rejected'].values())} rejected)")
        order = [t["unit_id"] for t in tasks] + [u["unit_id"] for u in kept]
        cross = drop_cross_unit_duplicates(cfg.output, order, cfg.num_cpus_per_task)
        cluster_address = info["address"]

    all_stats = reused + new_stats + kept
    stats = aggregate(all_stats, plan_errors, [s.name for s in cfg.sources], cross)
    stats["kept_from_earlier_run"] = {
        name: sum(u["samples"] for u in kept if u["dataset"] == name)
        for name in sorted({u["dataset"] for u in kept})}
    stats.update({
        "output": cfg.output,
        "units": len(tasks),
        "units_reused": len(reused),
        "seconds": round(time.time() - t0, 2),
        "ray_address": cluster_address,
    })
    eio.write_json(stats, eio.join(cfg.output, "stats.json"))
    eio.write_json({"stage": "prepare", "config": cfg.model_dump(mode="json"), "stats": stats},
                   eio.join(cfg.output, "summary.json"))
    return stats


def format_report(stats: dict[str, Any]) -> str:
    """A table a human can read at the end of the job."""
    lines = [f"{'dataset':<20} {'rows in':>9} {'samples':>9} {'rejected':>9}  kinds"]
    for name, d in stats["datasets"].items():
        rej = sum(d["rejected"].values())
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(d["by_kind"].items()))
        lines.append(f"{name:<20} {d['rows_in']:>9} {d['samples']:>9} {rej:>9}  {kinds}")
    lines.append(f"total samples: {stats['total_samples']}  rejected by reason: "
                 f"{stats['rejected_by_reason'] or 'none'}")
    kept = stats.get("kept_from_earlier_run") or {}
    for name, why in stats["unusable_sources"].items():
        note = f" (kept its {kept[name]} samples of an earlier run)" if name in kept else ""
        lines.append(f"UNUSABLE source {name!r}: {why}{note}")
    return "\n".join(lines)


def samples_by_dataset(out_dir: str) -> dict[str, int]:
    """Row counts per dataset of a prepared folder (used by tests and the report)."""
    table = eio.read_samples(out_dir)
    counts: dict[str, int] = defaultdict(int)
    for name in table.column("dataset").to_pylist():
        counts[name] += 1
    return dict(counts)
