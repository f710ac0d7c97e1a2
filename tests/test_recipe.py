"""The training recipe (steps.py): optimizer, learning-rate schedule with warmup, weight
decay, clipping and label smoothing from config keys, with real steps under every strategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from events import scalars
from processes import REPO, cli, small_job

from disttrain.config import ConfigError, DataConfig, ModelConfig, TrainConfig, load_config
from disttrain.data.pipeline import prepare_on_device, train_dataset
from disttrain.data.sources import list_split
from disttrain.models import build_model
from disttrain.steps import (
    learning_rate_at,
    make_learning_rate,
    make_optimizer,
    make_train_chunk,
    per_example_loss,
)

ENV_WITHOUT_TF_CONFIG = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
DATA = DataConfig(source="synthetic", synthetic_classes=4, image_size=16, batch_size=8)


def rates(config: TrainConfig, steps: list[int]) -> list[float]:
    schedule = make_learning_rate(config)
    return [round(learning_rate_at(schedule, step), 6) for step in steps]


def test_the_defaults_are_plain_adam_at_a_constant_rate():
    optimizer = make_optimizer(TrainConfig(), build_model(ModelConfig(width=4), 16, 4))
    assert type(optimizer) is keras.optimizers.Adam
    assert make_learning_rate(TrainConfig()) == 0.002
    assert optimizer.weight_decay is None and optimizer.global_clipnorm is None


def test_sgd_and_adamw_take_their_settings():
    model = build_model(ModelConfig(width=4), 16, 4)
    sgd = make_optimizer(TrainConfig(optimizer="sgd", momentum=0.8, nesterov=True), model)
    assert type(sgd) is keras.optimizers.SGD and sgd.momentum == 0.8 and sgd.nesterov
    adamw = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.05), model)
    assert type(adamw) is keras.optimizers.AdamW and adamw.weight_decay == 0.05


def test_cosine_warms_up_linearly_then_decays_to_the_minimum_at_the_last_step():
    config = TrainConfig(
        steps=110, learning_rate=0.1, lr_schedule="cosine", warmup_steps=10, min_learning_rate=0.01
    )
    assert rates(config, [0, 5, 10, 60, 110, 200]) == [0.0, 0.05, 0.1, 0.055, 0.01, 0.01]
    without_warmup = TrainConfig(steps=100, learning_rate=0.1, lr_schedule="cosine")
    assert rates(without_warmup, [0, 50, 100]) == [0.1, 0.05, 0.0]


def test_constant_and_piecewise_schedules_warm_up_the_same_way():
    constant = TrainConfig(learning_rate=0.4, warmup_steps=4)
    assert rates(constant, [0, 1, 4, 1000]) == [0.0, 0.1, 0.4, 0.4]
    piecewise = TrainConfig(
        lr_schedule="piecewise", lr_boundaries=[10, 20], lr_values=[0.3, 0.2, 0.1], warmup_steps=3
    )
    assert rates(piecewise, [0, 1, 3, 10, 11, 21]) == [0.0, 0.1, 0.3, 0.3, 0.2, 0.1]


def test_label_smoothing_moves_the_target_towards_uniform():
    logits = tf.constant([[2.0, 0.0, -1.0, 0.5]])
    labels = tf.constant([0])
    log_p = tf.nn.log_softmax(logits)[0].numpy()
    plain = float(per_example_loss(labels, logits)[0])
    smoothed = float(per_example_loss(labels, logits, 0.2)[0])
    assert plain == pytest.approx(-log_p[0], rel=1e-5)
    target = np.full(4, 0.2 / 4) + np.array([0.8, 0, 0, 0])
    assert smoothed == pytest.approx(-(target * log_p).sum(), rel=1e-5)


def test_the_schedule_continues_from_a_restored_checkpoint(tmp_path):
    """The optimizer's iterations drive the schedule and are checkpointed with it."""
    config = TrainConfig(steps=40, lr_schedule="cosine", learning_rate=0.05, warmup_steps=5)

    def trained(steps: int):
        model = build_model(ModelConfig(width=4, dropout=0.0), 16, 4)
        optimizer = make_optimizer(config, model)
        chunk = make_train_chunk(tf.distribute.get_strategy(), model, optimizer)
        if steps:
            iterator = iter(train_dataset(DATA, list_split(DATA, "train"), 1, 0, seed=1))
            chunk(iterator, tf.constant(steps))
        return tf.train.Checkpoint(model=model, optimizer=optimizer), optimizer

    checkpoint, _ = trained(7)
    prefix = checkpoint.write(str(tmp_path / "ckpt"))
    resumed, optimizer = trained(0)
    resumed.read(prefix).assert_existing_objects_matched()
    assert int(optimizer.iterations.numpy()) == 7
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(rates(config, [7])[0], 1e-5)


