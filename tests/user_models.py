"""Model functions defined outside disttrain, named by tests as `user_models:<function>`.

Importable because tests/ is on the path: pytest puts it there, and tests that start a
job put it on the tasks' PYTHONPATH.
"""

from __future__ import annotations

import keras


def tiny_mlp(config, image_size: int, num_classes: int) -> keras.Model:
    """A one-hidden-layer model whose width comes from `model.options.hidden`."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Dense(config.options.get("hidden", 8), activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, dtype="float32")(x), name="tiny")


def not_a_model(config, image_size: int, num_classes: int):
    return "a string"


def one_logit_too_many(config, image_size: int, num_classes: int) -> keras.Model:
    return tiny_mlp(config, image_size, num_classes + 1)
