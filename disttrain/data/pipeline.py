"""The tf.data input pipeline: files in, uint8 batches out.

The CPU decodes (training crops inside the JPEG decoder) and ships uint8 batches; the
cast, normalisation and flips run inside the step on the worker's device
(`prepare_on_device`), so a GPU worker does its own augmentation and the host moves a
quarter of the bytes float32 would cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from disttrain.config import DataConfig
from disttrain.data.builtin import ensure_builtin_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """The data cannot be used; the message names the folder or file."""


@dataclass(frozen=True)
class Split:
    files: list[str]
    labels: list[int]
    class_names: list[str]


def dataset_root(config: DataConfig) -> Path:
    if config.source == "builtin":
        return ensure_builtin_dataset(config.root or None)
    root = Path(config.root)
    if not config.root or not root.is_dir():
        raise DataError(
            f"data.root: {config.root!r} is not a folder; expected <root>/<split>/<class>/*.jpg"
        )
    return root


def list_split(config: DataConfig, split: str) -> Split:
    """Every image file of a split with its label; classes are the sorted folder names."""
    folder = dataset_root(config) / split
    if not folder.is_dir():
        raise DataError(f"data split folder {str(folder)!r} does not exist")
    class_names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(class_names):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(path))
                labels.append(label)
    if not files:
        raise DataError(
            f"data split folder {str(folder)!r} holds no images "
            f"({', '.join(IMAGE_SUFFIXES)}) under class folders"
        )
    return Split(files, labels, class_names)


def train_dataset(
    config: DataConfig, split: Split, num_shards, shard_index, seed: int | None = None
) -> tf.data.Dataset:
    """An endless, shuffled dataset of (uint8 images, int32 labels) for one worker's shard.

    `num_shards` and `shard_index` may be tensors: under ParameterServerStrategy the
    index is only known on the worker itself (see `worker_index_on_worker`).
    """
    ds = tf.data.Dataset.from_tensor_slices((split.files, split.labels))
    ds = ds.shard(num_shards, shard_index)
    ds = ds.shuffle(len(split.files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(
        lambda f, y: (_decode_random_crop(f, config.image_size), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    return ds.batch(config.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(
    config: DataConfig, split: Split, batch_size: int, max_examples: int = 0
) -> tf.data.Dataset:
    """One deterministic pass over the split, centrally cropped."""
    ds = tf.data.Dataset.from_tensor_slices((split.files, split.labels))
    if max_examples:
        ds = ds.take(max_examples)
    ds = ds.map(
        lambda f, y: (_decode_central(f, config.image_size), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def prepare_on_device(images: tf.Tensor, training: bool) -> tf.Tensor:
    """uint8 -> float in [-1, 1], plus random flips when training; runs inside the step."""
    images = tf.cast(images, tf.float32) / 127.5 - 1.0
    if training:
        images = tf.image.random_flip_left_right(images)
    return images


def worker_index_on_worker() -> tf.Tensor:
    """This worker's index, read on the worker from its own TF_CONFIG.

    ParameterServerStrategy traces the dataset function once on the chief and runs the
    same graph on every worker (its InputContext always says pipeline 0 of 1), so a
    per-worker shard index cannot be a Python value. Each worker process has its own
    TF_CONFIG in `/proc/self/environ`; reading it inside the graph gives each worker its
    own shard. Where that file does not exist every worker reads the whole split.
    """
    if not Path("/proc/self/environ").exists():
        return tf.constant(0, tf.int64)
    environ = tf.io.read_file("/proc/self/environ")
    index = tf.strings.regex_replace(
        environ, r'(?s).*TF_CONFIG=[^\x00]*"task"\s*:\s*\{[^}]*"index"\s*:\s*(\d+).*', r"\1"
    )
    return tf.strings.to_number(index, tf.int64)


def _decode_random_crop(path: tf.Tensor, size: int, min_area: float = 0.6) -> tf.Tensor:
    data = tf.io.read_file(path)
    shape = tf.image.extract_jpeg_shape(data)
    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([1, 0, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=(0.8, 1.25),
        area_range=(min_area, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    image = tf.image.decode_and_crop_jpeg(data, window, channels=3)
    return _resize_uint8(image, size)


def _decode_central(path: tf.Tensor, size: int, fraction: float = 0.875) -> tf.Tensor:
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    if fraction < 1.0:
        image = tf.image.central_crop(image, fraction)
    return _resize_uint8(image, size)


def _resize_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.image.resize(image, (size, size), antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    image.set_shape((size, size, 3))
    return image
