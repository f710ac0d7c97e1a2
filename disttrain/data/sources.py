"""What a data source holds: the files (or records) of a split, its classes and counts.

Pure Python (no TensorFlow at import): launchers call `check_data_source` before any
process starts, and every task lists its split the same way, so a bad layout is one clear
error at submit time instead of a crash on a worker. Reading the listed split is
pipeline.py's job.

Sources (config `data.source`):
  builtin       the generated shapes dataset (an image folder in the cache), the default
  image_folder  `<root>/<split>/<class>/*.{jpg,jpeg,png}`, local or any fsspec URL (staged)
  tfrecord      shards written by `disttrain data convert`, classes in classes.json beside them
  tfds          a TensorFlow Datasets name with a prepared `data_dir`
  synthetic     random uint8 images of the configured shape (benchmarks)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from disttrain.config import DataConfig
from disttrain.data.builtin import ensure_builtin_dataset
from disttrain.data.split import DataError, Split
from disttrain.data.staging import stage_folder
from disttrain.data.tfds_source import tfds_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CLASSES_FILE = "classes.json"  # beside TFRecord shards: class names and per-shard counts
SYNTHETIC_EXAMPLES = {"train": 4096, "test": 1024}


def list_split(config: DataConfig, split: str) -> Split:
    """List one split of the configured source; raises DataError when it is unusable."""
    if config.source in ("builtin", "image_folder"):
        found = _folder_split(config, split)
    elif config.source == "tfrecord":
        found = _tfrecord_split(config, split)
    elif config.source == "tfds":
        found = tfds_split(config, split)
    else:
        found = _synthetic_split(config, split)
    return _with_classes_to_tell_apart(found)


def _with_classes_to_tell_apart(split: Split) -> Split:
    """A classifier of one class reaches loss 0 and accuracy 1.0 and has learnt nothing."""
    if len(split.class_names) < 2:
        raise DataError(
            f"data: split {split.name!r} has {len(split.class_names)} class "
            f"({_names(split.class_names)}); accepted: at least 2 classes, one folder each"
        )
    return split


def check_data_source(config: DataConfig) -> None:
    """Both splits exist, are non-empty and agree on the classes; raises DataError."""
    train = list_split(config, config.train_split)
    test = list_split(config, config.test_split)
    if train.class_names != test.class_names:
        raise DataError(
            f"data: split {train.name!r} has {len(train.class_names)} classes "
            f"({_names(train.class_names)}) but split {test.name!r} has "
            f"{len(test.class_names)} ({_names(test.class_names)}); they must match"
        )


def describe_split(split: Split, image_size: int) -> str:
    """One start-up report line: source, split, examples, classes, stored and fed shape."""
    count = "unknown" if split.num_examples < 0 else str(split.num_examples)
    return (
        f"data | {split.source} | split: {split.name} | examples: {count} | "
        f"classes: {len(split.class_names)} ({_names(split.class_names)}) | "
        f"stored images: {split.image_shape} | fed as: {image_size}x{image_size}x3 uint8"
    )


def folder_root(config: DataConfig) -> Path:
    """The local folder holding `<split>/<class>/*` for builtin and image_folder sources.

    A remote URL is staged to `data.scratch_dir` first (reused when already complete).
    """
    if config.source == "builtin":
        return ensure_builtin_dataset(config.root or None)
    if not config.root:
        raise DataError("data.root: empty; accepted: a folder laid out as <root>/<split>/<class>/*")
    if is_remote(config.root):
        return stage_folder(config.root, scratch_dir(config))
    root = Path(config.root.removeprefix("file://"))
    if not root.is_dir():
        raise DataError(
            f"data.root: {config.root!r} is not a folder; expected <root>/<split>/<class>/*.jpg"
        )
    return root


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def scratch_dir(config: DataConfig) -> Path:
    return scratch_dir_for(config.scratch_dir)


def scratch_dir_for(configured: str) -> Path:
    """`data.scratch_dir`, or ~/.cache/disttrain/staged when it is empty."""
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "disttrain" / "staged"


def list_image_folder(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """(files, labels, class names) of `<folder>/<class>/*.{jpg,jpeg,png}`; classes sorted.

    Hidden folders and files (.ipynb_checkpoints, .DS_Store, ...) are left out.
    """
    try:
        class_names = sorted(p.name for p in folder.iterdir() if is_visible_folder(p))
    except OSError as exc:
        raise DataError(f"data split folder {str(folder)!r} cannot be read: {exc}") from None
    per_class = [_images_in(folder / name) for name in class_names]
    empty = [name for name, found in zip(class_names, per_class) if not found]
    if empty and len(empty) < len(class_names):  # all empty: the caller names the split
        raise DataError(
            f"class folder(s) {', '.join(repr(str(folder / n)) for n in empty)} hold no "
            f"images ({', '.join(IMAGE_SUFFIXES)}): this split would have a class without "
            f"examples; remove the folder or add its images"
        )
    files = [path for found in per_class for path in found]
    labels = [label for label, found in enumerate(per_class) for _ in found]
    return files, labels, class_names


def _images_in(class_folder: Path) -> list[str]:
    return [
        str(path)
        for path in sorted(class_folder.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    ]


def require_folder(path: Path, what: str, expected: str = "") -> None:
    """A DataError naming `path` (as `what`) unless it is a folder."""
    if not path.is_dir():
        problem = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"{what} {str(path)!r} {problem}{expected}")


def is_visible_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _folder_split(config: DataConfig, split: str) -> Split:
    folder = folder_root(config) / split
    require_folder(folder, "data split folder")
    files, labels, class_names = list_image_folder(folder)
    if not files:
        raise DataError(
            f"data split folder {str(folder)!r} holds no images "
            f"({', '.join(IMAGE_SUFFIXES)}) under class folders"
        )
    return Split(
        config.source, split, class_names, len(files), files, labels, first_file_shape(files[0])
    )


def first_file_shape(path: str) -> str:
    """The first file's shape, e.g. "32x32x3 (first file)"; never fails the listing."""
    try:
        with Image.open(path) as image:
            channels = len(image.getbands())
            return f"{image.height}x{image.width}x{channels} (first file)"
    except Exception:  # a bad file is the pipeline's to skip or fail on, with its path
        return "unknown (first file unreadable)"


