"""Where a task's seconds go before its first step (issue 13): start-up phases, timed.

`phase_done(name)` closes the phase that ran since the previous mark; `log_first_step()`
logs them all once, as one grep-friendly line, when the first chunk of steps is back:

    startup | first step: 18.22 s after process start | python + cli: 1.25 | import tensorflow: ...

Times count from the process's start as the kernel records it (/proc/self/stat), so the
interpreter and the CLI's own imports are in the first phase, as a user waits for them.
No TensorFlow here: it is imported by a phase this module times.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from disttrain.progress import log


def process_start_time() -> float:
    """This process's start as wall-clock time (10 ms resolution); now where /proc is not."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return time.time()


_STARTED = process_start_time()
_phases: list[tuple[str, float]] = []  # (name, seconds), in order
_last = _STARTED
_logged = False


def phase_done(name: str) -> None:
    """The phase `name` ends now; it began at the previous mark (or the process start)."""
    global _last
    now = time.time()
    _phases.append((name, now - _last))
    _last = now


def log_first_step() -> None:
    """Log the phases so far, once, ending with the first completed chunk."""
    global _logged
    if _logged:
        return
    _logged = True
    phase_done("first chunk")
    parts = " | ".join(f"{name}: {seconds:.2f}" for name, seconds in _phases)
    log(f"startup | first step: {_last - _STARTED:.2f} s after process start | {parts}")
