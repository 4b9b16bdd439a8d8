"""Readers and writers for the files stages exchange (local paths or any fsspec URI).

Reading yields :class:`Record` objects carrying file + line so a bad row can be reported
precisely and skipped, never crash the job. Large line-oriented files are split into byte
ranges (:func:`plan_file_units`) so one file fans out over many Ray tasks.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import posixpath
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .redact import redact_obj

HF_PREFIX = "hf:"
LINE_EXTS = (".jsonl", ".ndjson", ".tsv", ".txt")
TABLE_EXTS = (".csv", ".json", ".parquet")
KNOWN_EXTS = LINE_EXTS + TABLE_EXTS
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


class SourceError(RuntimeError):
    """A whole input cannot be used (missing path, unreadable file, unknown extension)."""


@dataclass
class Record:
    """One raw input row, or the reason it could not be parsed."""

    file: str
    line: int
    data: dict[str, Any] | None = None
    error: str | None = None
    reason: str = ""
    raw: str = ""


@dataclass
class FileUnit:
    """A piece of work: one file, or a byte range ``[start, end)`` of a line-oriented file."""

    path: str
    start: int = 0
    end: int = -1
    first_line: int = 1
    header: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def fs_and_path(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``path`` (local path or URI) and the path as that filesystem
    names it (protocol stripped): what code needs to open, list or memory-map a file itself,
    e.g. the embedding cache and the training data, instead of going through a reader here."""
    fs, _, paths = fsspec.get_fs_token_paths(path)
    return fs, paths[0] if paths else path


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if fs.protocol not in ("file", ("file", "local")) else path


def expand_paths(path: str, exts: tuple[str, ...] = KNOWN_EXTS) -> list[str]:
    """Files named by ``path``: a file, a directory (searched recursively), or a glob."""
    if path.startswith(HF_PREFIX):
        return [path]
    fs, p = fs_and_path(path)
    allowed = tuple(e + c for e in exts for c in ("", *COMPRESSIONS))
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(p))
    elif fs.isdir(p):
        found = sorted(f for f in fs.find(p) if f.lower().endswith(allowed))
    elif fs.exists(p):
        found = [p]
    else:
        raise SourceError(f"path does not exist: {path}")
    files = [f for f in found if not fs.isdir(f)]
    if not files:
        raise SourceError(f"no input files found at {path} (looked for {', '.join(exts)})")
    return [_unstrip(fs, f) for f in files]


def file_version(path: str) -> dict[str, Any]:
    """What identifies one version of a file's content without reading it: size and mtime for
    local files; size plus the store's ETag / generation / mtime for object stores (whichever
    fsspec's ``info`` reports). ``hf:`` datasets have none here ({}).

    Resume keys include it, so an edited source is read again instead of silently reused.
    """
    if path.startswith(HF_PREFIX):
        return {}
    fs, p = fs_and_path(path)
    if fs.protocol in ("file", ("file", "local")):
        st = os.stat(p)  # nanoseconds: an edit within the same second still counts
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    info = fs.info(p)
    version: dict[str, Any] = {"size": info.get("size")}
    for key in ("ETag", "etag", "md5Hash", "generation", "version_id", "mtime", "LastModified",
                "last_modified", "updated"):
        if info.get(key) is not None:
            version[key] = str(info[key])
    return version


def base_ext(path: str) -> str:
    """Extension without compression suffix, lower-case (``a.jsonl.gz`` -> ``.jsonl``)."""
    name = path.lower()
    for c in COMPRESSIONS:
        if name.endswith(c):
            name = name[: -len(c)]
    return posixpath.splitext(name)[1]


def is_compressed(path: str) -> bool:
    return path.lower().endswith(COMPRESSIONS)