def test_a_full_recipe_trains_in_a_single_process():
    keras.utils.set_random_seed(3)
    config = TrainConfig(
        steps=20,
        optimizer="sgd",
        learning_rate=0.05,
        nesterov=True,
        weight_decay=1e-4,
        lr_schedule="cosine",
        warmup_steps=2,
        clip_global_norm=1.0,
        label_smoothing=0.1,
    )
    model = build_model(ModelConfig(width=4, dropout=0.0), 16, 4)
    optimizer = make_optimizer(config, model)
    chunk = make_train_chunk(
        tf.distribute.get_strategy(), model, optimizer, label_smoothing=0.1, clip_global_norm=1.0
    )
    iterator = iter(train_dataset(DATA, list_split(DATA, "train"), 1, 0, seed=1))
    loss_sum, _, examples, _ = (float(v) for v in chunk(iterator, tf.constant(5)))
    assert examples == 40 and np.isfinite(loss_sum)
    assert int(optimizer.iterations.numpy()) == 5
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(rates(config, [5])[0], 1e-5)


@pytest.mark.parametrize(
    "strategy, name, slots_on",
    [
        ("parameter_server", "ParameterServerStrategyV2", "/job:ps/"),
        ("multi_worker_mirrored", "CollectiveAllReduceStrategy", "/job:localhost/"),
    ],
)
def test_a_full_recipe_trains_under_each_distributed_strategy(strategy, name, slots_on):
    """Each in a fresh process: a strategy sets up TensorFlow's runtime for the process."""
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "recipe_under_strategy.py"), strategy],
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV_WITHOUT_TF_CONFIG, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["strategy"] == name and found["iterations"] == 3 and found["examples"] == 24
    assert found["learning_rate"] == pytest.approx(found["expected_learning_rate"])
    assert np.isfinite(found["loss_sum"])
    assert found["slot_devices"] and all(slots_on in d for d in found["slot_devices"])


def test_clipping_on_two_replicas_clips_the_global_batchs_gradient():
    """As MultiWorkerMirroredStrategy sums the replicas' gradients, the step clips their sum:
    one clipped step on two replicas moves the weights exactly as on one."""
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "recipe_under_strategy.py"), "clip"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV_WITHOUT_TF_CONFIG, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["replicas"] == 2
    assert found["step_norm"] == pytest.approx(0.01, rel=1e-3)  # learning rate 1 x the clip
    assert found["max_difference"] < 1e-6


def test_clipping_measures_a_loss_scaled_gradient_unscaled():
    keras.utils.set_random_seed(2)
    config = TrainConfig(
        optimizer="sgd", momentum=0.0, learning_rate=1.0, precision="mixed_float16"
    )
    model = build_model(ModelConfig(width=4, dropout=0.0), 16, 4, "mixed_float16")
    optimizer = make_optimizer(config, model)
    before = [v.numpy() for v in model.trainable_variables]
    chunk = make_train_chunk(
        tf.distribute.get_strategy(), model, optimizer, random_flip=False, clip_global_norm=0.01
    )
    chunk(iter(train_dataset(DATA, list_split(DATA, "train"), 1, 0, seed=1)), tf.constant(1))
    after = [v.numpy() for v in model.trainable_variables]
    step = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before)))
    assert step == pytest.approx(0.01, rel=1e-2)