def read_classes_file(root: Path) -> dict:
    expected = "; expected a folder of TFRecord shards written by `disttrain data convert`"
    require_folder(root, "data.root:", expected)
    path = root / CLASSES_FILE
    if not path.is_file():
        raise DataError(
            f"data.root: {str(root)!r} has no {CLASSES_FILE}; "
            "write TFRecord shards with `disttrain data convert`"
        )
    return json.loads(path.read_text())


def _tfrecord_split(config: DataConfig, split: str) -> Split:
    root = Path(config.root.removeprefix("file://"))
    if is_remote(config.root):
        root = stage_folder(config.root, scratch_dir(config))
    meta = read_classes_file(root)
    shards = meta["splits"].get(split)
    if not shards or not sum(shards["counts"]):
        raise DataError(
            f"data.root: {str(root)!r} has no examples in split {split!r}; "
            f"splits written: {', '.join(sorted(meta['splits'])) or 'none'}"
        )
    missing = [name for name in shards["files"] if not (root / name).is_file()]
    if missing:
        raise DataError(f"TFRecord shard {str(root / missing[0])!r} listed in classes.json is gone")
    return Split(
        "tfrecord",
        split,
        list(meta["classes"]),
        sum(shards["counts"]),
        [str(root / name) for name in shards["files"]],
        [],
        meta.get("image_shape", "unknown"),
        shard_counts=list(shards["counts"]),
    )


def _synthetic_split(config: DataConfig, split: str) -> Split:
    names = [f"class{i}" for i in range(config.synthetic_classes)]
    count = SYNTHETIC_EXAMPLES.get(split, SYNTHETIC_EXAMPLES["test"])
    shape = f"{config.image_size}x{config.image_size}x3 (random)"
    return Split("synthetic", split, names, count, [], [], shape)


def _names(class_names: list[str], limit: int = 6) -> str:
    shown = ", ".join(class_names[:limit])
    return shown + (f", ... {len(class_names) - limit} more" if len(class_names) > limit else "")
