"""Whether this machine can hold a local job, checked before any of its tasks starts.

Every local task is a Python process with TensorFlow loaded. A job with more tasks than
memory does not fail cleanly: tasks pile up until the kernel's out-of-memory killer picks
victims (the launcher among them). So the plan estimates the job's memory and refuses one
that does not fit; `--force` (`launcher.local.force`) starts it anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

GIB = 1024**3
# Measured on 2026-12-01 (TensorFlow CPU, Linux x86-64, 2 cores, 24 GiB): the default job
# (`disttrain train --set train.steps=400`, 5 tasks), each task's /proc/PID/status VmRSS and
# /proc/PID/smaps_rollup Pss read every 2 s while the chief trained. RSS: ps ~610 MB, a worker
# ~680 MB, chief ~600 MB, evaluator ~550-650 MB. PSS (TensorFlow's shared libraries counted
# once across the tasks): ps ~320 MB, a worker ~370 MB, chief ~300 MB, evaluator up to
# ~480 MB while it evaluates. 512 MiB a task covers every task's PSS peak.
TASK_MEMORY_BYTES = 512 * 1024**2
# More tasks than this per core: they share the cores, and a step waits for the slowest.
TASKS_PER_CORE_WARNING = 4


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is no /proc)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_resources(
    tasks: int, force: bool, memory: int | None = None, cores: int | None = None
) -> list[str]:
    """The plan's warnings about this machine's resources; raises ValueError (a message
    naming the estimate, the available memory and --force) for a job that does not fit.
    `memory` and `cores` default to this machine's."""
    memory = available_memory() if memory is None else memory
    cores = (os.cpu_count() or 1) if cores is None else cores
    estimate = tasks * TASK_MEMORY_BYTES
    warnings = []
    if memory is not None and estimate > memory:
        message = (
            f"{tasks} local tasks need about {estimate / GIB:.1f} GiB of memory "
            f"({TASK_MEMORY_BYTES / GIB:.1f} GiB a task) and this machine has "
            f"{memory / GIB:.1f} GiB available (MemAvailable)"
        )
        if not force:
            raise ValueError(
                f"{message}: use fewer tasks (cluster.workers, cluster.ps, eval.enabled), "
                "or --force to start them anyway"
            )
        warnings.append(f"{message}; starting anyway (--force)")
    if tasks > TASKS_PER_CORE_WARNING * cores:
        warnings.append(
            f"{tasks} local tasks on {cores} CPU cores: they will share the cores and "
            "train slowly; use fewer workers, or -l k8s"
        )
    return warnings
