"""Our training input pipeline vs a naive one and vs the decode-only ceiling, same files.

Writes photo-sized JPEGs once (default 1200 at 500x375, ImageNet's most common size,
quality 90), then measures, in one run on those files:
  1. naive:    sequential map (read, full decode, crop, resize), no prefetch, deterministic
  2. ours:     train_dataset (crop inside the decoder, parallel, non-deterministic, prefetch;
               data.cache_mib=0, since 1200 images would otherwise be decoded only once)
  3. ceiling:  parallel `decode_jpeg` of the same bytes held in memory, nothing else
  4. decode_and_crop_jpeg vs decode-then-crop on the same random windows, drawn as the
     training pipeline draws them (data.crop_min_area, default 0.08), each a sequential
     tf.data map (no Python call per image in either)
  5. where that saving comes from: decode_and_crop_jpeg of the top half and of the bottom
     half of each image, vs decoding it whole (rows above a window still cost their
     entropy decoding; rows below it cost nothing)
Each figure is the best of --rounds measurements taken in turn, so that a burst of load
from other processes on a shared machine hits every pipeline alike rather than one.
Prints images/s and the ratios: ours/naive (target >= 1.8 on 2 cores), ours/ceiling
(target >= 0.8), crop-in-decoder/decode-then-crop (target >= 1.3).

    .venv/bin/python bench/input_pipeline.py [--images 1200] [--passes 2] [--rounds 3]
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
from disttrain.data.decode import CROP_ASPECT, resize_uint8
from disttrain.data.pipeline import train_dataset
from disttrain.data.sources import list_split

IMAGE_SIZE = 224
BATCH = 64


def write_images(root: Path, count: int, width: int = 500, height: int = 375) -> None:
    """Smooth gradients plus noise: JPEGs of a realistic size, 2 classes."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
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


def crop_windows(blobs: list[bytes], min_area: float) -> tf.Tensor:
    """One random window [y, x, height, width] per image, as the training pipeline draws it."""
    windows = []
    for data in blobs:
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.image.extract_jpeg_shape(data),
            tf.zeros([1, 0, 4]),
            area_range=(min_area, 1.0),
            aspect_ratio_range=CROP_ASPECT,
            min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True,
        )
        windows.append([int(begin[0]), int(begin[1]), int(size[0]), int(size[1])])
    return tf.constant(windows)


def crop_pipelines(files: list[str], min_area: float) -> dict[str, tf.data.Dataset]:
    """Sequential maps over the same bytes and windows: crop inside the decoder, or after."""
    blobs = [Path(f).read_bytes() for f in files]
    pairs = tf.data.Dataset.from_tensor_slices((blobs, crop_windows(blobs, min_area)))

    def in_decoder(data, window):
        return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def after_decode(data, window):
        image = tf.io.decode_jpeg(data, channels=3)
        return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

    def counted(crop):
        # Crops differ in size, so they cannot be batched: each becomes its (dynamic, so
        # still decoded) height, and batches of heights keep Python out of the loop.
        heights = pairs.repeat().map(lambda data, window: tf.shape(crop(data, window))[0])
        return heights.batch(BATCH)

    def half(data, rows_above):
        height, width = tf.unstack(tf.image.extract_jpeg_shape(data)[:2])
        top = height // 2 if rows_above else 0
        return tf.image.decode_and_crop_jpeg(data, [top, 0, height // 2, width], channels=3)

    return {
        "in_decoder": counted(in_decoder),
        "after_decode": counted(after_decode),
        # Where the saving comes from: the same-sized top and bottom halves of each image.
        "whole": counted(lambda data, window: tf.io.decode_jpeg(data, channels=3)),
        "top_half": counted(lambda data, window: half(data, rows_above=False)),
        "bottom_half": counted(lambda data, window: half(data, rows_above=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--passes", type=int, default=2, help="epochs per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per pipeline")
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the JPEGs written")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-input-") as scratch:
        root = Path(scratch)
        width, height = (int(n) for n in args.size.split("x"))
        write_images(root, args.images, width, height)
        # The decoded cache off: these 1200 images would fit in it and never be decoded
        # again, while a real photo dataset is far larger; this measures the decoding path.
        config = DataConfig(
            source="image_folder",
            root=str(root),
            image_size=IMAGE_SIZE,
            batch_size=BATCH,
            cache_mib=0,
        )
        split = list_split(config, "train")
        pipelines = {
            "naive": naive(split.files),
            "ours": train_dataset(config, split, 1, 0),
            "ceiling": ceiling(split.files),
            **crop_pipelines(split.files[:600], config.crop_min_area),
        }
        total = args.images * args.passes
        best = dict.fromkeys(pipelines, 0.0)
        for _ in range(args.rounds):
            for name, dataset in pipelines.items():
                best[name] = max(best[name], images_per_second(dataset, total))
    print(f"naive pipeline          : {best['naive']:8.0f} images/s")
    print(f"our training pipeline   : {best['ours']:8.0f} images/s")
    print(f"decode-only ceiling     : {best['ceiling']:8.0f} images/s")
    print(f"decode_and_crop_jpeg    : {best['in_decoder']:8.0f} images/s")
    print(f"decode then crop        : {best['after_decode']:8.0f} images/s")
    print(f"ours / naive            : {best['ours'] / best['naive']:5.2f}x  (target >= 1.8)")
    print(f"ours / decode ceiling   : {best['ours'] / best['ceiling']:5.2f}   (target >= 0.8)")
    ratio = best["in_decoder"] / best["after_decode"]
    print(f"crop in decoder / after : {ratio:5.2f}x  (target >= 1.3)")
    # libjpeg stops after a window's last row but entropy-decodes every row above it (and
    # the full width of its own rows); it skips only the IDCT and colour work of those.
    whole = best["whole"]
    print("where it saves (decode_and_crop_jpeg of half of each image, vs the whole decoded):")
    print(f"  top half    : {best['top_half']:8.0f} images/s  {best['top_half'] / whole:5.2f}x")
    print(
        f"  bottom half : {best['bottom_half']:8.0f} images/s  {best['bottom_half'] / whole:5.2f}x"
    )


if __name__ == "__main__":
    main()
