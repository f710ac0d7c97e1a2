"""The model zoo: Keras 3 models chosen by `model.name`, shaped by the data.

Every model takes float images in [-1, 1] and returns logits. Under a mixed precision
policy the layers compute in float16/bfloat16 with float32 variables; the logits layer
stays float32, where a softmax over small differences needs the mantissa.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import keras

from disttrain.config import ModelConfig

PRECISION_POLICIES = {
    "float32": "float32",
    "mixed_bfloat16": "mixed_bfloat16",
    "mixed_float16": "mixed_float16",
}


def build_model(
    config: ModelConfig, image_size: int, num_classes: int, precision: str = "float32"
) -> keras.Model:
    """Build the configured model under the dtype policy of `precision`."""
    builders = {"small_cnn": small_cnn, "alexnet": alexnet, "resnet50": resnet50}
    with dtype_policy(PRECISION_POLICIES[precision]):
        return builders[config.name](config, image_size, num_classes)


@contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras reads the global policy when a layer is created; restore it afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


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
        keras.layers.Dense(num_classes, dtype="float32"),
    ]
    return keras.Sequential(layers, name="small_cnn")


def alexnet(config: ModelConfig, image_size: int, num_classes: int) -> keras.Model:
    """AlexNet as the 2017 sample trained it (224x224, two classes), one tower.

    Five convolutions (64-192-384-384-256, the single-GPU layout of TF's alexnet_v2),
    three max-pools and two 4096-unit dense layers with dropout: 71M parameters at
    224x224 (a 7x7x256 map feeds the dense layers), most of them dense, which is what
    makes it a parameter-server model. "same" padding keeps it buildable for small images.
    """
    conv = lambda filters, size, **kw: keras.layers.Conv2D(  # noqa: E731
        filters, size, padding="same", activation="relu", **kw
    )
    pool = lambda: keras.layers.MaxPooling2D(3, strides=2, padding="same")  # noqa: E731
    layers = [
        keras.Input((image_size, image_size, 3)),
        conv(64, 11, strides=4),
        pool(),
        conv(192, 5),
        pool(),
        conv(384, 3),
        conv(384, 3),
        conv(256, 3),
        pool(),
        keras.layers.Flatten(),
        keras.layers.Dense(4096, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(4096, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(num_classes, dtype="float32"),
    ]
    return keras.Sequential(layers, name="alexnet")


def resnet50(config: ModelConfig, image_size: int, num_classes: int) -> keras.Model:
    """Keras Applications' ResNet50, randomly initialised (no pretrained download)."""
    return keras.applications.ResNet50(
        weights=None,
        input_shape=(image_size, image_size, 3),
        classes=num_classes,
        classifier_activation=None,
    )
