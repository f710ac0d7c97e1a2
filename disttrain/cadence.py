"""When the chief saves a checkpoint: at every `checkpoint.every_steps`-th step, and also
once `checkpoint.every_seconds` have passed since the last save.

The step cadence puts checkpoints on round steps (the loop sizes its chunks to land on
them). The time cadence bounds how old the newest checkpoint can get while steps are slow
or a run is short, so the evaluator sees progress early and a restart loses little.
No TensorFlow here; the clock is injected, so the decision is tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def checkpoint_due(
    step: int, every_steps: int, seconds_since_save: float, every_seconds: float | None
) -> bool:
    """Whether to save once `step` is reached: a multiple of `every_steps`, or
    `every_seconds` (0 or None: off) have passed since the last save."""
    if step % every_steps == 0:
        return True
    return bool(every_seconds) and seconds_since_save >= every_seconds


class CheckpointCadence:
    """`checkpoint_due` with the time since the last save kept: it counts from the
    cadence's creation (the loop's start) until the first `saved()`."""

    def __init__(
        self,
        every_steps: int,
        every_seconds: float | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.every_steps, self.every_seconds, self.clock = every_steps, every_seconds, clock
        self.last_save = clock()

    def steps_to_boundary(self, step: int) -> int:
        """Steps from `step` to the next multiple of every_steps: no chunk crosses one."""
        return self.every_steps - step % self.every_steps

    def due(self, step: int) -> bool:
        return checkpoint_due(
            step, self.every_steps, self.clock() - self.last_save, self.every_seconds
        )

    def saved(self) -> None:
        """A save just ended: the seconds count from now (a slow save is not training time)."""
        self.last_save = self.clock()
