"""The local launcher's console: every task's lines (less the noise), and on a terminal one
live line for the job — step/total, examples/s, ETA and the last evaluation — that stays
below the lines scrolling above it. Without a terminal the lines are printed as they come,
and nothing else: a pipe or CI log stays grep-friendly. The task logs get every line.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from disttrain.progress import BELOW_WARNING, parse_eval_line, parse_train_line

# Lines every TensorFlow process prints twice at start-up, whatever TF_CPP_MIN_LOG_LEVEL says:
# 4 per task, 20 on a laptop job's console before its first useful line.
STARTUP_BANNERS = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"] oneDNN custom operations are on.",
)
# Library noise that repeats without telling a user anything: the coordinator's clean-up
# RPCs to servers that already stopped (four lines each, dozens at the end of every job)
# and TensorFlow's retracing advice.
CONSOLE_NOISE = (
    *STARTUP_BANNERS,
    b"Failed to remove function remotely",
    b"triggered tf.function retracing",
)
# The lines gRPC adds below a noisy one: hidden only right after it, so the same words in
# a real error's traceback still reach the console.
NOISE_CONTINUATIONS = (
    b"Additional GRPC error information from remote target",
    b":UNKNOWN:Error received from peer",
    b"This could happen if the remote target has been disconnected from the client.",
)

# Multi-line records that repeat an error the chief reports itself a moment later (an
# `error:` line or its traceback): the coordinator's log of a failed closure, once per
# closure, and a worker's copy of the error it sent back, as gRPC logs it when it is long.
NOISE_BLOCKS = (
    b"encountered the following error when processing closure",
    b"] Truncated error message:",
)
# The first line of the next record, which ends such a block: one of disttrain's own log
# lines (`area | ...`, after its time), absl's `LEVEL:logger:`, glog's `E0000 `, an `error:`
# line, a traceback.
RECORD_START = re.compile(rb"^(\d{4}-\d\d-\d\d|[\w-]+ \| |[EWIF]\d{4} |[A-Z]+:\w|error:|Traceback)")


class LineFilter:
    """Which of one task's output lines the console shows: all with -v (`verbosity`
    "verbose"), all but the noise by default ("normal"), and with -q ("quiet") only what is
    not an INFO or DEBUG log line: warnings, errors, tracebacks."""

    def __init__(self, verbosity: str = "normal") -> None:
        self.verbosity, self.in_noise, self.in_block = verbosity, False, False

    def shows(self, line: bytes) -> bool:
        continued = self.in_noise and any(c in line for c in NOISE_CONTINUATIONS)
        if self.in_block and not RECORD_START.match(line):
            continued = True
        else:
            self.in_block = any(start in line for start in NOISE_BLOCKS)
        self.in_noise = continued or self.in_block
        self.in_noise = self.in_noise or any(noise in line for noise in CONSOLE_NOISE)
        if self.verbosity == "verbose":
            return True
        if self.verbosity == "quiet" and BELOW_WARNING.match(line):
            return False
        return not self.in_noise


@dataclass
class JobLine:
    """The job's progress as the tasks last reported it."""

    name: str
    train: dict | None = None  # the chief's last progress line, parsed
    evaluation: dict | None = None  # the evaluator's last result line, parsed

    def read(self, text: str) -> None:
        self.train = parse_train_line(text) or self.train
        self.evaluation = parse_eval_line(text) or self.evaluation

    def render(self) -> str:
        if not self.train:
            return f"job {self.name} | starting"
        train = self.train
        line = (
            f"job {self.name} | step {train['step']}/{train['total_steps']} | "
            f"{train['examples_per_second']:.1f} ex/s | eta {train['eta']}"
        )
        if self.evaluation:
            line += f" | eval acc {self.evaluation['accuracy']:.4f} @{self.evaluation['step']}"
        return line


class JobConsole:
    """Prints the tasks' lines; on a terminal, under them, the live job line (rich)."""

    def __init__(self, name: str, stream=None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.job = JobLine(name)
        terminal = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.live = (
            _live_display(self.stream, self.job) if (terminal if live is None else live) else None
        )

    def __enter__(self) -> JobConsole:
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.stop()

    def show(self, prefix: str, line: bytes) -> None:
        """One task line (with its newline), prefixed with the task's name."""
        text = line.decode(errors="replace")
        self.job.read(text)
        if not self.live:
            self._write(prefix, line)
            return
        from rich.text import Text

        self.live.console.print(Text(prefix + text.rstrip("\n")), soft_wrap=True)
        self.live.update(_one_line(self.job.render()), refresh=True)

    def _write(self, prefix: str, line: bytes) -> None:
        buffer = getattr(self.stream, "buffer", None)  # bytes as the task wrote them
        if buffer is not None:
            buffer.write(prefix.encode() + line)
        else:
            self.stream.write(prefix + line.decode(errors="replace"))
        self.stream.flush()


def _live_display(stream, job: JobLine):
    from rich.console import Console
    from rich.live import Live

    console = Console(file=stream, force_terminal=True, highlight=False)
    return Live(_one_line(job.render()), console=console, auto_refresh=False, transient=True)


def _one_line(text: str):
    """The job line never wraps: a narrow terminal cuts it with an ellipsis."""
    from rich.text import Text

    return Text(text, no_wrap=True, overflow="ellipsis")
