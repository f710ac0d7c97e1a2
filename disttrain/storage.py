"""The one place disttrain talks to fsspec: a run directory named by any URL.

Local paths, mounted Azure Files shares (`/azure/<share>/...`, plain paths inside a pod)
and remote URLs (`memory://`, `az://`, ...) all go through `RunDir`. Everything else in
disttrain asks this module for files and never imports fsspec itself.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import fsspec
from fsspec.core import url_to_fs

T = TypeVar("T")

# The public layout of a run directory (see DESIGN.md, "The run directory").
CONFIG_FILE = "config.yaml"
DONE_FILE = "DONE"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "checkpoints/LATEST"
TRAIN_LOGS = "logs/train"
EVAL_LOGS = "logs/eval"
EVAL_RESULTS = "eval/results.jsonl"
BEST_EXPORT = "export/best"


class RunDir:
    """A run directory: relative paths in, bytes and files out."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") or url
        self.fs, self.root = url_to_fs(self.url)
        self.is_local = "file" in _protocols(self.fs)
        if self.is_local:
            self.root = os.path.abspath(self.root)

    def __repr__(self) -> str:
        return f"RunDir({self.url!r})"

    def path(self, relative: str = "") -> str:
        return posixpath.join(self.root, relative) if relative else self.root

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def read_text(self, relative: str) -> str:
        return self.read_bytes(relative).decode()

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a whole object; on a local path readers never see it half-written."""
        target = self.path(relative)
        self._make_parent(target)
        if self.is_local:
            partial = f"{target}.partial-{os.getpid()}"
            with open(partial, "wb") as out:
                out.write(data)
            os.replace(partial, target)
        else:
            self.fs.pipe_file(target, data)

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode())

    def append_line(self, relative: str, line: str) -> None:
        """Append one line (object stores have no append: read, extend, rewrite)."""
        existing = self.read_text(relative) if self.exists(relative) else ""
        self.write_text(relative, existing + line.rstrip("\n") + "\n")

    def put_file(self, local_path: str | Path, relative: str) -> None:
        target = self.path(relative)
        self._make_parent(target)
        self.fs.put_file(str(local_path), target)

    def get_file(self, relative: str, local_path: str | Path) -> None:
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self.path(relative), str(local_path))

    def size(self, relative: str) -> int:
        return int(self.fs.size(self.path(relative)))

    def list_names(self, relative: str) -> list[str]:
        """Names directly under a folder; an absent folder has none."""
        try:
            entries = self.fs.ls(self.path(relative), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def list_files(self, relative: str) -> list[str]:
        """Every file under a folder, as paths relative to that folder."""
        base = self.path(relative).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        # Backends disagree on a leading "/" (local and memory:// keep it, az:// does not).
        return sorted(posixpath.relpath(f.lstrip("/"), base.lstrip("/")) for f in found)

    def delete(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.rm(self.path(relative), recursive=True)

    def _make_parent(self, target: str) -> None:
        if self.is_local:
            os.makedirs(posixpath.dirname(target), exist_ok=True)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def with_retries(
    action: Callable[[], T],
    what: str,
    attempts: int = 5,
    first_delay: float = 0.5,
    log: Callable[[str], None] = print,
) -> T:
    """Run a storage action, retrying with exponential backoff; re-raise after `attempts`."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:  # storage SDKs raise many unrelated types
            if attempt == attempts:
                raise
            log(f"storage | retry {attempt}/{attempts - 1} | {what} | {type(exc).__name__}: {exc}")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")
