"""Log lines and progress: every task's lines go through the `disttrain` logger (a time,
a level, then `area | what | ...`); long work shows a bar on a terminal, one grep-friendly
line every few seconds elsewhere.

The chief's `train | step: ...` and the evaluator's `eval | step: ...` lines are formatted
here and parsed back here (`parse_train_line`, `parse_eval_line`): `disttrain status`
reads the last ones from a task's log, and a format changed on one side changes the other.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

LOGGER = logging.getLogger("disttrain")
# The level, set by the CLI's -v/-q and inherited by the tasks a local launcher starts.
LEVEL_ENV = "DISTTRAIN_LOG_LEVEL"
LINE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
# A line of LINE_FORMAT below WARNING, as a launcher's console sees it (-q hides these).
BELOW_WARNING = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (?:DEBUG|INFO) ")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged (a test may swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: str | None = None) -> None:
    """One handler on stdout, at `level` (else $DISTTRAIN_LOG_LEVEL, else INFO)."""
    level = (level or os.environ.get(LEVEL_ENV) or "INFO").upper()
    if not LOGGER.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter(LINE_FORMAT, datefmt=TIME_FORMAT))
        LOGGER.addHandler(handler)
        LOGGER.propagate = False
    known = isinstance(logging.getLevelName(level), int)  # a name such as DEBUG or WARNING
    LOGGER.setLevel(level if known else "INFO")


def log(message: str) -> None:
    """One log line, flushed at once (task output is multiplexed by the launcher). A line
    that says `area | WARNING | ...` is logged at WARNING, so -q keeps it."""
    if not LOGGER.handlers:
        configure_logging()
    level = logging.WARNING if " | WARNING | " in message else logging.INFO
    LOGGER.log(level, message)


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
        self.bar_open = False  # a terminal's bar line not ended yet

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
            self.bar_open = not force
            if force:
                self.stream.write("\n")
            self.stream.flush()
        elif self.stream is sys.stdout:
            log(line)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()
        return line

    def end_line(self) -> None:
        """End the bar a terminal shows (a forced update with nothing new to report)."""
        if self.bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self.bar_open = False

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

    def _bar(self, step: int) -> str:
        return _bar(step, self.total)


class CountProgress:
    """Work counted in items (files copied, images written): on a terminal a bar redrawn in
    place with its ETA; elsewhere (pods, CI, a launcher's multiplexed output) the same
    fields as one grep-friendly line every `every_seconds`. `finish` always logs a line.
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        log_line=log,
        stream=None,
        every_seconds: float = 2.0,
    ):
        self.what, self.total, self.unit = what, total, unit
        self.log_line, self.every = log_line, every_seconds
        self.stream = stream or sys.stdout
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.bytes = 0, 0
        self.started = self.last = time.monotonic()

    def add(self, items: int = 1, size: int = 0) -> None:
        self.done += items
        self.bytes += size
        now = time.monotonic()
        if now - self.last < (0.2 if self.is_tty else self.every):
            return
        self.last = now
        if self.is_tty:
            self.stream.write(f"\r{self.what} | {_bar(self.done, self.total)} {self.line(now)}")
            self.stream.flush()
        else:
            self.log_line(f"{self.what} | {self.line(now)}")

    def finish(self) -> None:
        if self.is_tty:
            self.stream.write("\r\033[K")  # the bar gives way to the final line
        self.log_line(f"{self.what} | done | {self.line(time.monotonic())}")

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        percent = 100 * self.done / max(self.total, 1)
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        found = f"{self.done}/{self.total} {self.unit} ({percent:.0f}%)"
        if self.bytes:
            found += f" | {megabytes(self.bytes)} | {megabytes(self.bytes / elapsed)}/s"
        else:
            found += f" | {self.done / elapsed:.1f} {self.unit}/s"
        return found + f" | eta: {format_duration(eta)}"


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def megabytes(count: float) -> str:
    return f"{count / 1e6:.1f} MB"
