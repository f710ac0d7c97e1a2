"""`disttrain board`: TensorBoard over a run's train and eval logs.

A local run dir (or a mounted share) is shown directly. A remote one (`az://...`) is
mirrored into a local cache that a thread refreshes while TensorBoard runs: TensorBoard
then reads plain local files, and the mirror only appends the bytes each event file
gained, so TensorBoard sees the file grow as if a writer were local.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from disttrain.storage import RunDir, StorageError, describe

LOGS = "logs"


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "disttrain" / "board"


def mirror_logs(run_dir: RunDir, local: Path) -> int:
    """Bring `local` up to date with `<run_dir>/logs`; returns the number of bytes fetched."""
    fetched = 0
    for relative, remote_size in run_dir.file_sizes(LOGS).items():
        target = local / relative
        have = target.stat().st_size if target.exists() else 0
        if have == remote_size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        remote_path = run_dir.path(f"{LOGS}/{relative}")
        if have < remote_size:  # event files only grow: fetch the new tail
            tail = run_dir.fs.cat_file(remote_path, start=have, end=remote_size)
            with open(target, "ab") as out:
                out.write(tail)
            fetched += len(tail)
        else:  # rewritten smaller (a new run in the same place): start over
            data = run_dir.fs.cat_file(remote_path)
            target.write_bytes(data)
            fetched += len(data)
    return fetched


class LogMirrorThread(threading.Thread):
    """Refreshes the local cache every `every_seconds` until stopped."""

    def __init__(
        self, run_dir: RunDir, local: Path, every_seconds: float, log: Callable[[str], None]
    ):
        super().__init__(name="board-log-mirror", daemon=True)
        self.run_dir, self.local, self.every, self.log = run_dir, local, every_seconds, log
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                mirror_logs(self.run_dir, self.local)
            except Exception as exc:  # an outage: keep showing what is cached
                self.log(
                    f"board | WARNING | refresh of {self.run_dir.url} failed | {describe(exc)}"
                )


class BoardError(RuntimeError):
    """TensorBoard cannot start as asked (the CLI exits 2); says why."""


def refuse_a_taken_port(host: str, port: int) -> None:
    """TensorBoard's own message for a taken port comes twice and exits 255: say it once."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TensorBoard binds
    try:
        probe.bind((host, port))
    except OSError as exc:
        raise BoardError(
            f"--port: {port} on {host} is taken ({exc.strerror}); accepted: a free port"
        ) from None
    finally:
        probe.close()


def tensorboard_command(
    logdir: Path | str, port: int, host: str, reload_seconds: float
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--port",
        str(port),
        "--host",
        host,
        "--reload_interval",
        str(reload_seconds),
    ]


def run_board(
    run_dir_url: str,
    port: int = 6006,
    host: str = "127.0.0.1",
    refresh_seconds: float = 10.0,
    cache_root: Path | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Serve TensorBoard until it exits or the user interrupts; returns its exit code.

    A run dir that does not exist or cannot be reached, and a port that is taken, are a
    StorageError or BoardError before TensorBoard starts; a run dir without logs yet is
    served (they appear when the run writes them), and says so."""
    run_dir = RunDir(run_dir_url, retries=False)  # it only looks; a refresh tries again
    try:
        found = run_dir.exists("")
    except Exception as exc:
        raise StorageError(run_dir.url, f"cannot be read: {describe(exc)}") from None
    if not found:
        raise StorageError(run_dir.url, "does not exist: no run has written there")
    refuse_a_taken_port(host, port)
    mirror = None
    if run_dir.is_local:
        logdir = Path(run_dir.path(LOGS))
    else:
        key = hashlib.sha256(run_dir.url.encode()).hexdigest()[:16]
        logdir = (cache_root or default_cache_root()) / key
        logdir.mkdir(parents=True, exist_ok=True)
        try:
            fetched = mirror_logs(run_dir, logdir)
        except Exception as exc:
            raise StorageError(run_dir.url, f"cannot read its logs: {describe(exc)}") from None
        log(f"board | mirroring {run_dir.url}/{LOGS} into {logdir} ({fetched} bytes so far)")
        mirror = LogMirrorThread(run_dir, logdir, refresh_seconds, log)
        mirror.start()
    if not run_dir.exists(LOGS):
        log(f"board | no logs under {run_dir.url}/{LOGS} yet: they appear once the run writes them")
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    log(f"board | TensorBoard on {logdir} | open http://{shown}:{port}/")
    reload_seconds = max(1.0, min(refresh_seconds, 30.0))
    process = subprocess.Popen(tensorboard_command(logdir, port, host, reload_seconds))
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()
    finally:
        if mirror is not None:
            mirror.stopped.set()