def test_every_recipe_key_is_checked_and_every_problem_said_at_once():
    with pytest.raises(ConfigError) as error:
        load_config(
            None,
            [
                "train.optimizer=lamb",
                "train.momentum=1.5",
                "train.label_smoothing=1",
                "train.clip_global_norm=-1",
                "train.warmup_steps=-1",
                "train.lr_boundaries=[20, 10]",
                "train.lr_values=[0.1, 0]",
            ],
        )
    lines = [line.strip() for line in str(error.value).splitlines()[1:]]
    assert lines == [
        "train.optimizer: got 'lamb'; accepted: adam, adamw, sgd",
        "train.momentum: got 1.5; accepted: a number in [0, 1)",
        "train.warmup_steps: got -1; accepted: an integer >= 0 (0: no warmup)",
        "train.lr_boundaries: got [20, 10]; accepted: increasing step numbers >= 1",
        "train.lr_values: got [0.1, 0.0]; accepted: numbers > 0",
        "train.clip_global_norm: got -1.0; accepted: a number >= 0 (0: off)",
        "train.label_smoothing: got 1.0; accepted: a number in [0, 1)",
        "train.lr_boundaries: got [20, 10] with lr_schedule constant; accepted: [] (it is "
        "read only with lr_schedule: piecewise)",
        "train.lr_values: got [0.1, 0.0] with lr_schedule constant; accepted: [] (it is read "
        "only with lr_schedule: piecewise)",
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["train.optimizer=adamw"],
            "train.weight_decay: got 0 with adamw; accepted: > 0 (adamw without weight decay "
            "is adam)",
        ),
        (
            ["train.lr_schedule=piecewise", "train.lr_boundaries=[10]", "train.lr_values=[0.1]"],
            "train.lr_values: got [0.1] with lr_boundaries [10]; accepted: one rate more than "
            "boundaries",
        ),
        (
            ["train.min_learning_rate=0.1"],
            "train.min_learning_rate: got 0.1 with lr_schedule constant; accepted: 0 (it is "
            "read only with lr_schedule: cosine)",
        ),
        (
            ["train.lr_schedule=cosine", "train.min_learning_rate=0.1"],
            "train.min_learning_rate: got 0.1 above learning_rate 0.002; accepted: a number "
            "from 0 to learning_rate",
        ),
        (
            ["train.lr_schedule=cosine", "train.steps=100", "train.warmup_steps=100"],
            "train.warmup_steps: got 100 with steps 100 and decay_steps 0; accepted: fewer "
            "than train.steps (or set train.decay_steps)",
        ),
    ],
)
def test_recipe_keys_that_only_make_sense_together_are_refused(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("random_flip", [False, True])
def test_the_first_step_sees_the_batch_unflipped_only_without_random_flip(random_flip):
    """With dropout off, the first step's loss is the model's loss on the batch it was
    given: exactly so without flips; with them, some of the 8 images differ."""
    keras.utils.set_random_seed(5)
    model = build_model(ModelConfig(width=4, dropout=0.0), 16, 4)
    optimizer = make_optimizer(TrainConfig(), model)
    dataset = train_dataset(DATA, list_split(DATA, "train"), 1, 0, seed=1)
    images, labels = next(iter(dataset))
    as_given = prepare_on_device(images, training=False)
    before = float(tf.reduce_sum(per_example_loss(labels, model(as_given, training=False))))
    chunk = make_train_chunk(
        tf.distribute.get_strategy(), model, optimizer, random_flip=random_flip
    )
    loss_sum = float(chunk(iter(dataset), tf.constant(1))[0])
    assert (loss_sum == pytest.approx(before, rel=1e-5)) is not random_flip


def test_random_flip_is_a_data_key_on_by_default():
    assert load_config(None, []).data.random_flip is True
    assert load_config(None, ["data.random_flip=false"]).data.random_flip is False
    with pytest.raises(ConfigError, match="data.random_flip: got 'no'; accepted: true or false"):
        load_config(None, ["data.random_flip='no'"])


@pytest.mark.integration
def test_a_cosine_recipe_with_warmup_fine_tunes_with_a_ps_and_logs_its_learning_rate(
    tmp_path, builtin_data, disttrain_home
):
    """A whole recipe under ParameterServerStrategy, starting from a weights file written by
    plain Keras, its convolutions frozen: the chief loads the file into the ps variables,
    and training leaves the frozen ones bit-identical while the dense layers move."""
    run_dir = tmp_path / "run"
    keras.utils.set_random_seed(7)
    pretrained = build_model(ModelConfig(), 32, 6)  # the default model for the built-in data
    pretrained.save_weights(tmp_path / "pretrained.weights.h5")
    recipe = [
        "cluster.workers=1",
        "eval.enabled=false",
        "cluster.max_restarts=0",
        "data.batch_size=8",
        "train.steps=12",
        "train.steps_per_schedule=2",
        "checkpoint.every_steps=12",
        "train.optimizer=sgd",
        "train.nesterov=true",
        "train.learning_rate=0.05",
        "train.lr_schedule=cosine",
        "train.warmup_steps=4",
        "train.min_learning_rate=0.005",
        "train.weight_decay=0.0001",
        "train.clip_global_norm=1.0",
        "train.label_smoothing=0.1",
        f"train.init_from={tmp_path / 'pretrained.weights.h5'}",
        "train.freeze=[conv2d]",
    ]
    args = small_job(run_dir, builtin_data, *[a for s in recipe for a in ("--set", s)])
    cli("train", *args, check=True)

    chief = (disttrain_home / "local" / "t" / "logs" / "chief-0.log").read_text()
    assert "strategy: ParameterServerStrategyV2" in chief
    assert (
        "recipe | optimizer: sgd (momentum 0.9, nesterov) | learning rate: cosine 0.05 to "
        "0.005 over 8 steps, warmup 4 steps | weight decay: 0.0001 | clip global norm: 1.0 | "
        "label smoothing: 0.1"
    ) in chief
    logged = scalars(run_dir / "logs" / "train", "learning_rate")
    expected = make_learning_rate(load_config(None, recipe).train)
    assert sorted(logged) == [2, 4, 6, 8, 10, 12]
    for step, value in logged.items():
        assert value == pytest.approx(learning_rate_at(expected, step), rel=1e-5)
    assert logged[2] < logged[4] == pytest.approx(0.05) and logged[12] == pytest.approx(0.005)
    assert json.loads((run_dir / "DONE").read_text())["step"] == 12

    assert (
        f"init_from | loaded | the model's weights from {tmp_path / 'pretrained.weights.h5'} "
        "(not its optimizer or step) | starting at step 0"
    ) in chief
    assert "freeze | not trained: conv2d, conv2d_1, conv2d_2 (" in chief
    trained = build_model(ModelConfig(), 32, 6)
    prefix = run_dir / "checkpoints" / "ckpt-12" / "ckpt"
    tf.train.Checkpoint(model=trained).read(str(prefix)).expect_partial()
    for layer, started in zip(trained.layers, pretrained.layers):
        for after, before in zip(layer.weights, started.weights):
            same = after.numpy().tobytes() == before.numpy().tobytes()
            assert same is isinstance(layer, keras.layers.Conv2D), after.path
