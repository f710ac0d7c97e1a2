"""The images TensorBoard shows: augmented training images and the confusion matrix.

Written into the summary writer that is active when called (the chief's train writer,
the evaluator's eval writer), so they reach the run dir through the same mirror as the
scalars. The drawing uses Pillow (the `train` extra has it) and NumPy: no plotting
library. A picture is a convenience: callers make sure a failure here never stops
training or evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from disttrain.config import DataConfig
from disttrain.data.pipeline import (
    FOLDER_SOURCES,
    decodes_once,
    prepare_on_device,
    random_crops,
    train_dataset,
)
from disttrain.data.split import Split

# Training images shown once per start of the chief.
TRAINING_IMAGES = 8
# The confusion matrix: about this many pixels a side, a cell at most MAX_CELL pixels;
# class names and counts are written only where cells are big enough to hold them.
MATRIX_PIXELS = 480
MAX_CELL = 40
NAMED_CELL = 12  # rows and columns are named from this cell size on
COUNTED_CELL = 28  # each cell shows its count from this size on
NAME_CHARS = 24
ACCURACY_STRIP = 44  # pixels: the per-class accuracy column right of the matrix
PAD = 4
# "Blues": white for none of a row's examples, dark blue for all of them.
LIGHTEST, DARKEST = np.array([247, 251, 255]), np.array([8, 48, 107])
BACKGROUND, INK = (255, 255, 255), (0, 0, 0)
PREDICTED, TRUE = "predicted (columns)", "true (rows)"  # the corner's two labels


def augmented_training_images(
    data: DataConfig, split: Split, count: int = TRAINING_IMAGES, seed: int | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """`count` training images as the step sees them, in [0, 1], and their labels.

    They come from the training dataset function, cropped as it crops (in the decoder, or
    in the step for a split decoded once) and flipped when `data.random_flip`, then
    de-normalised. Only a small shard of the split is read, with a shuffle buffer of
    `count`: the chief decodes a handful of files, not a batch or a cached split.
    """
    few = dataclasses.replace(data, batch_size=count, shuffle_buffer=count)
    shards = _shards_of_about(split, count)
    images, labels = next(iter(train_dataset(few, split, shards, 0, seed=seed)))
    if decodes_once(data, split):
        images = random_crops(images, data.crop_min_area)
    normalised = prepare_on_device(images, training=True, flip=data.random_flip)
    return (normalised + 1.0) / 2.0, labels


def _shards_of_about(split: Split, count: int) -> int:
    """A shard count whose first shard holds at least `count` images, and few more."""
    if split.source in FOLDER_SOURCES:
        return max(1, len(split.files) // count)
    # TFRecord: one shard file (read whole); TFDS and synthetic: read from the start.
    return max(1, len(split.files))


def write_training_images(
    data: DataConfig, split: Split, step: int, seed: int | None = None
) -> None:
    """The augmented training images as one image summary, named by class in its text."""
    images, labels = augmented_training_images(data, split, seed=seed)
    names = [
        split.class_names[label] if label >= 0 else "(undecodable file)"
        for label in labels.numpy().tolist()
    ]
    tf.summary.image(
        "training_images",
        images,
        step=step,
        max_outputs=len(names),
        description="As the training step sees them (crop, flip), before normalisation. "
        f"Classes, in order: {', '.join(names)}",
    )


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Each true class's share of correct predictions (rows: true, columns: predicted);
    NaN for a class with no examples."""
    examples = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(examples > 0, np.diag(confusion) / examples, np.nan)


def write_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], step: int) -> None:
    """The confusion matrix as an image, and each class's accuracy as a scalar
    `per_class_accuracy/<class>` (searchable and plotted over steps)."""
    picture = confusion_matrix_picture(confusion, class_names)
    tf.summary.image(
        "confusion_matrix",
        picture[None],
        step=step,
        description="Rows: true class; columns: predicted class; each row shaded by its "
        "share of the class's examples. Right: per-class accuracy.",
    )
    for name, accuracy in zip(class_names, per_class_accuracy(confusion)):
        if not np.isnan(accuracy):
            tf.summary.scalar(f"per_class_accuracy/{name}", float(accuracy), step=step)