def plan_file_units(
    path: str, chunk_bytes: int, header: list[str] | None = None, force: bool = False
) -> list[FileUnit]:
    """Split an uncompressed line-oriented file into newline-aligned byte ranges.

    Line numbers of each range are counted here (one linear pass) so rejected rows still
    point at the right line of the original file.
    """
    line_file = force or base_ext(path) in LINE_EXTS
    if not line_file or is_compressed(path) or path.startswith(HF_PREFIX):
        return [FileUnit(path=path, header=header)]
    fs, p = fs_and_path(path)
    size = fs.size(p)
    if size <= chunk_bytes:
        return [FileUnit(path=path, header=header)]
    units: list[FileUnit] = []
    with fs.open(p, "rb") as fh:
        start, line = 0, 1
        while start < size:
            target = start + chunk_bytes
            if target >= size:
                units.append(FileUnit(path, start, size, line, header))
                break
            # count lines in [start, target) then extend to the next newline
            fh.seek(start)
            block = fh.read(target - start)
            newlines = block.count(b"\n")
            rest = fh.readline()
            end = target + len(rest)
            newlines += rest.count(b"\n")
            units.append(FileUnit(path, start, end, line, header))
            start, line = end, line + newlines
    return units


def _iter_lines(unit: FileUnit) -> Iterator[tuple[int, bytes]]:
    fs, p = fs_and_path(unit.path)
    if unit.start == 0 and unit.end < 0:
        with fs.open(p, "rb", compression="infer") as fh:
            for i, raw in enumerate(fh, start=unit.first_line):
                yield i, raw
        return
    with fs.open(p, "rb") as fh:
        fh.seek(unit.start)
        pos, line = unit.start, unit.first_line
        while pos < unit.end:
            raw = fh.readline()
            if not raw:
                break
            pos += len(raw)
            yield line, raw
            line += 1


def _decode(raw: bytes, first: bool) -> str:
    text = raw.decode("utf-8")
    if first:
        text = text.lstrip("\ufeff")
    return text.rstrip("\r\n")


def first_line(path: str) -> str:
    """The first line of a text file (BOM and newline removed; '' for an empty file)."""
    for _, raw in _iter_lines(FileUnit(path)):
        return _decode(raw, True)
    return ""


def sniff_delimited(path: str, delimiter: str | None = None) -> tuple[str, list[str]]:
    """(delimiter, fields of line 1) of a ``.csv``/``.tsv``/``.txt`` file.

    Tab for ``.tsv``/``.txt``, and for a ``.csv`` whose first line holds a tab: many ".csv"
    files in the wild are tab-separated (STS-B). ``delimiter`` overrides the guess. Comma lines
    are split with the csv module (quoted names lose their quotes, as the rows will).
    """
    line = first_line(path)
    if not delimiter:
        delimiter = "\t" if base_ext(path) != ".csv" or "\t" in line else ","
    fields = line.split(delimiter) if delimiter == "\t" else next(
        csv.reader([line], delimiter=delimiter), [])
    return delimiter, [f.strip() for f in fields]


def read_header(path: str, delimiter: str = "\t") -> list[str]:
    """First line of a delimited text file, split into field names."""
    for _, raw in _iter_lines(FileUnit(path)):
        return [h.strip() for h in _decode(raw, True).split(delimiter)]
    return []


def iter_records(
    unit: FileUnit,
    *,
    delimiter: str | None = None,
    columns: list[str] | None = None,
    has_header: bool = False,
    limit: int | None = None,
    line_based: bool = False,
) -> Iterator[Record]:
    """Parse one unit into records. Never raises for bad rows; raises SourceError for a bad file.

    ``line_based`` reads a delimited file one physical line per row with no quoting (TSV
    conventions, also for tab-separated files named ``.csv``).
    """
    ext = base_ext(unit.path)
    if line_based and ext in (".csv", ".tsv", ".txt"):
        ext = ".tsv"
    if unit.path.startswith(HF_PREFIX):
        yield from _iter_hf(unit, limit)
        return
    try:
        if ext in (".jsonl", ".ndjson"):
            yield from _iter_jsonl(unit, limit)
        elif ext in (".tsv", ".txt"):
            yield from _iter_delimited_lines(
                unit, delimiter or "\t", columns, has_header, limit
            )
        elif ext == ".csv":
            yield from _iter_csv(unit, delimiter or ",", columns, has_header, limit)
        elif ext == ".json":
            yield from _iter_json(unit, limit)
        elif ext == ".parquet":
            yield from _iter_parquet(unit, limit)
        else:
            raise SourceError(f"{unit.path}: unsupported file type {ext!r}")
    except (OSError, EOFError) as exc:
        raise SourceError(f"{unit.path}: unreadable file: {exc}") from exc


