"""TFRecord shards: `disttrain data convert` writes them from an image folder; the pipeline
reads them.

A shard holds the encoded image bytes as they were on disk (no re-encoding: the training
decoder still crops inside the JPEG), the label and the source path. Files are shuffled
once with a fixed seed before sharding, so every shard mixes the classes and a worker
that reads a few shards still sees them all. Every image is decoded once during
conversion by the same decoder training uses; files it cannot read are left out (logged
with their path) or, with `--on-bad-file fail`, stop the conversion.

Beside the shards, classes.json keeps the class names, the shard files of each split with
their example counts, and the stored image shape.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from disttrain.data.decode import find_undecodable
from disttrain.data.sources import (
    CLASSES_FILE,
    first_file_shape,
    is_visible_folder,
    list_image_folder,
    require_folder,
)
from disttrain.data.split import DataError
from disttrain.progress import CountProgress

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/label": tf.io.FixedLenFeature([], tf.int64),
    "image/path": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def convert_image_folder(
    root: Path,
    out_dir: Path,
    shards: int,
    on_bad_file: str,
    log: Callable[[str], None],
) -> dict:
    """Write `<out_dir>/<split>-NNNNN-of-MMMMM.tfrecord` for each split folder of `root`."""
    require_folder(root, "data convert: SOURCE")
    splits = sorted(p.name for p in root.iterdir() if is_visible_folder(p))
    if not splits:
        raise DataError(f"data convert: {str(root)!r} has no split folders (<root>/<split>/...)")
    # Everything is listed and checked first: a bad input leaves OUT_DIR untouched.
    class_names, examples_of, skipped_of = _checked_examples(root, splits, on_bad_file, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict = {"classes": class_names, "splits": {}, "image_shape": "unknown"}
    for split, examples in examples_of.items():
        progress = CountProgress(f"data convert | {split}", len(examples), "images", log)
        meta["splits"][split] = write_shards(examples, out_dir, split, shards, progress.add)
        progress.finish()
        log(
            f"data convert | {split} | {len(examples)} images ({skipped_of[split]} skipped) | "
            f"shard files: {len(meta['splits'][split]['files'])} | {out_dir}"
        )
    meta["image_shape"] = _first_shape(root, splits[0])
    (out_dir / CLASSES_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def _checked_examples(root: Path, splits: list[str], on_bad_file: str, log):
    """Class names, then (path, label) pairs and skipped-file counts per split."""
    examples_of, skipped_of, class_names = {}, {}, None
    for split in splits:
        files, labels, names = list_image_folder(root / split)
        if class_names not in (None, names):
            raise DataError(
                f"data convert: split {split!r} has classes {names} but split "
                f"{splits[0]!r} has {class_names}; they must match"
            )
        class_names = names
        bad = set(find_undecodable(files))
        for path in sorted(bad):
            if on_bad_file == "fail":
                raise DataError(f"data convert: {path!r} is not a decodable image")
            log(f"data convert | bad image file skipped | {path}")
        examples_of[split] = [(f, y) for f, y in zip(files, labels) if f not in bad]
        skipped_of[split] = len(bad)
        if not examples_of[split]:
            raise DataError(f"data convert: split folder {str(root / split)!r} has no images")
    return class_names, examples_of, skipped_of


def write_shards(
    examples: list[tuple[str, int]],
    out_dir: Path,
    split: str,
    shards: int,
    written: Callable[[], None] = lambda: None,
) -> dict:
    """Write the examples round-robin into at most `shards` files; their names and counts.
    `written` is called after each example (progress)."""
    examples = list(examples)
    random.Random(0).shuffle(examples)
    shards = max(1, min(shards, len(examples)))
    names = [f"{split}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    counts = [0] * shards
    writers = [tf.io.TFRecordWriter(str(out_dir / name)) for name in names]
    try:
        for i, (path, label) in enumerate(examples):
            writers[i % shards].write(_example(path, label).SerializeToString())
            counts[i % shards] += 1
            written()
    finally:
        for writer in writers:
            writer.close()
    return {"files": names, "counts": counts}


def _example(path: str, label: int) -> tf.train.Example:
    data = Path(path).read_bytes()
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        "image/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image/path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _first_shape(root: Path, split: str) -> str:
    files, _, _ = list_image_folder(root / split)
    if not files:
        return "unknown"
    return first_file_shape(files[0]).replace(" (first file)", " (first image)")


def tfrecord_records(files: list[str], num_shards, shard_index) -> tf.data.Dataset:
    """(encoded image, int32 label) of one worker's part of the shard files.

    With at least as many shard files as workers each worker reads whole files of its own
    (no byte is read twice); with fewer, every worker reads all files and keeps every
    n-th record.
    """
    names = tf.data.Dataset.from_tensor_slices(files)
    by_file = isinstance(num_shards, int) and len(files) >= num_shards
    if by_file:
        names = names.shard(num_shards, shard_index)
    records = names.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if not by_file:
        records = records.shard(num_shards, shard_index)
    return records.map(_parse, num_parallel_calls=tf.data.AUTOTUNE)


def _parse(record: tf.Tensor):
    example = tf.io.parse_single_example(record, FEATURES)
    return example["image/encoded"], tf.cast(example["image/label"], tf.int32)
