"""The chief's DONE marker: how every other task learns that the job has finished.

The chief writes `<run_dir>/DONE` (JSON with the step it reached) after the last
checkpoint is published. A marker only counts for a job whose `train.steps` it reaches:
a run dir re-submitted with more steps still holds the earlier run's DONE, and servers
that believed it would stop before the chief had trained anything. No launcher has to
remember to delete it (a pod often cannot reach the run dir from where it was launched).
"""

from __future__ import annotations

import json
import time

from disttrain.storage import DONE_FILE, RunDir


def write_done(run_dir: RunDir, step: int) -> None:
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_dir.write_text(DONE_FILE, json.dumps({"step": step, "finished_at": finished}))


def done_step(run_dir: RunDir) -> int | None:
    """The step in the DONE marker, or None when there is none (or it is unreadable)."""
    if not run_dir.exists(DONE_FILE):
        return None
    try:
        return int(json.loads(run_dir.read_text(DONE_FILE))["step"])
    except (ValueError, KeyError, TypeError):
        return None


def is_done(run_dir: RunDir, steps: int) -> bool:
    """True once the chief has finished a run of at least `steps` steps in this run dir."""
    step = done_step(run_dir)
    return step is not None and step >= steps