def _iter_jsonl(unit: FileUnit, limit: int | None) -> Iterator[Record]:
    n = 0
    for line, raw in _iter_lines(unit):
        if limit is not None and n >= limit:
            return
        try:
            text = _decode(raw, line == 1)
        except UnicodeDecodeError as exc:
            yield Record(unit.path, line, error=f"not valid UTF-8: {exc}", reason="bad_encoding",
                         raw=repr(raw[:200]))
            n += 1
            continue
        if not text.strip():
            continue
        n += 1
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Record(unit.path, line, error=f"invalid JSON: {exc.msg} at column {exc.colno}",
                         reason="invalid_json", raw=text[:500])
            continue
        if not isinstance(obj, dict):
            yield Record(unit.path, line, error=f"JSON line is a {type(obj).__name__}, not an object",
                         reason="wrong_type", raw=text[:500])
            continue
        yield Record(unit.path, line, data=obj)


def _iter_delimited_lines(
    unit: FileUnit, delimiter: str, columns: list[str] | None, has_header: bool, limit: int | None
) -> Iterator[Record]:
    names = columns or unit.header
    n = 0
    for line, raw in _iter_lines(unit):
        if has_header and line == 1:
            continue
        if limit is not None and n >= limit:
            return
        try:
            text = _decode(raw, line == 1)
        except UnicodeDecodeError as exc:
            n += 1
            yield Record(unit.path, line, error=f"not valid UTF-8: {exc}", reason="bad_encoding",
                         raw=repr(raw[:200]))
            continue
        if not text.strip():
            continue
        n += 1
        fields = text.split(delimiter)
        if names is None:
            data = {str(i): v for i, v in enumerate(fields)}
        elif len(fields) < len(names):
            yield Record(unit.path, line, reason="missing_field", raw=text[:500],
                         error=f"expected {len(names)} {delimiter!r}-separated fields "
                               f"({', '.join(names)}), found {len(fields)}")
            continue
        else:
            data = dict(zip(names, fields, strict=False))
        yield Record(unit.path, line, data=data)


def _unit_bytes(unit: FileUnit) -> bytes:
    """The bytes of a whole file (decompressed) or of a planned piece's byte range."""
    fs, p = fs_and_path(unit.path)
    piece = unit.end >= 0
    with fs.open(p, "rb", compression=None if piece else "infer") as fh:
        if piece:
            fh.seek(unit.start)
        return fh.read(unit.end - unit.start) if piece else fh.read()


def _iter_csv(
    unit: FileUnit, delimiter: str, columns: list[str] | None, has_header: bool, limit: int | None
) -> Iterator[Record]:
    """Rows of a quoted CSV file, or of the byte range of a piece planned by
    :func:`plan_csv_units` (``end >= 0``: starts on a record boundary, no header, line numbers
    from ``first_line``)."""
    path = unit.path
    raw = _unit_bytes(unit)
    try:
        text = raw.decode("utf-8-sig" if unit.start == 0 else "utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not valid UTF-8 ({exc})") from exc
    del raw
    reader = csv.reader(_io.StringIO(text, newline=""), delimiter=delimiter)
    names = columns
    first = unit.start == 0
    offset = unit.first_line - 1
    n = 0
    for row in reader:
        line = offset + reader.line_num
        if first:
            first = False
            if has_header:
                if names is None:
                    names = [c.strip() for c in row]
                continue
        if names is None:
            names = [str(i) for i in range(len(row))]
        if not any(c.strip() for c in row):
            continue
        if limit is not None and n >= limit:
            return
        n += 1
        if len(row) < len(names):
            yield Record(path, line, reason="missing_field", raw=delimiter.join(row)[:500],
                         error=f"expected {len(names)} columns ({', '.join(names)}), found {len(row)}")
            continue
        yield Record(path, line, data=dict(zip(names, row, strict=False)))


