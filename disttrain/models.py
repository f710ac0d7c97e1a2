"""The model zoo: Keras 3 models chosen by `model.name`, shaped by the data."""

from __future__ import annotations

import keras

from disttrain.config import ModelConfig


def build_model(config: ModelConfig, image_size: int, num_classes: int) -> keras.Model:
    """Build the configured model; it takes float images in [-1, 1] and returns logits."""
    builders = {"small_cnn": small_cnn}
    return builders[config.name](config, image_size, num_classes)


def small_cnn(config: ModelConfig, image_size: int, num_classes: int) -> keras.Model:
    """Three conv/pool blocks and a dense head: seconds per hundred steps on a laptop CPU.

    A dense head over the flattened map learns the built-in shapes several times faster
    than global average pooling, which must first learn where in the image to look.
    """
    w = config.width
    layers = [keras.Input((image_size, image_size, 3))]
    for filters in (w, 2 * w, 4 * w):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
        ]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(4 * w, activation="relu"),
        keras.layers.Dropout(config.dropout),
        keras.layers.Dense(num_classes),
    ]
    return keras.Sequential(layers, name="small_cnn")
