"""Data sources on real files made here: image folders (local, file:// and memory:// with
staging and its resume), TFRecord convert + read, TFDS through mock_data, synthetic."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from disttrain.config import DataConfig
from disttrain.data.sources import check_data_source, describe_split, list_split
from disttrain.data.split import DataError
from disttrain.data.staging import MANIFEST, stage_folder, staged_path


def write_folder(root: Path, per_class: int = 4, classes=("cat", "dog"), splits=("train", "test")):
    """A tiny image folder: per_class JPEGs per class and split, each a distinct colour."""
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                colour = (40 * c + 10 * i, 200 - 10 * i, 90)
                Image.new("RGB", (20, 16), colour).save(folder / f"{i}.jpg")
    return root


def test_image_folder_lists_classes_counts_and_shape(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "train" / "cat" / "notes.txt").write_text("not an image suffix: ignored")
    config = DataConfig(source="image_folder", root=str(root))

    split = list_split(config, "train")

    assert split.class_names == ["cat", "dog"]
    assert split.num_examples == 8 and split.labels == [0] * 4 + [1] * 4
    line = describe_split(split, 32)
    assert "examples: 8" in line and "classes: 2 (cat, dog)" in line
    assert "stored images: 16x20x3" in line and "fed as: 32x32x3 uint8" in line


def test_empty_split_missing_split_and_class_mismatch_are_clear_errors(tmp_path):
    root = write_folder(tmp_path / "data")
    config = DataConfig(source="image_folder", root=str(root))
    with pytest.raises(DataError, match="validation' does not exist"):
        list_split(config, "validation")

    (root / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        list_split(config, "empty")

    write_folder(root, classes=("bird",), splits=("test",))
    with pytest.raises(DataError, match="'train' has 2 classes .* 'test' has 3"):
        check_data_source(config)

    with pytest.raises(DataError, match="is not a folder"):
        list_split(DataConfig(source="image_folder", root=str(tmp_path / "nope")), "train")


def test_a_folder_of_one_class_is_refused_before_it_trains_to_a_perfect_nothing(tmp_path):
    root = write_folder(tmp_path / "data", classes=("digit-7",))
    config = DataConfig(source="image_folder", root=str(root))
    with pytest.raises(DataError) as error:
        check_data_source(config)
    assert str(error.value) == (
        "data: split 'train' has 1 class (digit-7); accepted: at least 2 classes, one folder each"
    )


def test_hidden_folders_and_files_are_not_classes_or_examples(tmp_path):
    root = write_folder(tmp_path / "data")
    hidden = root / "train" / ".ipynb_checkpoints"
    hidden.mkdir()
    Image.new("RGB", (20, 16)).save(hidden / "cat-checkpoint.jpg")
    Image.new("RGB", (20, 16)).save(root / "train" / "cat" / "._0.jpg")  # macOS metadata

    split = list_split(DataConfig(source="image_folder", root=str(root)), "train")

    assert split.class_names == ["cat", "dog"] and split.num_examples == 8


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "train" / "emu").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) '.*train/emu' hold no images"):
        list_split(DataConfig(source="image_folder", root=str(root)), "train")


def test_data_convert_names_a_missing_source_and_the_wrong_option(tmp_path):
    from processes import cli

    missing = cli("data", "convert", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"SOURCE '{tmp_path / 'nope'}' does not exist" in missing.stderr
    root = write_folder(tmp_path / "data")
    zero = cli("data", "convert", str(root), str(tmp_path / "out"), "--shards", "0")
    assert zero.returncode == 2 and "--shards: got 0, accepted: 1 or more" in zero.stderr
    assert "--on-bad-file" not in zero.stderr
    assert not (tmp_path / "out").exists()
    # Splits are checked before any shard is written: "test" fails, "train" left nothing.
    write_folder(root, classes=("bird",), splits=("test",))
    mismatch = cli("data", "convert", str(root), str(tmp_path / "out"))
    assert mismatch.returncode == 2 and "split 'train' has classes" in mismatch.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_tfrecord_root_is_named_as_missing(tmp_path):
    config = DataConfig(source="tfrecord", root=str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"'.*nope' does not exist; expected a folder of TFRecord"):
        list_split(config, "train")


def test_file_url_reads_the_folder_in_place(tmp_path):
    root = write_folder(tmp_path / "data")
    config = DataConfig(source="image_folder", root=f"file://{root}")
    assert list_split(config, "test").num_examples == 8


def copy_to_memory(local: Path, url: str) -> None:
    fs = fsspec.filesystem("memory")
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe_file(
                f"{url.removeprefix('memory://')}/{path.relative_to(local)}", path.read_bytes()
            )


def test_remote_folder_is_staged_then_reused_and_a_partial_copy_resumed(tmp_path):
    url = "memory://bucket/stage-test"
    copy_to_memory(write_folder(tmp_path / "data"), url)
    scratch = tmp_path / "scratch"
    lines: list[str] = []

    staged = stage_folder(url, scratch, lines.append)

    assert staged == staged_path(url, scratch)
    assert sorted(json.loads((staged / MANIFEST).read_text())["files"]) == sorted(
        str(p.relative_to(staged)) for p in staged.rglob("*.jpg")
    )
    assert any("copying 16 of 16 files" in line for line in lines)
    assert any(line.startswith("stage | done | 16/16 files") for line in lines)

    lines.clear()
    assert stage_folder(url, scratch, lines.append) == staged
    assert lines == [f"stage | reused | 16 files | {staged}"]

    # An interrupted copy: no manifest yet, one file missing, one cut short.
    (staged / MANIFEST).unlink()
    (staged / "train" / "cat" / "0.jpg").unlink()
    truncated = staged / "test" / "dog" / "3.jpg"
    truncated.write_bytes(truncated.read_bytes()[:10])
    untouched = staged / "train" / "dog" / "1.jpg"
    before = untouched.stat().st_mtime_ns
    lines.clear()

    stage_folder(url, scratch, lines.append)

    assert any("copying 2 of 16 files" in line and "resuming: 14" in line for line in lines)
    assert (staged / "train" / "cat" / "0.jpg").is_file()
    assert truncated.stat().st_size == fsspec.filesystem("memory").size(
        "/bucket/stage-test/test/dog/3.jpg"
    )
    assert untouched.stat().st_mtime_ns == before
    assert not list(staged.rglob(".*partial*"))


def test_remote_image_folder_source_lists_the_staged_copy(tmp_path):
    url = "memory://bucket/source-test"
    copy_to_memory(write_folder(tmp_path / "data"), url)
    config = DataConfig(source="image_folder", root=url, scratch_dir=str(tmp_path / "scratch"))

    split = list_split(config, "train")

    assert split.num_examples == 8
    assert all(f.startswith(str(tmp_path / "scratch")) for f in split.files)


def test_the_local_launcher_stages_a_remote_folder_once_and_names_a_bad_one(tmp_path):
    from disttrain.config import Config, ConfigError
    from launchers.prepare import check_data

    url = "memory://bucket/launcher-check"
    copy_to_memory(write_folder(tmp_path / "data"), url)
    data = DataConfig(source="image_folder", root=url, scratch_dir=str(tmp_path / "scratch"))

    check_data(Config(data=data))

    staged = staged_path(url, tmp_path / "scratch")
    assert (staged / MANIFEST).is_file() and len(list(staged.rglob("*.jpg"))) == 16

    mismatched = "memory://bucket/launcher-mismatch"
    other = write_folder(tmp_path / "other", classes=("bird", "cat"), splits=("test",))
    copy_to_memory(other, mismatched)
    copy_to_memory(write_folder(tmp_path / "other2", splits=("train",)), mismatched)
    data = DataConfig(source="image_folder", root=mismatched, scratch_dir=str(tmp_path / "s2"))
    with pytest.raises(ConfigError, match=r"'train' has 2 classes \(cat, dog\) .* 'test' has 2"):
        check_data(Config(data=data))


def test_a_task_stages_remote_data_where_the_chief_lists_it(tmp_path):
    """A PSS worker runs the chief's dataset graph, file paths included: its own copy must
    sit at the same path, made before it meets its peers."""
    from disttrain.config import Config
    from disttrain.task import stage_remote_data

    url = "memory://bucket/worker-stage"
    copy_to_memory(write_folder(tmp_path / "data"), url)
    config = Config(
        data=DataConfig(source="image_folder", root=url, scratch_dir=str(tmp_path / "scratch"))
    )

    stage_remote_data(config)

    listed = list_split(config.data, "train").files  # what the chief puts in the graph
    assert len(listed) == 8 and all(Path(f).is_file() for f in listed)


def test_an_empty_remote_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="holds no files"):
        stage_folder("memory://bucket/absent", tmp_path / "scratch", lambda _: None)


def test_synthetic_source_reports_its_shape_and_classes():
    split = list_split(DataConfig(source="synthetic", synthetic_classes=3, image_size=24), "train")
    assert split.class_names == ["class0", "class1", "class2"]
    assert "24x24x3 (random)" in describe_split(split, 24)


def test_synthetic_dataset_is_a_cached_uint8_batch():
    from disttrain.data.pipeline import eval_dataset, train_dataset

    config = DataConfig(source="synthetic", synthetic_classes=3, image_size=24, batch_size=5)
    split = list_split(config, "train")
    first, second = list(train_dataset(config, split, 1, 0).take(2))
    assert first[0].dtype.name == "uint8" and first[0].shape == (5, 24, 24, 3)
    np.testing.assert_array_equal(first[0], second[0])
    assert set(np.unique(first[1])) <= {0, 1, 2}
    evaluated = sum(len(y) for _, y in eval_dataset(config, list_split(config, "test"), 100, 250))
    assert evaluated == 250
