"""The model zoo: Keras 3 models chosen by `model.name`, shaped by the data.

Every model takes float images in [-1, 1] and returns logits. A model function is found
by name (model_names.py: the entry-point group `disttrain.models`, where the built-ins
below register too, or `package.module:function`) and what it returns is checked before
the first step: a Keras model whose logits have one entry per class. Under a mixed precision
policy the layers compute in float16/bfloat16 with float32 variables; the logits layer
stays float32, where a softmax over small differences needs the mantissa.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import keras

from disttrain.config import ModelConfig
from disttrain.failures import Unrecoverable
from disttrain.model_names import registered_models

PRECISION_POLICIES = {
    "float32": "float32",
    "mixed_bfloat16": "mixed_bfloat16",
    "mixed_float16": "mixed_float16",
}


def build_model(
    config: ModelConfig, image_size: int, num_classes: int, precision: str = "float32"
) -> keras.Model:
    """Build the configured model under the dtype policy of `precision`.

    Unrecoverable, naming the model, when it is not a Keras model mapping images of
    `image_size` to `num_classes` logits: a restart would build the same thing.
    """
    build = load_model_function(config.name)
    with dtype_policy(PRECISION_POLICIES[precision]):
        model = build(config, image_size, num_classes)
    check_model(model, config.name, image_size, num_classes)
    return model


def load_model_function(name: str) -> Callable:
    """The function `name` finds (see model_names.py), imported."""
    target = registered_models().get(name, name)
    module, _, function = target.partition(":")
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        raise Unrecoverable(f"model.name {name!r}: cannot import {module!r}: {exc}") from None
    found = getattr(imported, function, None)
    if not callable(found):
        raise Unrecoverable(f"model.name {name!r}: module {module!r} has no function {function!r}")
    return found


def check_model(model: object, name: str, image_size: int, num_classes: int) -> None:
    """A Keras model with variables, whose logits for a batch of images are (batch,
    num_classes); worked out symbolically, so no variable is read (under
    ParameterServerStrategy they live on the ps)."""
    if not isinstance(model, keras.Model):
        raise Unrecoverable(
            f"model.name {name!r} returned {type(model).__module__}.{type(model).__name__}, "
            "not a keras.Model"
        )
    images = keras.KerasTensor((None, image_size, image_size, 3))
    try:
        logits = model.compute_output_spec(images)
    except Exception as exc:  # the model cannot take such images at all
        raise Unrecoverable(
            f"model.name {name!r}: the model does not take images of shape "
            f"(batch, {image_size}, {image_size}, 3): {str(exc).strip().splitlines()[0]}"
        ) from None
    shape = tuple(getattr(logits, "shape", ()))
    if len(shape) != 2 or shape[1] != num_classes:
        raise Unrecoverable(
            f"model.name {name!r}: the model's output has shape {shape}; expected logits of "
            f"shape (batch, {num_classes}), one per class of the data"
        )
    if not model.trainable_variables:
        raise Unrecoverable(f"model.name {name!r}: the model has no trainable variables")


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
