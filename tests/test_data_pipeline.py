"""The tf.data pipeline on real files: per-worker shards, bad files, TFRecords, TFDS."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from disttrain.config import DataConfig
from disttrain.data.pipeline import (
    BAD_FILE_FIRST_SEEN,
    BAD_FILE_SEEN_AGAIN,
    decodes_once,
    eval_dataset,
    random_crops,
    train_dataset,
)
from disttrain.data.sources import list_split

COUNT = 23  # images in the numbered folder: not a multiple of any worker count used
# Both training paths: decoding every step (no cache), and a small split decoded once.
BOTH_PATHS = pytest.mark.parametrize("cache_mib", [0, 1], ids=["decode-per-step", "cached"])


def numbered_folder(root: Path, count: int = COUNT, suffix: str = "png") -> Path:
    """Solid-colour images whose red channel is their number: any crop keeps it."""
    for split in ("train", "test"):
        for i in range(count):
            folder = root / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24, 20), (10 * i, 60, 200)).save(folder / f"{i:03d}.{suffix}")
    return root


def image_numbers(images: np.ndarray) -> list[int]:
    return [int(round(float(image[..., 0].mean()) / 10)) for image in images]


def first_epoch_numbers(config: DataConfig, num_shards: int, index: int) -> list[int]:
    split = list_split(config, "train")
    shard_size = len(range(index, split.num_examples, num_shards))
    dataset = train_dataset(dataclasses.replace(config, batch_size=1), split, num_shards, index)
    return [image_numbers(images.numpy())[0] for images, _ in dataset.take(shard_size)]


@BOTH_PATHS
@pytest.mark.parametrize("workers", [1, 3])
def test_worker_shards_of_an_image_folder_are_disjoint_and_cover_the_split(
    tmp_path, workers, cache_mib
):
    root = str(numbered_folder(tmp_path))
    config = DataConfig(source="image_folder", root=root, image_size=8, cache_mib=cache_mib)
    shards = [first_epoch_numbers(config, workers, i) for i in range(workers)]

    seen = [n for shard in shards for n in shard]
    assert sorted(seen) == list(range(COUNT))  # disjoint (no repeats) and complete
    # The shard index may be a tensor, as it is under ParameterServerStrategy.
    as_tensor = first_epoch_numbers(config, workers, tf.constant(workers - 1, tf.int64))
    assert sorted(as_tensor) == sorted(shards[-1])


def test_worker_index_is_read_from_the_workers_own_tf_config():
    program = (
        "from disttrain.data.pipeline import worker_index_on_worker;"
        "print('INDEX', int(worker_index_on_worker()))"
    )
    for index in (2,):  # one subprocess: importing TensorFlow costs seconds
        tf_config = {
            "cluster": {"worker": ["a:1", "b:1", "c:1"], "ps": ["d:1"], "chief": ["e:1"]},
            "task": {"type": "worker", "index": index},
        }
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config)}
        out = subprocess.run(
            [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert f"INDEX {index}" in out


@BOTH_PATHS
def test_training_batches_are_uint8_and_eval_is_deterministic(tmp_path, cache_mib):
    root = str(numbered_folder(tmp_path, suffix="jpg"))
    config = DataConfig(source="image_folder", root=root, batch_size=4, cache_mib=cache_mib)
    split = list_split(config, "test")
    images, labels = next(iter(train_dataset(config, split, 1, 0)))
    assert images.dtype == tf.uint8 and images.shape == (4, 32, 32, 3)
    assert labels.dtype == tf.int32

    def one_pass():
        return [image_numbers(x.numpy()) for x, _ in eval_dataset(config, split, 5)]

    assert one_pass() == one_pass()
    assert sorted(n for batch in one_pass() for n in batch) == list(range(COUNT))


def test_a_small_split_is_decoded_once_and_cropped_in_the_step(tmp_path):
    root = str(numbered_folder(tmp_path, suffix="jpg"))
    split = list_split(DataConfig(source="image_folder", root=root), "train")
    assert decodes_once(DataConfig(source="image_folder", root=root), split)
    assert not decodes_once(DataConfig(source="image_folder", root=root, cache_mib=0), split)

    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], (32, 1, 3))
    solid = np.full((32, 32, 3), 77, np.uint8)
    crops = random_crops(tf.constant(np.stack([ramp] * 16 + [solid])), 0.1).numpy()

    assert crops.dtype == np.uint8 and crops.shape == (17, 32, 32, 3)
    assert (crops[-1] == 77).all()  # a crop of one colour is that colour
    ramps = crops[:-1].astype(int)
    assert ramps.min() >= 0 and ramps.max() <= 248
    # A crop keeps the ramp's order; a zoomed-in one spans fewer grey levels.
    assert all((np.diff(c[16, :, 0]) >= 0).all() for c in ramps)
    assert any(np.ptp(c[16, :, 0]) < 200 for c in ramps)


def folder_with_bad_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = numbered_folder(tmp_path, suffix="jpg")
    good = root / "train" / "class0" / "000.jpg"
    corrupt = root / "train" / "class0" / "corrupt.jpg"
    data = bytearray(good.read_bytes())
    corrupt.write_bytes(bytes(data[: len(data) // 2]))  # a JPEG cut short
    text = root / "train" / "class1" / "page.jpg"
    text.write_text("<html>an error page saved as .jpg</html>")
    return root, [corrupt, text]


@BOTH_PATHS
def test_bad_files_are_skipped_counted_once_and_named(tmp_path, capfd, cache_mib):
    root, bad = folder_with_bad_files(tmp_path)
    config = DataConfig(
        source="image_folder", root=str(root), batch_size=5, image_size=8, cache_mib=cache_mib
    )
    split = list_split(config, "train")
    epochs = 4  # 25 files per epoch; training order is not deterministic across epochs

    labels = np.concatenate(
        [y.numpy() for _, y in train_dataset(config, split, 1, 0).take(epochs * 25 // 5)]
    )

    assert (labels == BAD_FILE_FIRST_SEEN).sum() == 2  # counted once each
    assert (labels == BAD_FILE_SEEN_AGAIN).sum() >= 2 * (epochs - 2)  # met again, not counted
    assert len(labels) == 25 * epochs
    out = capfd.readouterr().out
    for path in bad:
        assert out.count(str(path)) == 1, out
    evaluated = sum(len(y) for _, y in eval_dataset(config, split, 7))
    assert evaluated == COUNT
    out = capfd.readouterr().out
    assert all(str(path) in out for path in bad)  # an evaluation pass names them
    quiet = sum(len(y) for _, y in eval_dataset(config, split, 7, report_bad_files=False))
    out = capfd.readouterr().out
    assert quiet == COUNT and not any(str(path) in out for path in bad)


@BOTH_PATHS
def test_a_bad_file_fails_the_pipeline_with_its_path_when_configured(tmp_path, cache_mib):
    root, bad = folder_with_bad_files(tmp_path)
    config = DataConfig(
        source="image_folder", root=str(root), on_bad_file="fail", image_size=8, cache_mib=cache_mib
    )
    split = list_split(config, "train")
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad image file") as error:
        for _ in train_dataset(config, split, 1, 0).take(10):
            pass
    assert any(str(path) in str(error.value) for path in bad)


def convert(root: Path, out: Path, shards: int, on_bad_file: str = "skip") -> list[str]:
    from disttrain.data.tfrecords import convert_image_folder

    lines: list[str] = []
    convert_image_folder(root, out, shards, on_bad_file, lines.append)
    return lines


def test_tfrecord_convert_then_read_keeps_classes_and_every_image(tmp_path):
    root, bad = folder_with_bad_files(tmp_path / "folder")
    lines = convert(root, tmp_path / "shards", shards=4)

    meta = json.loads((tmp_path / "shards" / "classes.json").read_text())
    assert meta["classes"] == ["class0", "class1"]
    assert sum(meta["splits"]["train"]["counts"]) == COUNT
    assert {f"data convert | bad image file skipped | {p}" for p in bad} <= set(lines)
    done = [line for line in lines if " | done | " in line]  # each split's progress ends
    assert [line.split(" | ")[1] for line in done] == sorted({"test", "train"})

    config = DataConfig(source="tfrecord", root=str(tmp_path / "shards"), image_size=8)
    split = list_split(config, "test")
    assert split.class_names == ["class0", "class1"] and split.num_examples == COUNT
    pairs = [
        (n, int(y))
        for x, y in eval_dataset(config, split, 6)
        for n, y in zip(image_numbers(x.numpy()), y)
    ]
    assert sorted(pairs) == [(i, i % 2) for i in range(COUNT)]

    with pytest.raises(Exception, match="not a decodable image"):
        convert(root, tmp_path / "strict", shards=2, on_bad_file="fail")


@pytest.mark.parametrize("shards, workers", [(4, 2), (2, 3)])
def test_tfrecord_worker_shards_are_disjoint_and_cover(tmp_path, shards, workers):
    from disttrain.data.tfrecords import tfrecord_records

    convert(numbered_folder(tmp_path / "folder"), tmp_path / "shards", shards)
    files = list_split(DataConfig(source="tfrecord", root=str(tmp_path / "shards")), "train").files

    parts = [
        [bytes(data) for data, _ in tfrecord_records(files, workers, i).as_numpy_iterator()]
        for i in range(workers)
    ]

    everything = [data for part in parts for data in part]
    assert len(everything) == len(set(everything)) == COUNT


def test_tfds_by_name_through_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    config = DataConfig(source="tfds", tfds_name="mnist", image_size=16, batch_size=4)
    with tfds.testing.mock_data(num_examples=12):
        split = list_split(config, "train")
        assert split.class_names == [str(i) for i in range(10)]
        assert "28x28x1" in split.image_shape
        images, labels = next(iter(train_dataset(config, split, 1, 0)))
        assert images.dtype == tf.uint8 and images.shape == (4, 16, 16, 3)
        assert set(labels.numpy()) <= set(range(10))
        from disttrain.data.pipeline import _sharded_records

        parts = [
            [bytes(d) for d, _ in _sharded_records(split, 3, i).as_numpy_iterator()]
            for i in range(3)
        ]
        whole = [bytes(d) for d, _ in _sharded_records(split, 1, 0).as_numpy_iterator()]
    assert sorted(d for part in parts for d in part) == sorted(whole)
    assert [len(part) for part in parts] == [4, 4, 4]


def test_unknown_tfds_name_is_a_clear_error():
    from disttrain.data.split import DataError

    with pytest.raises(DataError, match="data.tfds_name: 'no_such_dataset_xyz'"):
        list_split(DataConfig(source="tfds", tfds_name="no_such_dataset_xyz"), "train")
