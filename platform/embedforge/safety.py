"""Guards that keep a stage from destroying data it did not write.

Two rules, shared by every stage job:

* **No overlap.** A stage's ``--output`` must not equal, contain or sit inside one of its
  inputs: a stage clears parts of its output before it writes (``samples/``, stale parts), and
  doing that inside the folder it is about to read deletes the user's data first. Which flags
  are inputs and outputs is read from the job config itself: every path-bearing field is
  declared with :func:`path_field` and a role, and :func:`check_paths` checks every input
  against every output and store (a test fails on a path-like field without a role), so a new
  flag is covered the day it is added. Locations compare across spellings (``file://``,
  ``local://``, symlinks, trailing slashes, relative paths, credentials in a URI).
* **Ownership.** A stage writes ``OUTPUT/.embedforge-owner.json`` (naming the stage) when it
  creates its output folder, and deletes or overwrites only inside a folder whose marker names
  it. A non-empty folder without the marker (a user's folder, a typo'd path) or with another
  stage's marker is refused with one line naming the path, unless ``--force`` is given. Even
  then a stage deletes only the names it writes itself, never the whole folder.

Pure path logic plus fsspec (local paths and URIs alike); no Ray.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from . import __version__
from . import io as eio
from .config import ConfigError

OWNER_FILE = ".embedforge-owner.json"
FORCE_HELP = (f"take over an --output folder this stage did not create (no {OWNER_FILE}): the "
              "stage may then delete and overwrite files in it")


# ------------------------------------------------------------------ path fields of job configs

#: what a job does with a path flag: ``input`` is read only; ``output`` is the stage's folder,
#: claimed and partly cleared; ``store`` is written into but never cleared (a cache, a
#: tracking store): it may sit inside the output, not inside an input; ``none``: reviewed, not
#: a location (a model name, a URL of a service), named so the classification test passes.
PathRole = Literal["input", "output", "store", "none"]
ROLE_KEY = "path_role"


def path_field(role: PathRole, default: Any = ..., **kwargs: Any) -> Any:
    """A pydantic ``Field`` holding a path (or a list of paths) with its ``role``.

    The role lives in the field's JSON-schema extra, so :func:`path_flags` finds every path of
    any config, nested sections and lists of specs included, without a hand-kept list.
    """
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[ROLE_KEY] = role
    if "default_factory" in kwargs:
        return Field(json_schema_extra=extra, **kwargs)
    return Field(default, json_schema_extra=extra, **kwargs)


def field_role(field: Any) -> str | None:
    extra = field.json_schema_extra
    return extra.get(ROLE_KEY) if isinstance(extra, dict) else None


@dataclass(frozen=True)
class PathFlag:
    """One path value of a config: the flag a user typed it under, its role, the value, and
    where it sits in ``cfg.model_dump()`` (keys and list indexes)."""

    flag: str
    role: str
    value: str
    loc: tuple[str | int, ...] = ()


def path_flags(cfg: BaseModel, prefix: str = "--",
               loc: tuple[str | int, ...] = ()) -> list[PathFlag]:
    """Every path value in ``cfg`` with its flag and role, nested sections and lists included.

    A spec in a list (a prepare source, an evaluate task) is named by its class's
    ``cli_label`` (``"--source {name}"``); its ``path`` field takes the label alone. A spec may
    say that a field holds no path for this value (an mteb task's ``path`` is a task name) with
    a ``path_role(name, role)`` method.
    """
    out: list[PathFlag] = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name, None)
        flag = prefix + name.replace("_", "-")
        if isinstance(value, BaseModel):
            out += path_flags(value, flag + ".", (*loc, name))
            continue
        if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            for i, item in enumerate(value):
                label = getattr(item, "cli_label", None)
                out += path_flags(item, label.format(**item.model_dump()) + " " if label
                                  else f"{flag}[{i}].", (*loc, name, i))
            continue
        role = field_role(field)
        if hasattr(cfg, "path_role"):
            role = cfg.path_role(name, role)
        if role in (None, "none"):
            continue
        if prefix.endswith(" ") and name == "path":
            flag = prefix.rstrip()
        if isinstance(value, list):
            out += [PathFlag(flag, role, v, (*loc, name, i))
                    for i, v in enumerate(value) if isinstance(v, str) and v]
        elif isinstance(value, str) and value:
            out.append(PathFlag(flag, role, value, (*loc, name)))
    return out


def check_paths(cfg: BaseModel) -> None:
    """The data-safety rule for a job config: no output or store equals, contains or sits
    inside one of the inputs (in any spelling). Raises a ConfigError naming both flags."""
    flags = path_flags(cfg)
    inputs = [(f.flag, f.value) for f in flags if f.role == "input" and not _hub_id(f.value)]
    for f in flags:
        if f.role in ("output", "store"):
            check_no_overlap(f.value, inputs, f.flag)


# ------------------------------------------------------------------ comparing locations

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_id(value: str) -> bool:
    """``org/name`` that is no local folder: a model on the hub, not a path under the cwd
    (``--output .`` must not be refused for containing ``./org/name``)."""
    return bool(_HUB_ID.match(value)) and not os.path.exists(value)


#: fsspec protocols that name one store (``local://`` is Ray's and fsspec's word for a path)
_SAME_PROTOCOL = {"local": "file", "gcs": "gs", "s3a": "s3", "abfss": "abfs"}
_CREDENTIALS = re.compile(r"^[^/@]*@")


def _normalized(path: str) -> tuple[str, str]:
    """(protocol, absolute normalised path) for comparing locations.

    Local paths (plain, ``file://`` or ``local://``) resolve ``~``, relative parts and
    symlinks (``runs -> /mnt/x/runs`` and ``/mnt/x/runs`` are one folder); URIs compare by
    protocol + normalised path, credentials dropped. Glob characters cut the path to the
    folder that the pattern lives in, since any file below it may be read. A reference that is
    no location (``hf:org/name``, ``package:NAME``) overlaps nothing.
    """
    if path.startswith(eio.HF_PREFIX):
        return "hf", path
    cut = min((path.index(c) for c in "*?[" if c in path), default=len(path))
    if cut < len(path):
        path = path[:cut].rsplit("/", 1)[0] or "/"
    protocol, sep, rest = path.partition("://")
    if not sep:
        head = path.split("/", 1)[0]
        if ":" in head and len(head.split(":", 1)[0]) > 1:  # package:NAME (not C:\ or a:b/..)
            return "ref", path
        protocol, rest = "file", path
    protocol = _SAME_PROTOCOL.get(protocol.lower(), protocol.lower())
    if protocol == "file":
        return "file", os.path.realpath(os.path.expanduser(rest or "/"))
    return protocol, posixpath.normpath("/" + _CREDENTIALS.sub("", rest))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def overlap(output: str, source: str) -> str | None:
    """How ``output`` overlaps ``source`` ("is", "contains", "is inside"), or None."""
    (po, o), (ps, s) = _normalized(output), _normalized(source)
    if po != ps or po in ("hf", "ref"):
        return None
    if o == s:
        return "is"
    if _inside(s, o):
        return "contains"
    if _inside(o, s):
        return "is inside"
    return None


def check_no_overlap(output: str, inputs: Iterable[tuple[str, str | None]],
                     output_flag: str = "--output") -> None:
    """Refuse an output that equals, contains or sits inside any input.

    ``inputs`` are (flag, path) pairs, e.g. ``("--input", cfg.input)``; None paths are skipped.
    """
    for flag, path in inputs:
        if not path:
            continue
        how = overlap(output, path)
        if how is not None:
            raise ConfigError(
                f"{output_flag} {output} {how} {flag} {path}: the stage writes and clears "
                f"files under {output_flag}, which would change or delete its own input; "
                f"choose a {output_flag} outside the input")


def owner_path(output: str) -> str:
    return eio.join(output, OWNER_FILE)


def owner(output: str) -> str | None:
    """The stage named by ``output``'s ownership marker (None: no marker, or unreadable)."""
    path = owner_path(output)
    if not eio.exists(path):
        return None
    try:
        return str(eio.read_json(path).get("stage"))
    except (OSError, ValueError, AttributeError):
        return None


def _has_content(output: str) -> bool:
    """Any file in ``output`` but the marker (empty folders hold nothing to lose: a launcher
    creates the stage folders ahead). Stops at the first file found."""
    fs, p = eio.fs_and_path(output)
    if not fs.exists(p):
        return False
    if not fs.isdir(p):
        return True
    top = p.rstrip("/")
    for root, _dirs, files in fs.walk(p):
        if any(f != OWNER_FILE or root.rstrip("/") != top for f in files):
            return True
    return False


def claim_output(output: str, stage: str, force: bool = False) -> None:
    """Make sure ``stage`` may write (and delete) inside ``output``; mark it as the owner.

    A missing or empty folder is created and marked. A folder marked for ``stage`` is fine. A
    non-empty folder without the marker, or marked by another stage, is refused naming the
    path, unless ``force`` (then the marker is written and the stage proceeds).
    """
    found = owner(output)
    if found == stage:
        return
    fs, p = eio.fs_and_path(output)
    if fs.exists(p) and not fs.isdir(p):
        raise ConfigError(f"--output {output} is a file, not a folder")
    if _has_content(output) and not force:
        whose = (f"it belongs to the {found} stage ({OWNER_FILE})" if found
                 else f"it has no {OWNER_FILE} marker, so this stage did not create it")
        raise ConfigError(
            f"--output {output} is not empty and {whose}; the {stage} stage deletes and "
            "overwrites files in its output, so it refuses to touch it. Choose a new folder, "
            "or pass --force to let it take the folder over")
    eio.makedirs(output)
    eio.write_json({"stage": stage, "embedforge": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, owner_path(output))


#: what the last :func:`publish` into a folder moved there (the names a re-export may replace)
PUBLISHED_FILE = ".embedforge-files.json"
STAGING_PREFIX = ".staging-"


@contextlib.contextmanager
def staging(out_dir: str) -> Iterator[str]:
    """A fresh folder to build ``out_dir``'s new content in, removed when left.

    Made with ``mkdtemp`` inside ``out_dir`` itself (a folder the stage claimed): a unique name
    the job owns, never a fixed ``X.tmp`` beside it that may be a user's folder. Local paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: str, out_dir: str) -> list[str]:
    """Move every entry of ``tmp`` into ``out_dir``; returns their names.

    Only names this publish writes are replaced, plus those the previous publish into the
    folder wrote (:data:`PUBLISHED_FILE`) and this one does not (a re-export with other
    weight shards must not leave stale ones). Anything else in ``out_dir`` (a user's notes in a
    folder taken over with ``--force``) stays: the folder itself is never removed.
    """
    names = sorted(os.listdir(tmp))
    record = os.path.join(out_dir, PUBLISHED_FILE)
    before: list[str] = []
    if os.path.exists(record):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            before = list(eio.read_json(record).get("files", []))
    for name in [*(n for n in before if n not in names), *names]:
        target = os.path.join(out_dir, name)
        if os.path.basename(name) != name or name in ("", ".", ".."):
            continue  # a record edited by hand names nothing outside the folder
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
    for name in names:
        os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    eio.write_json({"files": names}, record)
    return names


def remove_owned(path: str, root: str, stage: str) -> None:
    """Delete ``path`` (a folder or file under ``root``) only when ``root`` is ``stage``'s.

    For callers that clear a stage's output from outside the stage (the pipeline re-running
    it): without the marker the folder is not ours to delete, and the job stops naming it.
    """
    if not eio.exists(path):
        return
    if overlap(path, root) not in ("is", "is inside"):
        raise ConfigError(f"refusing to delete {path}: it is not inside {root}")
    found = owner(root)
    if found != stage:
        whose = f"it belongs to the {found} stage" if found else f"it has no {OWNER_FILE} marker"
        raise ConfigError(
            f"refusing to delete {path}: {whose}, so the {stage} stage did not write it; "
            "move it away (or delete it yourself) and run again")
    eio.remove(path)
