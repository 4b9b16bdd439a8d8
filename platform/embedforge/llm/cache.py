"""Content-addressed response cache on local disk or any fsspec URI.

Key = sha256 of (model, template version, rendered messages, sampling params, sample index).
The API key is never part of it. A re-run of the same job therefore makes zero API calls for
what already succeeded, and a job killed midway resumes from what it had stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import fsspec


def cache_key(model: str, template_version: str, messages: list[dict[str, str]],
              params: dict[str, Any], sample_index: str | int) -> str:
    payload = json.dumps(
        {"model": model, "template": template_version, "messages": messages,
         "params": params, "sample_index": str(sample_index)},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    """One JSON file per response under ``ROOT/ab/<key>.json`` (atomic write, then rename)."""

    def __init__(self, root: str | None):
        self.root = root.rstrip("/") if root else None
        self._local = bool(self.root) and "://" not in self.root
        if self.root and not self._local:
            self.fs, self.base = fsspec.core.url_to_fs(self.root)
        elif self.root:
            os.makedirs(self.root, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _path(self, key: str) -> str:
        base = self.root if self._local else self.base
        return f"{base}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.root:
            return None
        path = self._path(key)
        try:
            if self._local:
                with open(path, encoding="utf-8") as fh:
                    return json.load(fh)
            with self.fs.open(path, "r", encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a torn or foreign file is a miss, never a crash

    def put(self, key: str, value: dict[str, Any]) -> None:
        if not self.root:
            return
        path = self._path(key)
        data = json.dumps(value, ensure_ascii=False)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        if self._local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(data)
            os.replace(tmp, path)
            return
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(tmp, "w", encoding="utf-8") as fh:
            fh.write(data)
        self.fs.mv(tmp, path)
