"""Staging a remote data folder to local scratch, like the 2017 sample's copy to /mnt.

Training reads every image many times; reading them from blob storage each epoch would
make the network the bottleneck. A folder at any fsspec URL is copied once, in parallel,
to `<scratch>/<name of the URL>/`, and a manifest of names and sizes (STAGED.json) is
written last. A later run finds the manifest matching the remote listing and reuses the
copy; an interrupted copy is resumed: files already present with the right size are kept.
Each file is written under a temporary name and renamed, so a present file is complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from disttrain.data.split import DataError
from disttrain.progress import CountProgress, megabytes
from disttrain.progress import log as default_log
from disttrain.storage import RunDir, redact, with_retries

MANIFEST = "STAGED.json"
COPY_THREADS = 16  # blob reads are latency-bound: many small files in flight at once


def staged_path(url: str, scratch_dir: Path) -> Path:
    """Where `url` is staged: readable, and unique per URL."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("_")[-60:]
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return scratch_dir / f"{readable}-{digest}"


def stage_folder(
    url: str,
    scratch_dir: Path,
    log: Callable[[str], None] = default_log,
    threads: int = COPY_THREADS,
) -> Path:
    """Copy the folder at `url` to local scratch (or reuse/resume a copy); its local path."""
    target = staged_path(url, scratch_dir)
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        # Chief and evaluator on one machine share the scratch: one copies, the other waits.
        fcntl.flock(lock, fcntl.LOCK_EX)
        remote = RunDir(url)
        sizes = with_retries(
            lambda: remote.file_sizes(""), f"list {redact(url)}", log=log, deadline_seconds=30
        )
        if not sizes:
            raise DataError(f"data.root: {redact(url)!r} holds no files (or does not exist)")
        if _manifest(target) == sizes:
            log(f"stage | reused | {len(sizes)} files | {target}")
            return target
        (target / MANIFEST).unlink(missing_ok=True)
        _copy_missing(remote, sizes, target, log, threads)
        (target / MANIFEST).write_text(json.dumps({"source": redact(url), "files": sizes}))
    return target


def _manifest(target: Path) -> dict[str, int] | None:
    try:
        return json.loads((target / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None


def _copy_missing(
    remote: RunDir, sizes: dict[str, int], target: Path, log: Callable[[str], None], threads: int
) -> None:
    missing = {name: size for name, size in sizes.items() if not _complete(target / name, size)}
    kept = len(sizes) - len(missing)
    log(
        f"stage | copying {len(missing)} of {len(sizes)} files "
        f"({megabytes(sum(missing.values()))}) to {target}"
        + (f" | resuming: {kept} already here" if kept else "")
    )
    progress = CountProgress("stage", len(missing), "files", log)
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(_copy_one, remote, name, target / name) for name in sorted(missing)]
        for future in as_completed(futures):
            progress.add(size=future.result())
    progress.finish()


def _complete(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _copy_one(remote: RunDir, name: str, local: Path) -> int:
    partial = local.with_name(f".{local.name}.partial-{os.getpid()}")
    with_retries(
        lambda: remote.get_file(name, partial), f"copy {remote.url_of(name)}", log=default_log
    )
    size = partial.stat().st_size
    os.replace(partial, local)
    return size
