"""The tf.data input pipeline: a listed split in, uint8 batches out.

The CPU decodes (decode.py: training crops inside the JPEG decoder, so the pixels
outside the crop window are never decoded) and ships uint8 batches; the cast,
normalisation and flips run inside the step on the worker's device (`prepare_on_device`),
so a GPU worker does its own augmentation and the host moves a quarter of the bytes
float32 would cost.

Bad files. `ignore_errors` alone would drop a corrupt file without saying which, so image
files are decoded one batch of paths at a time: each batch's survivors are compared with
its paths, and a file that did not decode becomes a placeholder with a negative label (the
step masks it and counts the first sighting). Its path is printed once, in the first
epoch, by the worker that reads it; with `data.on_bad_file: fail` the batch fails instead,
naming the path. A batch of paths becomes exactly one batch of images, so the pixels are
copied once into the batch and never re-sliced (bench/input_pipeline.py measures it).
TFRecord shards and TFDS data were decoded when they were written, so they take the plain
path, where a decode error fails loudly.

Small splits. Below some thousands of pixels per image the per-file work (a nested
dataset element, a function call, a decoder set up for a few blocks) costs more than the
decode itself, and on a CPU worker it comes out of the model's step. A split that fits in
`data.cache_mib` once decoded is therefore decoded once (whole, resized to image_size) and
kept in memory; batches are gathered from it uncropped and the step crops them on the
worker's device (`random_crops`, one vectorised `crop_and_resize` per batch), like the flips.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from disttrain.config import DataConfig
from disttrain.data.decode import (
    CROP_ASPECT,
    decode_central_crop,
    decode_random_crop,
    decode_whole,
)
from disttrain.data.split import Split
from disttrain.data.tfds_source import tfds_records
from disttrain.data.tfrecords import tfrecord_records
from disttrain.failures import BAD_FILE_MESSAGE

AUTOTUNE = tf.data.AUTOTUNE
# A bad file's label: first sighting on this worker (counted) and later epochs (not).
BAD_FILE_FIRST_SEEN = -1
BAD_FILE_SEEN_AGAIN = -2
# Sources read as image files (decoded here, with the bad-file checks).
FOLDER_SOURCES = ("builtin", "image_folder")
# Files per decode task while filling the decoded cache of a small split.
CACHE_DECODE_BATCH = 256
# Most bad-file paths one message names.
PATHS_SHOWN = 1000


def train_dataset(
    config: DataConfig, split: Split, num_shards, shard_index, seed: int | None = None
) -> tf.data.Dataset:
    """An endless, shuffled dataset of (uint8 images, int32 labels) for one worker's shard.

    `shard_index` may be a tensor: under ParameterServerStrategy the index is only known
    on the worker itself (see `worker_index_on_worker`).
    """
    size = config.image_size
    decode = lambda data: decode_random_crop(data, size, config.crop_min_area)  # noqa: E731
    if split.source == "synthetic":
        return synthetic_batches(config, split, config.batch_size, seed).repeat()
    if split.source in ("tfrecord", "tfds"):
        records = _sharded_records(split, num_shards, shard_index)
        records = records.shuffle(config.shuffle_buffer, seed=seed).repeat()
        images = records.map(
            lambda data, y: (decode(data), y), num_parallel_calls=AUTOTUNE, deterministic=False
        )
        batches = images.batch(config.batch_size, drop_remainder=True)
    elif decodes_once(config, split):
        batches = _cached_batches(config, split, num_shards, shard_index, seed)
    else:
        files = tf.data.Dataset.from_tensor_slices((split.files, split.labels))
        files = files.shard(num_shards, shard_index)
        files = files.shuffle(len(split.files), seed=seed, reshuffle_each_iteration=True)
        first_epoch = _shard_size(len(split.files), num_shards, shard_index)
        batches = _checked_batches(
            files.repeat(),
            config.batch_size,
            decode,
            size,
            first_epoch,
            config.on_bad_file,
            deterministic=False,
        )
        batches = batches.map(lambda images, labels: _full_batch(images, labels, config))
    return batches.prefetch(AUTOTUNE)


def eval_dataset(
    config: DataConfig,
    split: Split,
    batch_size: int,
    max_examples: int = 0,
    report_bad_files: bool = True,
) -> tf.data.Dataset:
    """One deterministic pass over the split, centrally cropped; bad files left out.

    `report_bad_files=False` keeps the pass quiet about them: an evaluator makes one pass
    per checkpoint and names a bad file only in its first.
    """
    size = config.image_size
    decode = lambda data: decode_central_crop(data, size)  # noqa: E731
    if split.source == "synthetic":
        count = max_examples or split.num_examples
        return synthetic_batches(config, split, count, seed=1).unbatch().batch(batch_size)
    if split.source in ("tfrecord", "tfds"):
        records = _sharded_records(split, 1, 0)
        if max_examples:
            records = records.take(max_examples)
        images = records.map(
            lambda data, y: (decode(data), y), num_parallel_calls=AUTOTUNE, deterministic=True
        )
        batches = images.batch(batch_size)
    else:
        files = tf.data.Dataset.from_tensor_slices((split.files, split.labels))
        if max_examples:
            files = files.take(max_examples)
        reported = len(split.files) if report_bad_files else 0  # elements that may report
        batches = _checked_batches(
            files, batch_size, decode, size, reported, config.on_bad_file, deterministic=True
        )
        batches = batches.map(_without_placeholders).filter(lambda _, labels: tf.size(labels) > 0)
    return batches.prefetch(AUTOTUNE)


def prepare_on_device(images: tf.Tensor, training: bool, flip: bool = True) -> tf.Tensor:
    """uint8 -> float in [-1, 1], plus random left-right flips when training with `flip`
    (`data.random_flip`); runs inside the step. Evaluation and the export never flip."""
    images = tf.cast(images, tf.float32) / 127.5 - 1.0
    if training and flip:
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


# --- small splits: decoded once, cropped per batch ---------------------------------------


def decodes_once(config: DataConfig, split: Split) -> bool:
    """Whether this split's training batches come uncropped from memory (small splits): the
    step must then crop them with `random_crops`."""
    decoded_bytes = len(split.files) * config.image_size**2 * 3
    return split.source in FOLDER_SOURCES and decoded_bytes <= config.cache_mib * 2**20


def random_crops(images: tf.Tensor, min_area: float) -> tf.Tensor:
    """A random crop of each uint8 image of a batch (`min_area` to all of it, aspect in
    CROP_ASPECT) resized back to its size; runs inside the step, on the worker's device."""
    count, size = tf.shape(images)[0], tf.shape(images)[1:3]
    area = tf.random.uniform([count], min_area, 1.0)
    log_aspect = tf.random.uniform([count], *np.log(CROP_ASPECT).tolist())
    height = tf.minimum(tf.sqrt(area / tf.exp(log_aspect)), 1.0)
    width = tf.minimum(tf.sqrt(area * tf.exp(log_aspect)), 1.0)
    top = tf.random.uniform([count]) * (1.0 - height)
    left = tf.random.uniform([count]) * (1.0 - width)
    boxes = tf.stack([top, left, top + height, left + width], axis=1)
    crops = tf.image.crop_and_resize(images, boxes, tf.range(count), size)
    return tf.ensure_shape(tf.cast(crops + 0.5, tf.uint8), images.shape)


