"""The chief's stall warning: no chunk has finished for `train.stall_warning_seconds`.

A worker or ps that is stopped or hung fails nothing: under ParameterServerStrategy the
coordinator waits on its gRPC call for ever, the chief waits on that chunk, and the job
stalls without a line. A thread of the chief's watches the time since the last finished
chunk and says so, naming what it waits for, well before the launcher restarts the silent
task (`cluster.hung_task_seconds`, disttrain/heartbeat.py).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable


def warning_due(now: float, last_progress: float, last_warning: float, after: float) -> bool:
    """Whether to warn at `now`: `after` seconds (0: never) have passed without progress
    and without a warning; so a stall is repeated every `after` seconds, with its length."""
    return after > 0 and now - max(last_progress, last_warning) >= after


def restart_hint(hung_task_seconds: int) -> str:
    """What happens next to the task that holds the stalled work."""
    if not hung_task_seconds:
        return "cluster.hung_task_seconds is 0: no task is restarted for it"
    return (
        f"a task without a heartbeat for cluster.hung_task_seconds ({hung_task_seconds}s) "
        "is restarted"
    )


class StallWatch:
    """Warns through `log` while the loop makes no progress; `waiting_for()` says on what.

    The loop calls `progressed()` whenever a chunk finishes; `check()` is what the thread
    runs every second or so (a test calls it with its own clock).
    """

    def __init__(
        self,
        after: float,
        hung_task_seconds: int,
        waiting_for: Callable[[], str],
        log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.after, self.hint = after, restart_hint(hung_task_seconds)
        self.waiting_for, self.log, self.clock = waiting_for, log, clock
        self.last_progress = clock()
        self.last_warning = float("-inf")
        self._stop = threading.Event()

    def progressed(self) -> None:
        self.last_progress = self.clock()

    def check(self) -> None:
        now = self.clock()
        if not warning_due(now, self.last_progress, self.last_warning, self.after):
            return
        self.last_warning = now
        self.log(
            f"train | WARNING | no chunk finished for {now - self.last_progress:.0f}s | "
            f"waiting for {self.waiting_for()} | {self.hint}"
        )

    def start(self) -> None:
        self.last_progress = self.clock()
        if self.after <= 0:
            return
        poll = min(1.0, self.after / 4)
        thread = threading.Thread(target=self._run, args=(poll,), name="stall-watch", daemon=True)
        thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, poll: float) -> None:
        while not self._stop.wait(poll):
            self.check()


def worker_running(remote_value: object) -> int | None:
    """The index of the worker whose coordinator thread is running the closure that will
    fill `remote_value` (what `ClusterCoordinator.schedule` returned); None when none is
    (it is queued, or was put back after its worker failed).

    TensorFlow records this nowhere public: each worker has a thread on the chief that
    runs one closure at a time in `Worker._process_closure(closure)`, and a closure keeps a
    weak reference to its remote value. This reads the threads' current frames, so it
    costs nothing until a warning is due, and a TensorFlow that changes these names makes
    it answer None, never fail.
    """
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "_process_closure":
                worker, closure = frame.f_locals.get("self"), frame.f_locals.get("closure")
                reference = getattr(closure, "_output_remote_value_ref", None)
                if callable(reference) and reference() is remote_value:
                    return getattr(worker, "worker_index", None)
            frame = frame.f_back
    return None
