"""Guards that keep a stage from destroying data it did not write.

Two rules, shared by every stage job:

* **No overlap.** A stage's ``--output`` must not equal, contain or sit inside one of its
  inputs: a stage clears parts of its output before it writes (``samples/``, stale parts), and
  doing that inside the folder it is about to read deletes the user's data first.
* **Ownership.** A stage writes ``OUTPUT/.embedforge-owner.json`` (naming the stage) when it
  creates its output folder, and deletes or overwrites only inside a folder whose marker names
  it. A non-empty folder without the marker (a user's folder, a typo'd path) or with another
  stage's marker is refused with one line naming the path, unless ``--force`` is given.

Pure path logic plus fsspec (local paths and URIs alike); no Ray.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Iterable

from . import __version__
from . import io as eio
from .config import ConfigError

OWNER_FILE = ".embedforge-owner.json"
FORCE_HELP = (f"take over an --output folder this stage did not create (no {OWNER_FILE}): the "
              "stage may then delete and overwrite files in it")


def _normalized(path: str) -> tuple[str, str]:
    """(protocol, absolute normalised path) for comparing locations.

    Local paths resolve symlinks (``runs -> /mnt/x/runs`` and ``/mnt/x/runs`` are one folder);
    URIs compare by protocol + normalised path. Glob characters cut the path to the folder
    that the pattern lives in, since any file below it may be read.
    """
    if path.startswith(eio.HF_PREFIX):
        return "hf", path
    cut = min((path.index(c) for c in "*?[" if c in path), default=len(path))
    if cut < len(path):
        path = path[:cut].rsplit("/", 1)[0] or "/"
    if "://" in path and not path.startswith("file://"):
        protocol, _, rest = path.partition("://")
        return protocol, posixpath.normpath("/" + rest)
    local = path.removeprefix("file://")
    return "file", os.path.realpath(os.path.expanduser(local))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def overlap(output: str, source: str) -> str | None:
    """How ``output`` overlaps ``source`` ("is", "contains", "is inside"), or None."""
    (po, o), (ps, s) = _normalized(output), _normalized(source)
    if po != ps or po == "hf":
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
                f"{output_flag} {output} {how} {flag} {path}: the stage clears parts of its "
                "output before writing, which would delete its own input; choose an output "
                "folder outside the input")


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