def _cached_batches(
    config: DataConfig, split: Split, num_shards, shard_index, seed: int | None
) -> tf.data.Dataset:
    """Uncropped training batches of one shard decoded once into a single uint8 tensor.

    Bad files get their placeholders and their report while it is filled; each batch is
    then one gather from that tensor (no shuffle buffer of images, no per-image element).
    """
    size = config.image_size
    files = tf.data.Dataset.from_tensor_slices((split.files, split.labels))
    shard_files = _shard_size(len(split.files), num_shards, shard_index)
    decoded = _checked_batches(
        files.shard(num_shards, shard_index),
        CACHE_DECODE_BATCH,
        lambda data: decode_whole(data, size),
        size,
        shard_files,
        config.on_bad_file,
        deterministic=True,
    )
    whole_shard = decoded.unbatch().batch(len(split.files)).take(1)
    return whole_shard.flat_map(
        lambda images, labels: _batches_of(images, labels, shard_files, config, seed)
    )


def _batches_of(images, labels, shard_files, config: DataConfig, seed) -> tf.data.Dataset:
    """Endless batches drawn from `images` in a new random order every epoch."""
    order = tf.data.Dataset.range(tf.cast(tf.shape(labels)[0], tf.int64))
    order = order.shuffle(tf.shape(labels, tf.int64)[0], seed=seed, reshuffle_each_iteration=True)
    picks = order.repeat().enumerate().batch(config.batch_size, drop_remainder=True)
    # A gather is cheap: one call at a time, which also keeps epochs from overtaking
    # each other.
    return picks.map(
        lambda position, index: _gathered(images, labels, index, position, shard_files, config)
    )


def _gathered(images, labels, index, position, shard_files, config: DataConfig):
    """The picked images and labels; a bad file's placeholder met again is not "first seen"."""
    batch, size = config.batch_size, config.image_size
    picked = tf.gather(labels, index)
    seen_again = tf.logical_and(
        position >= tf.cast(shard_files, tf.int64), tf.equal(picked, BAD_FILE_FIRST_SEEN)
    )
    picked = tf.where(seen_again, tf.cast(BAD_FILE_SEEN_AGAIN, picked.dtype), picked)
    return (
        tf.ensure_shape(tf.gather(images, index), [batch, size, size, 3]),
        tf.ensure_shape(picked, [batch]),
    )


# --- bad files ---------------------------------------------------------------------------