def plan_csv_units(path: str, chunk_bytes: int, header: list[str] | None,
                   delimiter: str = ",") -> list[FileUnit]:
    """Split a quoted CSV file into byte ranges that start on record boundaries.

    A newline inside a quoted field is not a boundary, so the file is parsed once here with
    the same ``csv`` reader the pieces use, fed line by line: when it returns a record, the
    lines it has pulled are exactly that record's, which gives the byte offset and the line
    number of the next one. Memory is one line. Compressed, small or undecodable files stay
    one unit (an undecodable one reports the error when read, as before).
    """
    if is_compressed(path) or path.startswith(HF_PREFIX):
        return [FileUnit(path=path, header=header)]
    fs, p = fs_and_path(path)
    size = fs.size(p)
    if size <= chunk_bytes:
        return [FileUnit(path=path, header=header)]
    consumed = [0]  # bytes of the lines handed to the reader so far

    def lines(fh: Any) -> Iterator[str]:
        for i, ln in enumerate(fh):
            consumed[0] += len(ln.encode("utf-8")) + (3 if i == 0 and bom else 0)
            yield ln

    units: list[FileUnit] = []
    try:
        with fs.open(p, "rb") as raw:
            bom = raw.read(3) == b"\xef\xbb\xbf"
            raw.seek(0)
            text = _io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            reader = csv.reader(lines(text), delimiter=delimiter)
            start, first_line, target = 0, 1, chunk_bytes
            for _ in reader:
                if consumed[0] >= target and consumed[0] < size:
                    units.append(FileUnit(path, start, consumed[0], first_line, header))
                    start, first_line = consumed[0], reader.line_num + 1
                    target = start + chunk_bytes
    except (UnicodeDecodeError, csv.Error):
        return [FileUnit(path=path, header=header)]
    if not units:
        return [FileUnit(path=path, header=header)]
    units.append(FileUnit(path, start, size, first_line, header))
    return units


