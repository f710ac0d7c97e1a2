"""The pictures TensorBoard shows and the HParams a run is compared by (what TensorBoard
serves of them: tests/test_board.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from disttrain.config import load_config
from disttrain.data.pipeline import synthetic_batches
from disttrain.data.sources import list_split
from disttrain.hparams import flat_hparams
from disttrain.pictures import (
    DARKEST,
    LIGHTEST,
    PAD,
    augmented_training_images,
    confusion_matrix_picture,
    per_class_accuracy,
)

WHITE = [255, 255, 255]


def confusion_of(classes: int) -> np.ndarray:
    """Class 0: 10 examples, all right; class 1: 4 examples, 1 right and 3 taken for class
    2; class 2: no examples; every other class: 2 examples, both right."""
    confusion = np.diag([10, 1, 0] + [2] * (classes - 3))
    confusion[1, 2] = 3
    return confusion


def test_per_class_accuracy_is_each_true_class_share_of_right_answers():
    accuracy = per_class_accuracy(confusion_of(5))
    assert accuracy[[0, 1, 3, 4]].tolist() == [1.0, 0.25, 1.0, 1.0]
    assert np.isnan(accuracy[2])  # no examples: no accuracy


def test_each_cell_is_shaded_by_its_share_of_the_true_class_and_the_strip_by_accuracy():
    classes = 48  # cells of 10 pixels: too small to name, so the matrix starts at (0, 0)
    picture = confusion_matrix_picture(confusion_of(classes), [f"c{i}" for i in range(classes)])
    cell, strip_left = 10, classes * 10 + PAD
    assert picture.shape == (classes * cell, strip_left + cell, 3) and picture.dtype == np.uint8

    def at(row: int, column: int) -> list[int]:
        return picture[row * cell + cell // 2, column * cell + cell // 2].tolist()

    def strip(row: int) -> list[int]:
        return picture[row * cell + cell // 2, strip_left + cell // 2].tolist()

    assert at(0, 0) == DARKEST.tolist() and at(0, 1) == LIGHTEST.tolist()
    assert sum(at(1, 2)) < sum(at(1, 1)) < sum(LIGHTEST)  # 3 of 4 darker than 1 of 4
    assert at(2, 2) == LIGHTEST.tolist()  # a class without examples: nothing to shade
    assert strip(0) == DARKEST.tolist() and strip(1) == at(1, 1)
    assert strip(2) == WHITE  # no accuracy to show
    assert (picture[:, classes * cell : strip_left] == 255).all()  # the gap before the strip


def test_few_classes_are_named_beside_and_above_the_matrix():
    names = ["circle", "square", "triangle"]
    picture = confusion_matrix_picture(confusion_of(3), names)
    side = 3 * 40  # the largest cells
    height, width, _ = picture.shape
    margin = height - side
    assert margin > 0 and width > margin + side  # names left and above; the strip right
    ink = (picture < 100).all(axis=-1)  # dark text (anti-aliased) on white
    assert ink[margin:, :margin].any() and ink[:margin, margin : margin + side].any()


def test_training_images_are_the_batch_as_the_step_sees_it():
    config = load_config(
        None, ["data.source=synthetic", "data.image_size=8", "data.random_flip=false"]
    )
    split = list_split(config.data, "train")
    images, labels = augmented_training_images(config.data, split, count=8, seed=3)
    stored, stored_labels = next(iter(synthetic_batches(config.data, split, 8, seed=3)))
    assert images.shape == (8, 8, 8, 3) and images.dtype == tf.float32
    np.testing.assert_allclose(images.numpy(), stored.numpy() / 255.0, atol=1e-6)
    assert labels.numpy().tolist() == stored_labels.numpy().tolist()

    tf.random.set_seed(0)
    flipping = load_config(None, ["data.source=synthetic", "data.image_size=8"]).data
    flipped, _ = augmented_training_images(flipping, split, count=8, seed=3)
    mirrored = [
        np.allclose(shown, original[:, ::-1] / 255.0, atol=1e-6)
        and not np.allclose(shown, original / 255.0, atol=1e-6)
        for shown, original in zip(flipped.numpy(), stored.numpy())
    ]
    unchanged = [
        np.allclose(shown, original / 255.0, atol=1e-6)
        for shown, original in zip(flipped.numpy(), stored.numpy())
    ]
    assert any(mirrored) and all(m or u for m, u in zip(mirrored, unchanged))


def test_hparams_are_every_trainer_key_flattened_to_values_tensorboard_shows():
    config = load_config(
        None,
        [
            "model.name=user_models:tiny_mlp",
            "model.options={hidden: 5, sizes: [3, 4]}",
            "train.lr_schedule=piecewise",
            "train.lr_boundaries=[100, 200]",
            "train.lr_values=[0.1, 0.01, 0.001]",
        ],
    )
    flat = flat_hparams(config)
    assert flat["model.options.hidden"] == 5 and flat["model.options.sizes"] == "[3, 4]"
    assert flat["train.lr_boundaries"] == "[100, 200]"
    assert flat["data.random_flip"] is True and flat["train.learning_rate"] == 0.002
    assert flat["run_dir"] == config.run_dir and flat["cluster.workers"] == 2
    assert all(isinstance(value, (bool, int, float, str)) for value in flat.values())
    for section in ("data", "model", "train", "checkpoint", "eval", "cluster"):
        for key in dataclasses.fields(getattr(config, section)):
            assert key.name == "options" or f"{section}.{key.name}" in flat
