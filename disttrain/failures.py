"""Errors a restart cannot fix, and the exit codes that tell a launcher what to do.

A task that exits with EXIT_UNRECOVERABLE has printed `error: <why>` as its last line;
the launchers fail the job with that reason instead of spending restarts on it (the
local launcher itself, Kubernetes through each Job's podFailurePolicy). A task that
exits with EXIT_PREEMPTED was asked to stop (SIGTERM) and did, after saving what it
could (disttrain/preemption.py): a launcher starts it again without counting a failure.
Pure Python: launchers import it without TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys

from disttrain.cluster import task_from_tf_config

EXIT_UNRECOVERABLE = 4
EXIT_PREEMPTED = 5


def exit_at_once(code: int) -> None:
    """Exit with `code` now, the logs flushed, without the interpreter's teardown.

    For a task with nothing left to write: TensorFlow's teardown can wait for an upload
    thread past a grace period, or, under MultiWorkerMirroredStrategy, for the
    coordination service to declare a peer that has already exited dead (strategy.py).
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# The assertion message of the input pipeline's `data.on_bad_file: fail` check.
BAD_FILE_MESSAGE = "bad image file (data.on_bad_file: fail):"
_BAD_FILE = re.compile(re.escape(BAD_FILE_MESSAGE) + r"\]?\s*\[?\[?([^\]\n]+)")
# TensorFlow's only word when its gRPC server cannot bind the task's port.
PORT_TAKEN_MESSAGE = "Could not start gRPC server"


class Unrecoverable(RuntimeError):
    """The same inputs would fail the same way after a restart."""


def unrecoverable_cause(exc: BaseException) -> Unrecoverable | None:
    """The Unrecoverable that `exc` is, or carries inside a TensorFlow error; else None."""
    if isinstance(exc, Unrecoverable):
        return exc
    found = _BAD_FILE.search(str(exc))
    if found:
        files = found.group(1).strip().strip("'\"")
        return Unrecoverable(
            f"data.on_bad_file is fail and this file is not a decodable image: {files}"
        )
    if PORT_TAKEN_MESSAGE in str(exc):
        return Unrecoverable(
            f"could not listen on the port of {_own_address()} (on every address, as "
            "TensorFlow binds): another process holds the port"
        )
    return None


def _own_address() -> str:
    try:
        tf_config = json.loads(os.environ["TF_CONFIG"])
        task = task_from_tf_config(tf_config)
        return tf_config["cluster"][task.role][task.index]
    except (KeyError, IndexError, TypeError, ValueError):
        return "its TF_CONFIG address"
