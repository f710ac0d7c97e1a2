"""The local launcher's console: every task's lines (less the noise), and on a terminal one
live line for the job — step/total, examples/s, ETA and the last evaluation — that stays
below the lines scrolling above it. Without a terminal the lines are printed as they come,
and nothing else: a pipe or CI log stays grep-friendly. The task logs get every line.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

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
# What the chief's and the evaluator's progress lines say (disttrain/progress.py, evaluator).
TRAIN_LINE = re.compile(
    r"train \| step:\s*(?P<step>\d+)/(?P<total>\d+) .*examples/s:\s*(?P<rate>[\d.]+) "
    r"\| eta: (?P<eta>[\d:]+)"
)
EVAL_LINE = re.compile(r"eval \| step:\s*(?P<step>\d+) .*accuracy: (?P<accuracy>[\d.]+)")


class NoiseFilter:
    """Which of one task's output lines the console shows."""

    def __init__(self) -> None:
        self.in_noise = False

    def shows(self, line: bytes) -> bool:
        continued = self.in_noise and any(c in line for c in NOISE_CONTINUATIONS)
        self.in_noise = continued or any(noise in line for noise in CONSOLE_NOISE)
        return not self.in_noise


@dataclass
class JobLine:
    """The job's progress as the tasks last reported it."""

    name: str
    step: int = 0
    total: int = 0
    rate: str = ""
    eta: str = ""
    accuracy: str = ""
    eval_step: int = 0

    def read(self, text: str) -> None:
        if found := TRAIN_LINE.search(text):
            self.step, self.total = int(found["step"]), int(found["total"])
            self.rate, self.eta = found["rate"], found["eta"]
        elif found := EVAL_LINE.search(text):
            self.accuracy, self.eval_step = found["accuracy"], int(found["step"])

    def render(self) -> str:
        if not self.total:
            return f"job {self.name} | starting"
        line = f"job {self.name} | step {self.step}/{self.total} | {self.rate} ex/s"
        line += f" | eta {self.eta}"
        if self.accuracy:
            line += f" | eval acc {self.accuracy} @{self.eval_step}"
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
