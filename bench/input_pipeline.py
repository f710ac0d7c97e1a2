"""Our training input pipeline vs a naive one and vs the decode-only ceiling, same files.

Writes photo-sized JPEGs once (default 1200 at 320x240, quality 90: ImageNet-like
work per image), then measures, in one run on those files:
  1. naive:    sequential map (read, full decode, crop, resize), no prefetch, deterministic
  2. ours:     train_dataset (crop inside the decoder, parallel, non-deterministic, prefetch)
  3. ceiling:  parallel `decode_jpeg` of the same bytes held in memory, nothing else
  4. decode_and_crop_jpeg vs decode-then-crop on the same random windows (sequential)
Prints images/s and the ratios: ours/naive (target >= 1.8 on 2 cores), ours/ceiling
(target >= 0.8), crop-in-decoder/decode-then-crop (target >= 1.3).

    .venv/bin/python bench/input_pipeline.py [--images 1200] [--passes 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from disttrain.config import DataConfig
from disttrain.data.pipeline import list_split, resize_uint8, train_dataset

IMAGE_SIZE = 224
BATCH = 64


def write_images(root: Path, count: int) -> None:
    """Smooth gradients plus noise: JPEGs of a realistic size (~25 KB), 2 classes."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    for i in range(count):
        folder = root / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.stack([x * rng.uniform(0.3, 0.8), y * rng.uniform(0.3, 1), x + y], -1) % 256
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def images_per_second(dataset: tf.data.Dataset, images: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # warm-up: tracing, thread pools
    start, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += int(tf.shape(batch[0] if isinstance(batch, tuple) else batch)[0])
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def naive(files: list[str]) -> tf.data.Dataset:
    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.image.random_crop(image, (200, 200, 3))
        return resize_uint8(image, IMAGE_SIZE)

    options = tf.data.Options()
    options.autotune.enabled = False
    ds = tf.data.Dataset.from_tensor_slices(files).repeat().map(load).batch(BATCH)
    return ds.with_options(options)


def ceiling(files: list[str]) -> tf.data.Dataset:
    blobs = [Path(f).read_bytes() for f in files]
    ds = tf.data.Dataset.from_tensor_slices(blobs).repeat()
    ds = ds.map(
        lambda data: tf.io.decode_jpeg(data, channels=3),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)


def crop_comparison(files: list[str], count: int) -> tuple[float, float]:
    """(decode_and_crop_jpeg images/s, decode-then-crop images/s) on identical windows."""
    blobs = [Path(f).read_bytes() for f in files[:count]]
    windows = []
    for data in blobs:
        shape = tf.image.extract_jpeg_shape(data)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape,
            tf.zeros([1, 0, 4]),
            area_range=(0.3, 0.6),
            min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True,
        )
        windows.append([int(begin[0]), int(begin[1]), int(size[0]), int(size[1])])

    @tf.function
    def in_decoder(data, window):
        return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    @tf.function
    def after_decode(data, window):
        image = tf.io.decode_jpeg(data, channels=3)
        return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

    # Tensors, not Python bytes: a new Python value would retrace the function each call.
    tensors = [tf.constant(data) for data in blobs]
    windows = [tf.constant(window) for window in windows]
    rates = []
    for fn in (in_decoder, after_decode):
        fn(tensors[0], windows[0])
        start = time.perf_counter()
        for data, window in zip(tensors, windows):
            fn(data, window)
        rates.append(len(blobs) / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--passes", type=int, default=3, help="epochs measured per pipeline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-input-") as scratch:
        root = Path(scratch)
        write_images(root, args.images)
        config = DataConfig(
            source="image_folder", root=str(root), image_size=IMAGE_SIZE, batch_size=BATCH
        )
        split = list_split(config, "train")
        total = args.images * args.passes
        ours = images_per_second(train_dataset(config, split, 1, 0), total)
        plain = images_per_second(naive(split.files), total)
        top = images_per_second(ceiling(split.files), total)
        in_decoder, after = crop_comparison(split.files, min(args.images, 600))
    print(f"naive pipeline          : {plain:8.0f} images/s")
    print(f"our training pipeline   : {ours:8.0f} images/s")
    print(f"decode-only ceiling     : {top:8.0f} images/s")
    print(f"decode_and_crop_jpeg    : {in_decoder:8.0f} images/s")
    print(f"decode then crop        : {after:8.0f} images/s")
    print(f"ours / naive            : {ours / plain:5.2f}x  (target >= 1.8)")
    print(f"ours / decode ceiling   : {ours / top:5.2f}   (target >= 0.8)")
    print(f"crop in decoder / after : {in_decoder / after:5.2f}x  (target >= 1.3)")


if __name__ == "__main__":
    main()
