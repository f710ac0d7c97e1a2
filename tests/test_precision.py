"""Precision and XLA in the step function, in process on CPU (no mocks, real steps)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from disttrain.config import ConfigError, DataConfig, ModelConfig, TrainConfig, load_config
from disttrain.data.pipeline import train_dataset
from disttrain.data.sources import list_split
from disttrain.models import build_model
from disttrain.steps import make_optimizer, make_train_chunk

DATA = DataConfig(source="synthetic", synthetic_classes=4, image_size=16, batch_size=8)


def run_chunk(precision: str, jit_compile: bool = False, steps: int = 3, seed: int = 3):
    keras.utils.set_random_seed(seed)
    model = build_model(ModelConfig(width=8, dropout=0.0), 16, 4, precision)
    optimizer = make_optimizer(TrainConfig(precision=precision), model)
    chunk = make_train_chunk(tf.distribute.get_strategy(), model, optimizer, jit_compile)
    iterator = iter(train_dataset(DATA, list_split(DATA, "train"), 1, 0, seed=1))
    sums = [float(v) for v in chunk(iterator, tf.constant(steps))]
    return model, optimizer, sums


@pytest.mark.parametrize(
    "precision, compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")]
)
def test_mixed_precision_computes_in_half_and_keeps_float32_variables(precision, compute):
    model, optimizer, (loss_sum, _, examples, bad) = run_chunk(precision)

    assert model.layers[0].compute_dtype == compute
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert model.layers[-1].compute_dtype == "float32"  # logits stay float32
    assert examples == 24 and bad == 0 and np.isfinite(loss_sum)
    assert int(optimizer.iterations.numpy()) == 3


def test_float16_uses_dynamic_loss_scaling():
    _, optimizer, _ = run_chunk("mixed_float16")
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.dynamic_scale.numpy()) > 1.0


def test_jit_compiled_step_learns_the_cached_batch():
    # XLA ignores the flip's seed, so the two runs cannot be compared number for number;
    # on the one cached synthetic batch, both must drive the loss down alike.
    _, _, plain = run_chunk("float32", jit_compile=False, steps=30)
    model, _, compiled = run_chunk("float32", jit_compile=True, steps=30)
    _, _, first = run_chunk("float32", jit_compile=True, steps=1)
    loss_per_example = lambda sums: sums[0] / sums[2]  # noqa: E731
    assert loss_per_example(compiled) < 0.8 * loss_per_example(first)
    assert loss_per_example(compiled) == pytest.approx(loss_per_example(plain), rel=0.25)


def test_precision_and_jit_are_validated_config_keys():
    config = load_config(None, ["train.precision=mixed_bfloat16", "train.jit_compile=true"])
    assert config.train.precision == "mixed_bfloat16" and config.train.jit_compile
    with pytest.raises(ConfigError, match="train.precision: got 'float8'; accepted: float32"):
        load_config(None, ["train.precision=float8"])
