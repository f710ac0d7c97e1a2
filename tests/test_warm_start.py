"""Fine-tuning (warm_start.py): a run that starts from another run's checkpoint or from a
Keras weights file, and layers frozen by name prefix. Real checkpoints of a run trained in
this process, real files (local and through fsspec), real steps."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from disttrain.cluster import CHIEF, ClusterShape, Task
from disttrain.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig, load_config
from disttrain.data.pipeline import train_dataset
from disttrain.data.sources import list_split
from disttrain.evaluator import Evaluator
from disttrain.failures import Unrecoverable
from disttrain.models import build_model
from disttrain.steps import make_optimizer, make_train_chunk
from disttrain.storage import RunDir
from disttrain.train import train
from disttrain.warm_start import freeze_layers, load_initial_weights, warm_start
from launchers.prepare import check_init_from

SOURCE_STEPS = 200  # about half the built-in shapes right; chance is 1 in 6
EARLIER_STEP = 100  # its other checkpoint
DATA = DataConfig(source="synthetic", synthetic_classes=4, image_size=16, batch_size=8)
ACCEPTED = (
    "accepted: another run's dir with a published checkpoint, or a Keras weights file "
    "(.weights.h5, .keras)"
)


@dataclass
class SourceRun:
    config: Config
    accuracy: float  # of its last checkpoint on the whole test split


def run_config(run_dir: Path | str, data_root: Path, *overrides: str) -> Config:
    """A run of the chief alone on the built-in shapes: no crops or flips, so it learns
    them in a few hundred steps."""
    return load_config(
        None,
        [
            f"run_dir={run_dir}",
            f"data.root={data_root}",
            "cluster.workers=0",
            "cluster.ps=0",
            "eval.enabled=false",
            "data.crop_min_area=1.0",
            "data.random_flip=false",
            "train.log_every_seconds=60",
            *overrides,
        ],
    )


def train_alone(config: Config) -> None:
    train(config, Task(CHIEF, 0), ClusterShape.of(config))


@pytest.fixture(scope="module")
def source_run(builtin_data, tmp_path_factory) -> SourceRun:
    """A run trained in this process, with checkpoints at EARLIER_STEP and SOURCE_STEPS."""
    keras.utils.set_random_seed(0)
    config = run_config(
        tmp_path_factory.mktemp("source") / "run",
        builtin_data,
        f"train.steps={SOURCE_STEPS}",
        f"checkpoint.every_steps={EARLIER_STEP}",
    )
    train_alone(config)
    evaluator = Evaluator(config)
    try:
        accuracy = evaluator.evaluate_step(SOURCE_STEPS, record=False)["accuracy"]
    finally:
        evaluator.close()
    return SourceRun(config, accuracy)


@pytest.mark.integration  # the module's source run trains 200 steps
def test_a_warm_start_begins_at_the_source_runs_accuracy_where_a_cold_start_is_at_chance(
    source_run, builtin_data, tmp_path
):
    source = source_run.config.run_dir
    config = run_config(tmp_path / "run", builtin_data, f"train.init_from={source}")
    evaluator = Evaluator(config)  # its model is built as the new run's chief builds it
    try:
        cold = evaluator.measure()["accuracy"]
        line = warm_start(evaluator.model, config.train, 0, tmp_path / "scratch")
        warm = evaluator.measure()["accuracy"]
    finally:
        evaluator.close()

    assert source_run.accuracy > 0.35
    assert cold < 0.3
    assert warm == pytest.approx(source_run.accuracy, abs=0.01)
    assert line == (
        f"init_from | loaded | the model's weights from ckpt-{SOURCE_STEPS} of {source} (not "
        "its optimizer or step) | starting at step 0"
    )
    assert not (tmp_path / "scratch").exists()  # the downloaded checkpoint is gone


@pytest.mark.integration  # the module's source run trains 200 steps
def test_init_from_step_reads_that_checkpoint_of_the_run(source_run, tmp_path):
    source, model_config = source_run.config.run_dir, source_run.config.model
    model = build_model(model_config, 32, 6)
    train_config = TrainConfig(init_from=source, init_from_step=EARLIER_STEP)
    loaded_from = load_initial_weights(model, train_config, tmp_path / "s")
    assert loaded_from == f"ckpt-{EARLIER_STEP} of {source}"

    reference = build_model(model_config, 32, 6)
    prefix = Path(source) / "checkpoints" / f"ckpt-{EARLIER_STEP}" / "ckpt"
    tf.train.Checkpoint(model=reference).read(str(prefix)).expect_partial()
    newest = build_model(model_config, 32, 6)
    load_initial_weights(newest, replace(train_config, init_from_step=0), tmp_path / "s")
    for loaded, expected in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(loaded.numpy(), expected.numpy())
    assert any(
        not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.weights, newest.weights)
    )


def saved_by_keras(path: Path) -> keras.Model:
    """A model built as disttrain builds it, given random weights and saved by plain Keras."""
    model = build_model(ModelConfig(width=4), 16, 4)
    rng = np.random.default_rng(1)
    for weight in model.trainable_weights:
        weight.assign(rng.normal(0, 0.1, weight.shape).astype(np.float32))
    if path.name.endswith(".keras"):
        model.save(path)
    else:
        model.save_weights(path)
    return model


@pytest.mark.parametrize("where", ["base.weights.h5", "base.keras", "memory://weights"])
def test_weights_saved_by_plain_keras_are_loaded_exactly(where, tmp_path):
    local = tmp_path / ("base.weights.h5" if where.startswith("memory://") else where)
    saved = saved_by_keras(local)
    source = str(local)
    if where.startswith("memory://"):  # a remote file: copied to scratch, then loaded
        RunDir(where).put_file(local, "base.weights.h5")
        source = f"{where}/base.weights.h5"
        local.unlink()

    model = build_model(ModelConfig(width=4), 16, 4)
    assert load_initial_weights(model, TrainConfig(init_from=source), tmp_path / "s") == source
    for loaded, expected in zip(model.trainable_weights, saved.trainable_weights):
        np.testing.assert_array_equal(loaded.numpy(), expected.numpy())


def trained_chunk(model: keras.Model, steps: int):
    """The training chunk of `model`, after `steps` steps of it."""
    optimizer = make_optimizer(TrainConfig(weight_decay=0.01), model)
    chunk = make_train_chunk(tf.distribute.get_strategy(), model, optimizer)
    chunk(iter(train_dataset(DATA, list_split(DATA, "train"), 1, 0, seed=1)), tf.constant(steps))
    return chunk


def assign_count(chunk) -> int:
    """How many variable writes a traced training chunk holds."""
    iterator = iter(train_dataset(DATA, list_split(DATA, "train"), 1, 0, seed=1))
    graph = chunk.get_concrete_function(iterator, tf.constant(1)).graph.as_graph_def()
    nodes = [node for function in graph.library.function for node in function.node_def]
    return sum(node.op == "AssignVariableOp" for node in nodes)


def test_frozen_layers_stay_bit_identical_while_the_others_train():
    keras.utils.set_random_seed(4)
    model = build_model(ModelConfig(width=4), 16, 4)
    line = freeze_layers(model, ["conv2d"])
    frozen = [layer for layer in model.layers if layer.name.startswith("conv2d")]
    before = {id(v): v.numpy().copy() for v in model.weights}
    chunk = trained_chunk(model, 3)  # weight decay too: it moves what the optimizer holds

    assert len(frozen) == 3 and all(not layer.trainable for layer in frozen)
    for variable in (v for layer in frozen for v in layer.weights):
        assert variable.numpy().tobytes() == before[id(variable)].tobytes()
    for variable in model.trainable_weights:  # the dense layers
        assert not np.array_equal(variable.numpy(), before[id(variable)])
    assert re.fullmatch(
        r"freeze \| not trained: conv2d\w*, conv2d\w*, conv2d\w* \(1,576 parameters\) \| "
        r"trained: 1,108 parameters",
        line,
    )
    # The step reads the frozen weights but writes none of them back (to the ps).
    unfrozen = trained_chunk(build_model(ModelConfig(width=4), 16, 4), 0)
    assert assign_count(chunk) == assign_count(unfrozen)


def test_a_prefix_matches_the_layers_of_a_nested_model_too():
    inner = keras.Sequential([keras.layers.Dense(3, name="backbone_dense")], name="backbone")
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inner(inputs)))
    freeze_layers(model, ["backbone_"])
    assert not inner.layers[0].trainable
    assert [v.path for v in model.trainable_weights] == ["head/kernel", "head/bias"]


@pytest.mark.parametrize(
    "prefixes, message",
    [
        (
            ["conv2d", "backbone"],
            "train.freeze: got ['conv2d', 'backbone'], but no layer of model small_cnn starts "
            "with 'backbone'; accepted: prefixes of its layers' names (conv2d",
        ),
        (
            ["conv", "dense"],
            "train.freeze: got ['conv', 'dense'], which freezes every layer of model small_cnn; "
            "accepted: prefixes that leave some layer to train",
        ),
    ],
)
def test_a_freeze_that_matches_nothing_or_everything_is_refused(prefixes, message):
    with pytest.raises(Unrecoverable) as error:
        freeze_layers(build_model(ModelConfig(width=4), 16, 4), prefixes)
    assert str(error.value).startswith(message)


@pytest.mark.integration  # the module's source run trains 200 steps
def test_a_checkpoint_of_another_width_names_the_layer_both_shapes_and_the_source(
    source_run, tmp_path
):
    source = source_run.config.run_dir
    model = build_model(ModelConfig(width=16), 32, 6)  # the source run's is 32
    with pytest.raises(Unrecoverable) as error:
        load_initial_weights(model, TrainConfig(init_from=source), tmp_path / "s")
    assert re.fullmatch(
        r"train.init_from: layer (conv2d\w*) does not fit: small_cnn/\1/kernel has shape "
        r"\(3, 3, 3, 16\) in this model and \(3, 3, 3, 32\) in "
        + re.escape(f"ckpt-{SOURCE_STEPS} of {source}; the source must be the same model ")
        + r"\(model.name and its settings, data.image_size, the number of classes\)",
        str(error.value),
    )


def test_a_weights_file_with_another_head_names_the_layer_both_shapes_and_the_file(tmp_path):
    path = tmp_path / "four_classes.weights.h5"
    saved_by_keras(path)
    model = build_model(ModelConfig(width=4), 16, 3)
    with pytest.raises(Unrecoverable) as error:
        load_initial_weights(model, TrainConfig(init_from=str(path)), tmp_path / "s")
    assert re.match(
        r"train.init_from: layer (dense\w*) does not fit: small_cnn/\1/kernel has shape "
        r"\(16, 3\) in this model and \(16, 4\) in " + re.escape(str(path)),
        str(error.value),
    )


@pytest.mark.parametrize(
    "source, step, problem",
    [
        ("nowhere", 0, "train.init_from: got '{source}', which does not exist; " + ACCEPTED),
        (
            "empty",
            0,
            "train.init_from: got '{source}', a folder with no published checkpoint (no "
            "checkpoints/LATEST); " + ACCEPTED,
        ),
        (
            "gone.weights.h5",
            0,
            "train.init_from: got '{source}', which does not exist; " + ACCEPTED,
        ),
        (
            "memory://nothing/here.keras",
            0,
            "train.init_from: got '{source}', which does not exist; " + ACCEPTED,
        ),
        pytest.param(
            "the source run",
            150,
            "train.init_from_step: got 150, but {source} has no checkpoint of that step; "
            "accepted: 0 (the newest) or a published step: 100, 200",
            marks=pytest.mark.integration,  # the source run trains 200 steps
        ),
    ],
)
def test_a_missing_source_is_one_line_from_the_launcher_and_from_the_chief(
    source, step, problem, builtin_data, tmp_path, request
):
    if source == "the source run":
        source = request.getfixturevalue("source_run").config.run_dir
    elif "://" not in source:
        source = str(tmp_path / source)
    (tmp_path / "empty").mkdir()
    config = run_config(
        tmp_path / "run", builtin_data, f"train.init_from={source}", f"train.init_from_step={step}"
    )
    expected = problem.format(source=source)

    with pytest.raises(ConfigError) as refused:  # the local launcher, before any task starts
        check_init_from(config)
    with pytest.raises(Unrecoverable) as failed:  # the chief, before its first step
        warm_start(build_model(config.model, 32, 6), config.train, 0, tmp_path / "s")
    assert str(refused.value) == str(failed.value) == expected


@pytest.mark.integration  # the module's source run trains 200 steps
def test_a_run_dir_with_its_own_checkpoint_resumes_and_ignores_init_from(
    source_run, builtin_data, tmp_path, capsys
):
    shutil.copytree(source_run.config.run_dir, tmp_path / "run")
    gone = tmp_path / "gone"  # not looked for: the run has weights of its own
    config = run_config(
        tmp_path / "run",
        builtin_data,
        f"train.steps={SOURCE_STEPS + 2}",
        "train.steps_per_schedule=2",
        f"train.init_from={gone}",
    )
    capsys.readouterr()
    check_init_from(config)
    train_alone(config)

    out = capsys.readouterr().out
    assert f"checkpoint | restored | ckpt-{SOURCE_STEPS} | resuming at step {SOURCE_STEPS}" in out
    mentions = [line for line in out.splitlines() if "init_from" in line]
    assert len(mentions) == 1
    assert mentions[0].endswith(
        f"init_from | ignored | the run resumed from its own ckpt-{SOURCE_STEPS}; "
        f"train.init_from ({gone}) only starts a new run"
    )
    assert json.loads((tmp_path / "run" / "DONE").read_text())["step"] == SOURCE_STEPS + 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["train.init_from_step=-1"],
            "train.init_from_step: got -1; accepted: an integer >= 0 (0: the newest checkpoint)",
        ),
        (
            ["train.freeze=[conv2d, conv2d]"],
            "train.freeze: got ['conv2d', 'conv2d']; accepted: layer-name prefixes, each "
            "non-empty, without spaces around it, none twice",
        ),
        (["train.freeze=['']"], "train.freeze: got ['']; accepted: layer-name prefixes"),
        (["train.freeze=conv2d"], "train.freeze: got 'conv2d'; accepted: a list"),
        (
            ["train.init_from=base.h5"],
            "train.init_from: got 'base.h5', a legacy HDF5 file; accepted: a run dir, or a "
            "Keras weights file (.weights.h5, .keras)",
        ),
        (
            ["train.init_from_step=100"],
            "train.init_from_step: got 100 with init_from ''; accepted: 0 (a step is read only "
            "when train.init_from is a run dir)",
        ),
        (
            ["train.init_from=base.weights.h5", "train.init_from_step=100"],
            "train.init_from_step: got 100 with init_from 'base.weights.h5'; accepted: 0",
        ),
        (
            ["run_dir=runs/a", "train.init_from=runs/a/"],
            "train.init_from: got 'runs/a/', this run's own run_dir; accepted: another run's "
            "dir or a weights file (a run dir resumes from its own checkpoints by itself)",
        ),
        (
            ["train.init_from=az://c/base.weights.h5?sv=1&sig=PLANTED"],
            "train.init_from: got az://c/base.weights.h5?<query hidden>; accepted: a URL "
            "without a query string",
        ),
        (
            ["train.init_from=az:///base.weights.h5"],
            "train.init_from: got 'az:///base.weights.h5', which names no container",
        ),
    ],
)
def test_bad_fine_tuning_keys_are_refused_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert str(error.value).startswith(message)
    assert "PLANTED" not in str(error.value)


def test_the_fine_tuning_keys_default_to_a_cold_start_with_every_layer_trained():
    train_config = load_config(None, []).train
    assert (train_config.init_from, train_config.init_from_step, train_config.freeze) == (
        "",
        0,
        [],
    )
