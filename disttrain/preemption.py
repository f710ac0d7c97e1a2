"""SIGTERM, the polite kill: a drained or reclaimed node, a deleted pod, `disttrain stop`.

The sender waits a grace period, then sends SIGKILL. Every task calls `watch_for_sigterm`
first thing, and each role spends the grace as it can:

* the chief's training loop stops scheduling, publishes a checkpoint of the steps it has
  trained, within `train.preemption_checkpoint` of the grace period (train.py), and stops;
* a worker or ps keeps serving until the chief has gone (its last checkpoint reads the
  variables from the ps, and the chunks in flight run on the workers), at most until
  EXIT_MARGIN_SECONDS before the grace period ends (server.py);
* anything else (the evaluator, a task still starting) stops at once: what it has not
  recorded in the run dir, its next run does again.

Each then exits with EXIT_PREEMPTED (disttrain/failures.py), which the launchers restart
without counting a failure. Until a loop says it will poll (`polled`), SIGTERM raises
`Preempted` wherever the main thread is; inside, it only marks the request, and the loop
stops at its next safe point. Python drops an exception raised inside a finalizer, so a
loop outside `polled` (the evaluator's) also calls `stop_if_requested`.

The grace period is the launcher's, handed to the task as GRACE_ENV (the pod's
terminationGracePeriodSeconds; the local launcher's stop grace). Pure Python: launchers
import it without TensorFlow.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

GRACE_ENV = "DISTTRAIN_GRACE_SECONDS"
DEFAULT_GRACE_SECONDS = 30.0  # Kubernetes' default terminationGracePeriodSeconds
# What a server leaves of the grace period for its own exit: a task still running when the
# grace ends is killed (exit 137), which a launcher counts as a failure.
EXIT_MARGIN_SECONDS = 2.0


class Preempted(BaseException):
    """The task stopped because it was asked to (SIGTERM); start it again.

    A BaseException, as KeyboardInterrupt is: no `except Exception` on its way out (a
    storage retry, a poll that outlives an outage) swallows it."""


STOPPED_ON_SIGTERM = "task | preempted | stopped on SIGTERM"
_requested_at: float | None = None
_polling = False


def watch_for_sigterm() -> None:
    """From now on SIGTERM stops this task as described above (main thread only)."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(_signum, _frame) -> None:
    global _requested_at
    if _requested_at is not None:  # a second SIGTERM changes nothing
        return
    _requested_at = time.monotonic()
    if not _polling:
        raise Preempted(STOPPED_ON_SIGTERM)


def stop_if_requested() -> None:
    """Raise Preempted if SIGTERM has come. For a loop outside `polled`: the handler raises
    wherever Python code runs, and an exception raised inside a finalizer is dropped
    (printed as "Exception ignored in ..."), so the handler's own Preempted may be gone."""
    if _requested_at is not None:
        raise Preempted(STOPPED_ON_SIGTERM)


@contextmanager
def polled() -> Iterator[None]:
    """Within, SIGTERM only marks `requested()`: the caller stops at a point of its choice."""
    global _polling
    _polling = True
    try:
        yield
    finally:
        _polling = False


def requested() -> bool:
    return _requested_at is not None


def grace_seconds() -> float:
    """The grace period the launcher gives this task between SIGTERM and SIGKILL."""
    try:
        return float(os.environ[GRACE_ENV])
    except (KeyError, ValueError):
        return DEFAULT_GRACE_SECONDS


def deadline(part: float) -> float:
    """When `part` (0 to 1) of the grace period since the SIGTERM is over (time.monotonic)."""
    assert _requested_at is not None, "no SIGTERM yet"
    return _requested_at + part * grace_seconds()


def exit_deadline() -> float:
    """When a task that waits for others must stop waiting, to exit before SIGKILL."""
    assert _requested_at is not None, "no SIGTERM yet"
    return _requested_at + max(grace_seconds() - EXIT_MARGIN_SECONDS, 0.0)
