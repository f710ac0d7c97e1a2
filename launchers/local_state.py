"""A local job's state folder: who holds the job's name, and which processes are its own.

One job name, one job. A launcher holds `<state folder>/lock` with `fcntl.flock` for its
whole life, taken before it writes anything else. flock rather than an `O_EXCL` lock file:
the kernel releases it however the launcher ends (kill -9, the OOM killer, a power cut of
the process), so a held lock *is* a live launcher. An `O_EXCL` file would outlive a killed
launcher, and judging whether its owner still lives would again rest on a PID. The lock
file also names its owner (pid, start time, when), for the refusal a second launcher gets.

A PID alone is not trusted: the system reuses them. A process is ours only if its start
time (Linux: field 22 of /proc/PID/stat, clock ticks since boot) is the one recorded when
it was started.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from launchers import LauncherError

LOCK_FILE = "lock"
# Taking the lock retries this long: `status` and `list` probe it for an instant.
LOCK_RETRY_SECONDS = 1.0
HAS_PROC = Path("/proc/self/stat").exists()


@dataclass
class LauncherOwner:
    """The launcher that holds a job's name."""

    pid: int
    start_time: int | None
    started_at: str  # local time, for people
    host: str

    @classmethod
    def this_process(cls) -> LauncherOwner:
        pid, now = os.getpid(), time.strftime("%Y-%m-%d %H:%M:%S")
        return cls(pid, start_time_of(pid), now, socket.gethostname())


def start_time_of(pid: int | None) -> int | None:
    """When `pid` started, in clock ticks since boot; None if it is gone, a zombie or
    unknown (no /proc)."""
    if not pid:
        return None
    if not HAS_PROC:  # macOS: no start time to compare; a live pid is trusted (as before)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after its `)`.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # exited, not yet reaped
        return None
    return int(fields[19])  # field 22 of the whole line


def is_running(pid: int | None, start_time: int | None) -> bool:
    """Whether the process recorded as (`pid`, `start_time`) still runs: a PID now held by
    another process, or recorded without a start time, is not ours."""
    if not pid or start_time is None:
        return False
    return start_time_of(pid) == start_time


@contextmanager
def hold_job_name(state_dir: Path) -> Iterator[LauncherOwner]:
    """Hold the job's name for the duration; refuse, naming the holder, if a launcher
    already holds it. Nothing else in `state_dir` is written before this succeeds."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd, fcntl.LOCK_EX, LOCK_RETRY_SECONDS):
            raise LauncherError(_already_running(state_dir))
        owner = LauncherOwner.this_process()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(owner)).encode(), 0)
        yield owner
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a taker)


def refuse_if_held(state_dir: Path) -> None:
    """The refusal `hold_job_name` gives, early: before a launcher checks its inputs (which
    probes the run dir). Only a hint: `hold_job_name` is what two launchers cannot both pass."""
    if name_is_held(state_dir):
        raise LauncherError(_already_running(state_dir))


def name_is_held(state_dir: Path) -> bool:
    """Whether a live launcher holds the job's name."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd, fcntl.LOCK_SH, 0)
    finally:
        os.close(fd)


def lock_owner(state_dir: Path) -> LauncherOwner | None:
    """The launcher that last held the name, as its lock file says."""
    try:
        return LauncherOwner(**json.loads((state_dir / LOCK_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None  # none yet, or written this instant


def _try_lock(fd: int, kind: int, patience: float) -> bool:
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _already_running(state_dir: Path) -> str:
    owner = lock_owner(state_dir)
    held_by = (
        f"launcher pid {owner.pid} on {owner.host}, started at {owner.started_at}"
        if owner
        else "a launcher starting this instant"
    )
    return (
        f"job {state_dir.name!r} is already running ({held_by}); "
        f"`disttrain stop {state_dir.name}` or choose another name with --set name=..."
    )


def write_job_state(state_dir: Path, state: dict) -> None:
    """Replace job.json whole: a reader never sees half of it."""
    path = state_dir / "job.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(state, indent=2))
    partial.replace(path)