def _iter_json(unit: FileUnit, limit: int | None) -> Iterator[Record]:
    """Items of a JSON list file (or ``{"data": [...]}``), or of the byte range of a piece
    planned by :func:`plan_json_units` (``end >= 0``: whole items of the top-level list,
    numbered from ``first_line``)."""
    path = unit.path
    piece = unit.end >= 0
    raw = _unit_bytes(unit)
    try:
        text = raw.decode("utf-8" if piece else "utf-8-sig")
        obj = json.loads("[" + text + "]" if piece else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not a valid JSON file ({exc})") from exc
    del raw, text
    if isinstance(obj, dict):
        for key in ("data", "rows", "examples", "items"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
    if not isinstance(obj, list):
        raise SourceError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
    for i, item in enumerate(obj[:limit] if limit else obj, start=unit.first_line):
        if isinstance(item, dict):
            yield Record(path, i, data=item)
        else:
            yield Record(path, i, error=f"item {i} is a {type(item).__name__}, not an object",
                         reason="wrong_type", raw=json.dumps(item, ensure_ascii=False)[:500])


_JSON_TOKENS = re.compile(rb'[\\"\[\]{},]')


def plan_json_units(path: str, chunk_bytes: int, block_bytes: int = 1 << 22) -> list[FileUnit]:
    """Split a JSON file whose top level is a list into pieces of whole items of about
    ``chunk_bytes``: ``[start, end)`` holds items without the brackets and the commas around
    them, ``first_line`` is the number of its first item.

    One streaming scan of the bytes (strings, escapes and nesting), ``block_bytes`` at a time,
    no parse: memory is one block. Anything else (a ``{"data": [...]}`` object, text after the
    list, an unterminated list, compressed or small files) stays one unit, which then reports
    a broken file as before; a syntax error inside an item fails only its piece.
    """
    if is_compressed(path) or path.startswith(HF_PREFIX):
        return [FileUnit(path=path)]
    fs, p = fs_and_path(path)
    if fs.size(p) <= chunk_bytes:
        return [FileUnit(path=path)]
    cuts: list[tuple[int, int, int]] = []   # (start, end, first item) of each piece
    depth, in_str, escaped_at = 0, False, -1
    start = first = closed = -1
    items = 0
    with fs.open(p, "rb") as fh:
        base = 0
        head = fh.read(3)
        base = 3 if head == b"\xef\xbb\xbf" else 0
        fh.seek(base)
        while block := fh.read(block_bytes):
            if closed >= 0:
                if block.strip():
                    return [FileUnit(path=path)]   # text after the list
                base += len(block)
                continue
            if depth == 0 and start < 0:
                lead = block.lstrip()
                if not lead:
                    base += len(block)
                    continue
                if lead[:1] != b"[":
                    return [FileUnit(path=path)]   # an object, a scalar: one unit
            for m in _JSON_TOKENS.finditer(block):
                pos, c = base + m.start(), m.group()
                if in_str:
                    if pos == escaped_at:
                        continue
                    if c == b"\\":
                        escaped_at = pos + 1
                    elif c == b'"':
                        in_str = False
                    continue
                if closed >= 0:
                    return [FileUnit(path=path)]
                if c == b'"':
                    in_str = True
                elif c in (b"[", b"{"):
                    depth += 1
                    if depth == 1:
                        start, first, items = pos + 1, 1, 1
                elif c in (b"]", b"}"):
                    depth -= 1
                    if depth == 0:
                        closed = pos
                elif c == b"," and depth == 1:
                    items += 1
                    if pos - start >= chunk_bytes:
                        cuts.append((start, pos, first))
                        start, first = pos + 1, items
            if closed >= 0 and block[closed - base + 1:].strip():
                return [FileUnit(path=path)]
            base += len(block)
    if closed < 0 or depth != 0 or not cuts:
        return [FileUnit(path=path)]
    cuts.append((start, closed, first))
    return [FileUnit(path, a, b, n) for a, b, n in cuts]


def _iter_parquet(unit: FileUnit, limit: int | None) -> Iterator[Record]:
    """Rows of a Parquet file, or of the row groups ``[start, end)`` of a piece planned by
    :func:`plan_parquet_units` (``end >= 0``); record numbers count from ``first_line`` so a
    piece's rows keep the numbers they have in the whole file."""
    fs, p = fs_and_path(unit.path)
    try:
        pf = pq.ParquetFile(fs.open(p, "rb"))
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{unit.path}: not a readable Parquet file ({exc})") from exc
    groups = None if unit.end < 0 else list(range(unit.start, unit.end))
    i, n = unit.first_line - 1, 0
    for batch in pf.iter_batches(batch_size=4096, row_groups=groups):
        for row in batch.to_pylist():
            i, n = i + 1, n + 1
            if limit is not None and n > limit:
                return
            yield Record(unit.path, i, data=row)


def plan_parquet_units(path: str, chunk_bytes: int) -> list[FileUnit]:
    """Split a Parquet file into pieces of whole row groups of about ``chunk_bytes``
    (compressed), like :func:`plan_file_units` splits line files: ``start``/``end`` are
    row-group indexes and ``first_line`` the 1-based number of the piece's first row.

    Only the footer is read. A file that fits in one chunk, or has one row group, stays one
    unit with the same id as before.
    """
    fs, p = fs_and_path(path)
    try:
        with fs.open(p, "rb") as fh:
            md = pq.ParquetFile(fh).metadata
    except (pa.ArrowInvalid, OSError):
        return [FileUnit(path=path)]  # its unit reports the unreadable file, as before
    sizes = [sum(md.row_group(g).column(c).total_compressed_size for c in range(md.num_columns))
             for g in range(md.num_row_groups)]
    if md.num_row_groups <= 1 or sum(sizes) <= chunk_bytes:
        return [FileUnit(path=path)]
    units: list[FileUnit] = []
    start, size, line = 0, 0, 1
    for g in range(md.num_row_groups):
        size += sizes[g]
        if size >= chunk_bytes or g == md.num_row_groups - 1:
            units.append(FileUnit(path, start, g + 1, line))
            line += sum(md.row_group(x).num_rows for x in range(start, g + 1))
            start, size = g + 1, 0
    return units


def parse_hf_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``hf:ORG/NAME[:split]`` or ``hf:ORG/NAME/CONFIG[:split]`` -> (name, config, split)."""
    body = uri[len(HF_PREFIX):]
    split = None
    if ":" in body:
        body, split = body.rsplit(":", 1)
    parts = body.split("/")
    config = None
    if len(parts) == 3 and not os.path.exists(body):
        body, config = "/".join(parts[:2]), parts[2]
    return body, config, split or None


def _iter_hf(unit: FileUnit, limit: int | None) -> Iterator[Record]:
    """Rows of a Hugging Face dataset (hub id or local dataset folder) via ``datasets``; for a
    piece planned by :func:`plan_hf_units`, rows ``[start, end)`` (``end < 0``: to the last
    row), numbered as in the whole split."""
    import datasets

    uri = unit.path
    name, config, split = parse_hf_uri(uri)
    try:
        ds = datasets.load_dataset(name, config, split=split or "train")
    except Exception as exc:  # hub unreachable, unknown name, bad split: all a SourceError
        raise SourceError(f"{uri}: cannot load Hugging Face dataset ({type(exc).__name__}: {exc})") from exc
    lo = 0
    if unit.start > 0 or unit.end >= 0:
        n = len(ds)
        lo = min(unit.start, n)
        ds = ds.select(range(lo, n if unit.end < 0 else min(unit.end, n)))
    for i, row in enumerate(ds, start=lo + 1):
        if limit is not None and i - lo > limit:
            return
        yield Record(uri, i, data=dict(row))


def plan_hf_units(uri: str, chunk_bytes: int) -> list[FileUnit]:
    """Split a Hugging Face dataset split into row ranges of about ``chunk_bytes``, from the
    row and byte counts its card declares (``load_dataset_builder``: metadata, no download).

    The last piece runs to the end of the split and ranges are clamped to it, so counts that
    differ from the loaded split (``datasets`` verifies them unless told not to) lose no rows.
    Without counts, or when they cannot be read, the split stays one unit with its former id.
    A loaded split's cached info replaces the card's counts, so later plans use the real ones.
    """
    name, config, split = parse_hf_uri(uri)
    try:
        import datasets

        info = (datasets.load_dataset_builder(name, config).info.splits or {})[split or "train"]
        rows, size = int(info.num_examples or 0), int(info.num_bytes or 0)
    except Exception:  # any failure here only means "do not split"
        return [FileUnit(path=uri)]
    if rows <= 1 or size <= chunk_bytes:
        return [FileUnit(path=uri)]
    per = max(1, -(-rows * chunk_bytes // size))
    starts = list(range(0, rows, per))
    return [FileUnit(uri, a, b, a + 1) for a, b in zip(starts, [*starts[1:], -1], strict=True)]


# ----------------------------------------------------------------------------- writing


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URIs alike."""
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def makedirs(path: str) -> None:
    fs, p = fs_and_path(path)
    fs.makedirs(p, exist_ok=True)


def remove(path: str) -> None:
    """Delete a file or folder tree (local or fsspec); missing is fine."""
    fs, p = fs_and_path(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def exists(path: str) -> bool:
    fs, p = fs_and_path(path)
    return fs.exists(p)


def _atomic_target(path: str) -> tuple[fsspec.AbstractFileSystem, str, str]:
    fs, p = fs_and_path(path)
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
    return fs, p, tmp


def write_parquet_atomic(table: pa.Table, path: str) -> None:
    """Write then rename, so a killed job never leaves a half file that looks finished."""
    fs, p, tmp = _atomic_target(path)
    fs.makedirs(posixpath.dirname(p), exist_ok=True)
    with fs.open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
    fs.mv(tmp, p)



def write_parquet_groups_atomic(tables: list[pa.Table], path: str, **options: Any) -> None:
    """Like ``write_parquet_atomic``, one row group per table (readers can skip groups by
    their statistics); ``options`` go to ``pq.ParquetWriter``."""
    fs, p, tmp = _atomic_target(path)
    fs.makedirs(posixpath.dirname(p), exist_ok=True)
    with fs.open(tmp, "wb") as fh, pq.ParquetWriter(fh, tables[0].schema, **options) as writer:
        for t in tables:
            writer.write_table(t, row_group_size=max(1, t.num_rows))
    fs.mv(tmp, p)


def write_jsonl_atomic(rows: Iterable[dict[str, Any]], path: str) -> int:
    fs, p, tmp = _atomic_target(path)
    fs.makedirs(posixpath.dirname(p), exist_ok=True)
    n = 0
    with fs.open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:  # error rows quote provider bodies: no key reaches the file
            fh.write(json.dumps(redact_obj(row), ensure_ascii=False) + "\n")
            n += 1
    fs.mv(tmp, p)
    return n


def write_json(obj: Any, path: str) -> None:
    fs, p, tmp = _atomic_target(path)
    fs.makedirs(posixpath.dirname(p), exist_ok=True)
    with fs.open(tmp, "w", encoding="utf-8") as fh:  # manifests, summaries, records: redacted
        json.dump(redact_obj(obj), fh, ensure_ascii=False, indent=2, sort_keys=False)
        fh.write("\n")
    fs.mv(tmp, p)


def read_json(path: str) -> Any:
    fs, p = fs_and_path(path)
    with fs.open(p, "r", encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    fs, p = fs_and_path(path)
    with fs.open(p, "r", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def list_files(path: str, suffix: str) -> list[str]:
    fs, p = fs_and_path(path)
    if not fs.exists(p):
        return []
    return sorted(_unstrip(fs, f) for f in fs.find(p) if f.endswith(suffix))


def sample_files(path: str) -> list[str]:
    """A stage's unified-sample Parquet files: ``DIR/samples/*.parquet``, else Parquet under
    ``path`` (or ``path`` itself); [] when there are none."""
    for cand in (join(path, "samples"), path):
        files = [cand] if cand.endswith(".parquet") else list_files(cand, ".parquet")
        if files:
            return files
    return []


def parquet_batches(path: str, columns: list[str] | None = None,
                    batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """Record batches of one Parquet file (local path or URI), ``batch_size`` rows at most.

    Why not ``pq.read_table``: it decodes the whole file at once, so one multi-GB part file
    would have to fit in memory; this holds one batch (and the page being decoded), and a
    caller that stops early never reads the rest of the file.
    """
    fs, p = fs_and_path(path)
    with fs.open(p, "rb") as fh:
        yield from pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=columns)


def sample_batches(path: str, columns: list[str] | None = None,
                   batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """A stage's unified samples as record batches, file after file in :func:`read_samples`'
    order: for callers that need a few rows or one pass, not the whole table."""
    files = sample_files(path)
    if not files:
        raise SourceError(f"no unified samples (Parquet) found under {path}")
    for f in files:
        yield from parquet_batches(f, columns, batch_size)


def read_samples(path: str) -> pa.Table:
    """Read a stage's unified samples (``DIR/samples/*.parquet`` or a Parquet file/dir)."""
    from .schema import ARROW_SCHEMA

    files = sample_files(path)
    if not files:
        raise SourceError(f"no unified samples (Parquet) found under {path}")
    fs, _ = fs_and_path(files[0])
    tables = [pq.read_table(fs_and_path(f)[1], filesystem=fs) for f in files]
    return pa.concat_tables([t.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA) for t in tables])
