"""What every published checkpoint must hold, whichever launcher and fault produced it."""

from __future__ import annotations

from pathlib import Path


def assert_each_checkpoint_holds_the_updates_of_its_step(run_dir: Path) -> None:
    """Nothing trained twice into the published state: in every checkpoint, the step
    counter, the optimizer's count of applied updates and the folder's step agree."""
    import tensorflow as tf

    folders = sorted((run_dir / "checkpoints").glob("ckpt-*"))
    assert folders
    for folder in folders:
        reader = tf.train.load_checkpoint(str(folder / "ckpt"))
        step = reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")
        updates = reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")
        assert int(step) == int(updates) == int(folder.name.removeprefix("ckpt-")), folder