def _checked_batches(
    files: tf.data.Dataset,
    batch_size: int,
    decode,
    size: int,
    first_epoch,
    on_bad_file: str,
    deterministic: bool,
) -> tf.data.Dataset:
    """(path, label) -> batches of (image, label), a bad file's label a negative marker.

    Every batch of paths becomes one batch of the same length; `first_epoch` is how many
    elements make up one pass (a bad file is reported and counted only there). Batches
    are decoded in parallel, each one by one thread.
    """
    path_batches = files.enumerate().batch(batch_size, drop_remainder=not deterministic)
    return path_batches.interleave(
        lambda position, example: _decode_batch(
            position, example, decode, size, first_epoch, on_bad_file
        ),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def _decode_batch(position, example, decode, size, first_epoch, on_bad_file) -> tf.data.Dataset:
    paths, labels = example
    decoded = tf.data.Dataset.from_tensor_slices((paths, labels)).map(
        lambda path, label: (decode(tf.io.read_file(path)), label, path)
    )
    # A batch whose every file failed still yields one (empty) set of survivors.
    empty = tf.data.Dataset.from_tensors(
        (
            tf.zeros([0, size, size, 3], tf.uint8),
            tf.zeros([0], labels.dtype),
            tf.zeros([0], tf.string),
        )
    )
    survivors = decoded.ignore_errors().batch(tf.size(paths, tf.int64)).concatenate(empty)
    return survivors.take(1).map(
        lambda images, good_labels, good_paths: _with_placeholders(
            images, good_labels, good_paths, paths, position, first_epoch, on_bad_file
        )
    )


def _with_placeholders(images, good_labels, good_paths, paths, position, first_epoch, on_bad_file):
    """The survivors, then one zero image per file that did not decode (negative label)."""
    missing = tf.logical_not(tf.reduce_any(tf.equal(paths[:, None], good_paths[None, :]), axis=1))
    in_first_epoch = position < tf.cast(first_epoch, tf.int64)
    if on_bad_file == "fail":
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(missing)),
            [BAD_FILE_MESSAGE, tf.boolean_mask(paths, missing)],
            summarize=PATHS_SHOWN,
        )
    else:
        check = _report_once(tf.boolean_mask(paths, tf.logical_and(missing, in_first_epoch)))

    def add_placeholders():
        bad_labels = tf.where(
            tf.boolean_mask(in_first_epoch, missing), BAD_FILE_FIRST_SEEN, BAD_FILE_SEEN_AGAIN
        )
        shape = tf.concat([tf.shape(bad_labels), tf.shape(images)[1:]], 0)
        return (
            tf.concat([images, tf.zeros(shape, tf.uint8)], 0),
            tf.concat([good_labels, tf.cast(bad_labels, good_labels.dtype)], 0),
        )

    with tf.control_dependencies([check]):
        # The common case (nothing missing) hands the batch on without another copy.
        return tf.cond(
            tf.reduce_any(missing), add_placeholders, lambda: (images, tf.identity(good_labels))
        )


def _full_batch(images, labels, config: DataConfig):
    """Restore the static batch shape that per-batch decoding leaves unknown (every
    training batch is full: placeholders keep bad files' places)."""
    batch, size = config.batch_size, config.image_size
    return tf.ensure_shape(images, [batch, size, size, 3]), tf.ensure_shape(labels, [batch])


def _without_placeholders(images, labels):
    keep = labels >= 0
    return tf.boolean_mask(images, keep), tf.boolean_mask(labels, keep)


def _report_once(first_seen_paths: tf.Tensor):
    def report():
        tf.print(
            "data | bad image file skipped (not decodable; data.on_bad_file: skip) |",
            first_seen_paths,
            summarize=PATHS_SHOWN,
            output_stream=sys.stdout,
        )
        return tf.constant(True)

    return tf.cond(tf.size(first_seen_paths) > 0, report, lambda: tf.constant(False))


def _shard_size(total: int, num_shards, shard_index) -> tf.Tensor:
    """Elements in shard `shard_index` of `total` split round-robin (`Dataset.shard`)."""
    n = tf.cast(num_shards, tf.int64)
    i = tf.cast(shard_index, tf.int64)
    return (tf.constant(total, tf.int64) - i + n - 1) // n


# --- record sources and synthetic data -------------------------------------------------


def _sharded_records(split: Split, num_shards, shard_index) -> tf.data.Dataset:
    """(encoded image, int32 label) of one shard of a TFRecord or TFDS split."""
    if split.source == "tfds":
        # Every worker reads the split's records and keeps its own: TFDS slicing needs a
        # Python index, which a PSS worker does not have (see worker_index_on_worker).
        return tfds_records(split).shard(num_shards, shard_index)
    return tfrecord_records(split.files, num_shards, shard_index)


def synthetic_batches(
    config: DataConfig, split: Split, count: int, seed: int | None
) -> tf.data.Dataset:
    """One cached batch of `count` random uint8 images and labels: no decode cost at all."""
    size, classes = config.image_size, len(split.class_names)
    # Stateless ops: a dataset function must not create variables (PSS traces it once).
    key = tf.constant([seed or 0, 0], tf.int64)
    images = tf.random.stateless_uniform([count, size, size, 3], key, 0, 256, tf.int32)
    labels = tf.random.stateless_uniform([count], key + 1, 0, classes, tf.int32)
    return tf.data.Dataset.from_tensors((tf.cast(images, tf.uint8), labels))
