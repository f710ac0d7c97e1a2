"""Workers and parameter servers under ParameterServerStrategy: serve until the job ends.

A server has no idea how many steps remain; it stops when the chief's DONE marker
appears in the run dir (exit 0), when the chief never came up (exit 0), or when a chief it
had reached has been unreachable for `cluster.chief_timeout_seconds`: a job that failed for
good must not leave servers, and their GPUs, running forever. That last one raises
`PeerTimeout` (exit 3, worth a restart): the chief may have been cut off by the network
rather than gone, and its replacement (disttrain/cutoff.py makes a cut-off chief exit too)
needs its servers back, fresh; a server that exited 0 would never be started again. A
restarted server whose chief never comes back stops after the start-up allowance. On
SIGTERM it serves on until the chief has gone, within the grace period, and exits as
preempted (disttrain/preemption.py).
"""

from __future__ import annotations

import time

import tensorflow as tf

from disttrain import preemption
from disttrain.cluster import CHIEF, Task
from disttrain.config import Config
from disttrain.done import is_done
from disttrain.peers import PeerTimeout, accepts
from disttrain.progress import log
from disttrain.storage import RunDir, is_refused

POLL_SECONDS = 2.0
CHIEF_EXIT_GRACE_SECONDS = 30.0
STARTUP_ALLOWANCE = 4


def serve(config: Config, task: Task, tf_config: dict) -> None:
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=task.role,
        task_index=task.index,
        protocol="grpc",
        start=True,
    )
    log(f"{task.name} | serving | {tf_config['cluster'][task.role][task.index]}")
    chief = tf_config["cluster"][CHIEF][0]
    with preemption.polled():
        reason = wait_for_end(
            RunDir(config.run_dir), config.train.steps, chief, config.cluster.chief_timeout_seconds
        )
    if preemption.requested():
        stop_when_the_chief_has_gone(task, chief)
    # Stay up until the chief has gone: it may still be tearing down its remote context,
    # and a server vanishing under it fills the chief's log with gRPC errors.
    wait_until_closed(chief, CHIEF_EXIT_GRACE_SECONDS)
    log(f"{task.name} | stopping | {reason}")


def stop_when_the_chief_has_gone(task: Task, chief_address: str) -> None:
    """SIGTERM: serve on while the chief publishes its last checkpoint (it reads the
    variables here, and its chunks in flight run here), at most until this task must exit."""
    wait_until_closed(chief_address, preemption.exit_deadline() - time.monotonic())
    gone = "the chief has gone" if not accepts(chief_address) else "the grace period ends"
    raise preemption.Preempted(f"{task.name} | preempted | stopped serving: {gone}")


def wait_for_end(run_dir: RunDir, steps: int, chief_address: str, chief_timeout: float) -> str:
    """Block until DONE exists, the chief never came up or SIGTERM came; say which.
    Raise PeerTimeout when a chief it had reached stays unreachable for `chief_timeout`.

    The countdown starts only once the chief has been reached: a chief pod still pending
    (a GPU node scaling up, a long image pull) gets STARTUP_ALLOWANCE times longer, so
    servers do not complete, and never come back, before training began.
    """
    started, seen, unreachable_since = time.monotonic(), False, None
    while not preemption.requested():
        if _done(run_dir, steps):
            return "the chief wrote DONE"
        now = time.monotonic()
        if accepts(chief_address):
            seen, unreachable_since = True, None
        elif not seen:
            if now - started > STARTUP_ALLOWANCE * chief_timeout:
                limit = STARTUP_ALLOWANCE * chief_timeout
                return f"the chief ({chief_address}) never came up within {limit:.0f}s"
        elif unreachable_since is None:
            unreachable_since = now
        elif now - unreachable_since > chief_timeout:
            raise PeerTimeout(
                f"the chief ({chief_address}) was unreachable for {chief_timeout:.0f}s "
                "(cluster.chief_timeout_seconds): stopped serving it"
            )
        time.sleep(POLL_SECONDS)
    return "SIGTERM"


def wait_until_closed(address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while accepts(address) and time.monotonic() < deadline:
        time.sleep(0.5)


def _done(run_dir: RunDir, steps: int) -> bool:
    """Whether DONE is there. A storage outage must not kill a server: it asks again at the
    next poll, for as long as the chief lives (`wait_for_end` bounds that), but a refused
    request (a wrong key, no permission) would be refused forever: it is raised."""
    try:
        return is_done(run_dir, steps)
    except Exception as exc:
        if is_refused(exc):
            raise
        log(f"server | WARNING | cannot read DONE, retrying | {type(exc).__name__}")
        return False
