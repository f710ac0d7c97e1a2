"""Progress on the chief: a live bar on a terminal, one grep-friendly line elsewhere.

The chief's `train | step: ...` and the evaluator's `eval | step: ...` lines are formatted
here and parsed back here (`parse_train_line`, `parse_eval_line`): `disttrain status`
reads the last ones from a task's log, and a format changed on one side changes the other.
"""

from __future__ import annotations

import re
import sys
import time


def log(message: str) -> None:
    """One log line, flushed at once (task output is multiplexed by the launcher)."""
    print(message, file=sys.stdout, flush=True)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eval_line(result: dict) -> str:
    """The evaluator's line for one evaluated checkpoint (step, loss, accuracy, examples)."""
    return (
        f"eval | step: {result['step']:6d} | loss: {result['loss']:.4f} | "
        f"accuracy: {result['accuracy']:.4f} | examples: {result['examples']}"
    )


_TRAIN_LINE = re.compile(
    r"train \| step: +(?P<step>\d+)/(?P<total_steps>\d+) \| loss: (?P<loss>\S+) \| "
    r"accuracy: (?P<accuracy>\S+) \| examples/s: +(?P<examples_per_second>\S+) \| "
    r"eta: (?P<eta>[\d:]+)"
)
_EVAL_LINE = re.compile(
    r"eval \| step: +(?P<step>\d+) \| loss: (?P<loss>\S+) \| "
    r"accuracy: (?P<accuracy>\S+) \| examples: (?P<examples>\d+)"
)


def parse_train_line(line: str) -> dict | None:
    """The fields of a `Progress.line` (anywhere in `line`: a launcher may prefix it)."""
    found = _TRAIN_LINE.search(line)
    if not found:
        return None
    fields = found.groupdict()
    return {
        "step": int(fields["step"]),
        "total_steps": int(fields["total_steps"]),
        "loss": float(fields["loss"]),
        "accuracy": float(fields["accuracy"]),
        "examples_per_second": float(fields["examples_per_second"]),
        "eta": fields["eta"],
    }


def parse_eval_line(line: str) -> dict | None:
    """The fields of an `eval_line` (anywhere in `line`)."""
    found = _EVAL_LINE.search(line)
    if not found:
        return None
    fields = found.groupdict()
    return {
        "step": int(fields["step"]),
        "loss": float(fields["loss"]),
        "accuracy": float(fields["accuracy"]),
        "examples": int(fields["examples"]),
    }


class Progress:
    """Training progress: step, loss, accuracy, examples/s and ETA.

    On a terminal the bar is redrawn in place; otherwise (a pod, CI, the local launcher's
    multiplexed output) the same fields are printed as one line every `every_seconds`.
    """

    def __init__(self, start_step: int, total_steps: int, every_seconds: float, stream=None):
        self.start_step, self.total = start_step, total_steps
        self.every = every_seconds
        self.stream = stream or sys.stdout
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = self.last_print = time.monotonic()
        self.examples = 0

    def update(
        self, step: int, loss: float, accuracy: float, examples: int, force: bool = False
    ) -> str | None:
        """Record progress; returns the line when one was printed."""
        self.examples += examples
        now = time.monotonic()
        if not force and now - self.last_print < (0.5 if self.is_tty else self.every):
            return None
        self.last_print = now
        line = self.line(step, loss, accuracy, now)
        if self.is_tty:
            self.stream.write("\r" + self._bar(step) + " " + line)
            if force:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return line

    def rate(self, now: float | None = None) -> float:
        elapsed = (now or time.monotonic()) - self.started
        return self.examples / elapsed if elapsed > 0 else 0.0

    def line(self, step: int, loss: float, accuracy: float, now: float) -> str:
        done = step - self.start_step
        elapsed = now - self.started
        eta = elapsed / done * (self.total - step) if done > 0 else 0.0
        return (
            f"train | step: {step:6d}/{self.total} | loss: {loss:.4f} | "
            f"accuracy: {accuracy:.4f} | examples/s: {self.rate(now):8.1f} | "
            f"eta: {format_duration(eta)}"
        )

    def _bar(self, step: int, width: int = 20) -> str:
        filled = int(width * step / self.total) if self.total else width
        return "[" + "#" * filled + "." * (width - filled) + "]"
