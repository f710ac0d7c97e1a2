"""Write a few checkpoints under ParameterServerStrategy, in a process of its own; prints JSON.

`python tests/checkpoint_writes_under_pss.py traced|plain SAVES`: an in-process cluster (one
worker, one ps) holds the variables on the ps, as the chief's are. `traced` writes through
train.traced_checkpoint_writer, as the chief does; `plain` calls `checkpoint.write(str)`, as
it did before. Prints how many TensorFlow retracing warnings were logged, the writer's trace
count (traced only), and whether the last checkpoint holds the last values written.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from disttrain.train import traced_checkpoint_writer

sys.path.insert(0, str(Path(__file__).parent))
from recipe_under_strategy import parameter_server_strategy  # noqa: E402


class RetracingWarnings(logging.Handler):
    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "triggered tf.function retracing" in record.getMessage()


def main(which: str, saves: int) -> None:
    warnings = RetracingWarnings()
    logging.getLogger("tensorflow").addHandler(warnings)
    strategy, _coordinator = parameter_server_strategy()
    with strategy.scope():
        weights = tf.Variable(np.zeros(100, np.float32))
        step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(weights=weights, step=step)
    writer = traced_checkpoint_writer(checkpoint) if which == "traced" else None
    with tempfile.TemporaryDirectory() as folder:
        for number in range(1, saves + 1):
            weights.assign(np.full(100, number, np.float32))
            step.assign(number)
            prefix = Path(folder) / f"ckpt-{number}" / "ckpt"  # a new prefix every time
            if writer is None:
                checkpoint.write(str(prefix))
            else:
                prefix.parent.mkdir()
                writer(tf.constant(str(prefix)))
        restored = tf.train.Checkpoint(weights=tf.Variable(np.zeros(100, np.float32)))
        restored.read(str(prefix)).expect_partial()
        last_values = bool(np.all(restored.weights.numpy() == saves))
    print(
        json.dumps(
            {
                "retracing_warnings": warnings.count,
                "traces": writer.experimental_get_tracing_count() if writer else None,
                "last_checkpoint_holds_last_values": last_values,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
