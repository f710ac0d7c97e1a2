"""A task proves it is alive: a thread touches a file (its heartbeat) every few seconds.

A process that cannot run, because it was stopped (SIGSTOP, a debugger) or its machine
froze, stops touching the file, and its peers cannot tell: the coordinator waits on its
gRPC call for ever and nothing fails. So the launchers watch the file's age and restart a
task whose heartbeat is older than `cluster.hung_task_seconds`, as if it had crashed: the
local launcher kills it (launchers/local.py), Kubernetes through a liveness probe that
runs `PROBE_SCRIPT` in the container (launchers/k8s_objects.py and the charts).

A thread, not the training loop, beats: a long step, a checkpoint or a slow chunk is no
hang. A task hung with its threads still running (a deadlock inside a library) keeps
beating; the chief's stall warning (disttrain/stall.py) still says what the job waits for.

Pure Python: the launchers import it without TensorFlow.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

# The file a task touches, given by its launcher; unset (a task started by hand): no beat.
HEARTBEAT_ENV = "DISTTRAIN_HEARTBEAT_FILE"
MAX_BEAT_SECONDS = 5.0
# Exits 0 when the file (argv[1]) was touched within argv[2] seconds, else non-zero (a
# missing file included). Python, which every task image has, rather than `find -newermt`,
# which a busybox image lacks.
PROBE_SCRIPT = (
    "import os, sys, time; "
    "sys.exit(time.time() - os.stat(sys.argv[1]).st_mtime > float(sys.argv[2]))"
)


def beat_seconds(hung_task_seconds: float) -> float:
    """How often a task beats: a few times within the timeout, so one late beat is no hang."""
    return min(MAX_BEAT_SECONDS, hung_task_seconds / 4)


def probe_command(path: str, hung_task_seconds: int) -> list[str]:
    """A liveness probe's command: fails once `path` is older than `hung_task_seconds`."""
    return ["python3", "-c", PROBE_SCRIPT, path, str(hung_task_seconds)]


def beat(path: Path) -> None:
    """Touch the heartbeat file (and make its folder, which a launcher may not have)."""
    try:
        path.touch()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def start_heartbeat(
    path: Path, every: float, log: Callable[[str], None] = print
) -> threading.Event:
    """Beat now and then every `every` seconds on a daemon thread; set the event to stop.

    A beat that fails (a full disk) is logged once and tried again: the launcher restarts
    the task if it keeps failing, which is what a task that cannot write should expect.
    """
    stop = threading.Event()

    def run() -> None:
        failing = False
        while True:
            try:
                beat(path)
                failing = False
            except OSError as exc:
                if not failing:
                    log(f"heartbeat | WARNING | cannot touch {path} | {exc}")
                failing = True
            if stop.wait(every):
                return

    threading.Thread(target=run, name="heartbeat", daemon=True).start()
    return stop


def start_heartbeat_from_env(hung_task_seconds: int, log: Callable[[str], None] = print) -> None:
    """Beat to the file the launcher named in $DISTTRAIN_HEARTBEAT_FILE, if it named one."""
    path = os.environ.get(HEARTBEAT_ENV)
    if path and hung_task_seconds > 0:
        start_heartbeat(Path(path), beat_seconds(hung_task_seconds), log)


def silent_for(path: Path, since: float, now: float) -> float:
    """Seconds without a heartbeat at `now` (wall-clock, as file times are): since the
    file's last touch, or since `since` (when the task started, or since the watcher could
    last watch) if that is later."""
    try:
        last = max(path.stat().st_mtime, since)
    except FileNotFoundError:  # not started beating yet
        last = since
    return now - last