def confusion_matrix_picture(confusion: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """An RGB uint8 heat map of the confusion matrix with a per-class accuracy strip.

    Cell (i, j) is shaded by the share of class i's examples predicted as j, so a class
    with few examples is as readable as a large one. With few enough classes the rows and
    columns are named and the cells show their counts.
    """
    count = len(class_names)
    cell = max(1, min(MAX_CELL, MATRIX_PIXELS // count))
    font = ImageFont.load_default()
    names = [name[:NAME_CHARS] for name in class_names]
    margin = _margin_for(names, font) if cell >= NAMED_CELL else 0
    strip = ACCURACY_STRIP if cell >= NAMED_CELL else max(cell, 8)
    side = count * cell
    canvas = Image.new("RGB", (margin + side + PAD + strip, margin + side), BACKGROUND)
    rows = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    canvas.paste(_shaded_cells(confusion / rows, cell), (margin, margin))
    accuracy = per_class_accuracy(confusion)
    strip_colours = _shades(np.nan_to_num(accuracy)[:, None])
    strip_colours[np.isnan(accuracy)] = BACKGROUND
    canvas.paste(
        Image.fromarray(np.repeat(np.repeat(strip_colours, cell, 0), strip, 1)),
        (margin + side + PAD, margin),
    )
    draw = ImageDraw.Draw(canvas)
    if cell >= NAMED_CELL:
        _name_rows_and_columns(canvas, draw, names, cell, margin, font)
        _write_upright(canvas, "accuracy", margin + side + PAD + strip // 2, margin - PAD, font)
        draw.text((PAD, PAD), PREDICTED, INK, font)
        draw.text((PAD, margin - PAD - _text_size(font, TRUE)[1]), TRUE, INK, font)
        _write_accuracies(draw, accuracy, cell, margin, margin + side + PAD, font)
    if cell >= COUNTED_CELL:
        _write_counts(draw, confusion, confusion / rows, cell, margin, font)
    return np.asarray(canvas)


def _shades(fractions: np.ndarray) -> np.ndarray:
    """Fractions in [0, 1] -> RGB uint8 on the white-to-blue scale."""
    mixed = LIGHTEST + np.clip(fractions, 0.0, 1.0)[..., None] * (DARKEST - LIGHTEST)
    return mixed.round().astype(np.uint8)


def _shaded_cells(fractions: np.ndarray, cell: int) -> Image.Image:
    return Image.fromarray(np.repeat(np.repeat(_shades(fractions), cell, 0), cell, 1))


def _margin_for(names: Sequence[str], font) -> int:
    widest = max(_text_size(font, text)[0] for text in [*names, PREDICTED, TRUE])
    return widest + 2 * PAD


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


def _ink_on(fraction: float) -> tuple[int, int, int]:
    return BACKGROUND if fraction > 0.5 else INK


def _name_rows_and_columns(canvas, draw, names, cell: int, margin: int, font) -> None:
    """True classes left of their rows; predicted classes above their columns, upright."""
    for index, name in enumerate(names):
        width, height = _text_size(font, name)
        middle = margin + index * cell + cell // 2
        draw.text((margin - PAD - width, middle - height // 2), name, fill=INK, font=font)
        _write_upright(canvas, name, middle, margin - PAD, font)


def _write_upright(canvas: Image.Image, text: str, middle: int, bottom: int, font) -> None:
    """`text` turned to read upwards, centred on column `middle`, ending at row `bottom`."""
    width, height = _text_size(font, text)
    label = Image.new("RGB", (width + 2, height + 4), BACKGROUND)
    ImageDraw.Draw(label).text((0, 0), text, fill=INK, font=font)
    upright = label.rotate(90, expand=True)
    canvas.paste(upright, (middle - upright.width // 2, bottom - upright.height))


def _write_accuracies(draw, accuracy: np.ndarray, cell: int, top: int, left: int, font) -> None:
    for index, value in enumerate(accuracy):
        text = "-" if np.isnan(value) else f"{value:.0%}"
        width, height = _text_size(font, text)
        middle = top + index * cell + cell // 2
        ink = INK if np.isnan(value) else _ink_on(value)
        draw.text((left + (ACCURACY_STRIP - width) // 2, middle - height // 2), text, ink, font)


def _write_counts(draw, confusion: np.ndarray, fractions, cell: int, margin: int, font) -> None:
    for (row, column), value in np.ndenumerate(confusion):
        if value:
            text = str(value)
            width, height = _text_size(font, text)
            x = margin + column * cell + (cell - width) // 2
            y = margin + row * cell + (cell - height) // 2
            draw.text((x, y), text, fill=_ink_on(fractions[row, column]), font=font)
