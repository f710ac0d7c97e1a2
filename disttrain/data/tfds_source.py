"""TensorFlow Datasets by name (`data.tfds_name`) from a prepared `data.tfds_data_dir`.

Nothing is downloaded here: the data must already be prepared (`tfds build`, or
`tfds.builder(name).download_and_prepare()` on a machine with network). The images are
read still encoded (`SkipDecoding`), so they go through the same cropping decoder as every
other source.

TensorFlow and tensorflow_datasets are imported inside the functions: sources.py imports
this module, and listing any other source (the launcher's check before submit) must not
load them.
"""

from __future__ import annotations

from disttrain.config import DataConfig
from disttrain.data.split import DataError, Split

IMAGE_KEY, LABEL_KEY = "image", "label"


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds  # here, not at the top: see the module docstring

    if not name:
        raise DataError("data.tfds_name: empty; accepted: a TensorFlow Datasets name")
    try:
        return tfds.builder(name, data_dir=data_dir or None)
    except Exception as exc:  # tfds raises its own types for unknown names
        raise DataError(f"data.tfds_name: {name!r} is not usable: {exc}") from None


def tfds_split(config: DataConfig, split: str) -> Split:
    builder = _builder(config.tfds_name, config.tfds_data_dir)
    features = builder.info.features
    if IMAGE_KEY not in features or LABEL_KEY not in features:
        raise DataError(
            f"data.tfds_name: {config.tfds_name!r} has features {sorted(features)}; "
            f"accepted: datasets with {IMAGE_KEY!r} and {LABEL_KEY!r}"
        )
    count = _split_size(builder, split)
    if count == 0:
        raise DataError(f"data: TFDS {config.tfds_name!r} split {split!r} is empty")
    shape = "x".join("?" if d is None else str(d) for d in features[IMAGE_KEY].shape)
    return Split(
        "tfds",
        split,
        list(features[LABEL_KEY].names),
        count,
        [],
        [],
        f"{shape} (dataset info)",
        tfds_name=config.tfds_name,
        tfds_data_dir=config.tfds_data_dir,
    )


def _split_size(builder, split: str) -> int:
    """Examples in the split (-1 when the dataset carries no split metadata)."""
    splits = builder.info.splits
    if not splits:
        return -1
    try:
        return int(splits[split].num_examples)
    except (KeyError, ValueError):
        raise DataError(
            f"data: TFDS {builder.name!r} has no split {split!r}; "
            f"splits: {', '.join(sorted(splits))}"
        ) from None


def tfds_records(split: Split):
    """(encoded image, int32 label) for every example of the split, in stored order."""
    import tensorflow as tf  # here, not at the top: see the module docstring
    import tensorflow_datasets as tfds

    builder = _builder(split.tfds_name, split.tfds_data_dir)
    dataset = builder.as_dataset(
        split=split.name, decoders={IMAGE_KEY: tfds.decode.SkipDecoding()}, shuffle_files=False
    )
    return dataset.map(
        lambda example: (example[IMAGE_KEY], tf.cast(example[LABEL_KEY], tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
