"""A listed split and the error for unusable data: what every data module shares.

This module imports nothing from disttrain.data, so listing (sources), staging, TFDS and
the input pipeline can all depend on it without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass


class DataError(ValueError):
    """The data cannot be used; the message names the source, folder or file."""


@dataclass(frozen=True)
class Split:
    """One split of a source, as the input pipeline reads it.

    `files` are image files (with `labels`) for folder sources and TFRecord shards (with
    `shard_counts`, examples per shard) for tfrecord; tfds and synthetic need neither.
    """

    source: str
    name: str
    class_names: list[str]
    num_examples: int  # -1: unknown (a TFDS split without metadata)
    files: list[str]
    labels: list[int]
    image_shape: str  # what the stored images look like, for the start-up report
    shard_counts: list[int] = ()
    tfds_name: str = ""
    tfds_data_dir: str = ""
