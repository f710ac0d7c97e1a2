"""Reading TensorBoard event files back, as the tests check what a run logged."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf


def scalars(events_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of one scalar in a folder of TensorBoard event files (a step logged
    twice, as after a restart, keeps its last value)."""
    found = {}
    for path in sorted(events_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = float(tf.make_ndarray(value.tensor))
    return found
