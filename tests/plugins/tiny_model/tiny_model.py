"""A model registered by another package in the entry-point group `disttrain.models`."""

from __future__ import annotations

import keras


def tiny(config, image_size: int, num_classes: int) -> keras.Model:
    """One convolution and a dense head; `model.options.filters` sets its width."""
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            keras.layers.Conv2D(config.options.get("filters", 4), 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_classes, dtype="float32"),
        ],
        name="tiny",
    )
