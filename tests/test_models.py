"""The model zoo: shapes, models found by name (registered or `module:function`), and real
training runs of each model on the local cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from processes import REPO, cli, install_plugin, small_job

from disttrain.config import ConfigError, ModelConfig, load_config
from disttrain.failures import EXIT_UNRECOVERABLE, Unrecoverable
from disttrain.model_names import BUILTIN_MODELS, ENTRY_POINT_GROUP

# Tasks import `user_models` (tests/user_models.py) from their PYTHONPATH, as a job would
# import a user's own package.
ON_PATH = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
TESTS_ON_PATH = {"PYTHONPATH": os.pathsep.join(ON_PATH)}


@pytest.mark.parametrize(
    "name, size, classes",
    [("small_cnn", 32, 6), ("alexnet", 224, 2), ("resnet50", 32, 10)],
)
def test_each_model_takes_the_data_shape_and_returns_logits(name, size, classes):
    import numpy as np

    from disttrain.models import build_model

    model = build_model(ModelConfig(name=name), size, classes)
    logits = model(np.zeros((2, size, size, 3), "float32"), training=False)
    assert tuple(logits.shape) == (2, classes)


def test_alexnet_at_224_is_the_2017_samples_size():
    from disttrain.models import build_model

    model = build_model(ModelConfig(name="alexnet"), 224, 2)
    # One tower, 64-192-384-384-256 convolutions, a 7x7x256 map, two 4096 dense layers.
    assert 71e6 < model.count_params() < 72e6


def test_the_builtin_models_register_in_the_entry_point_group():
    """One path for every model: the built-ins are entry points like a third party's (the
    loader's BUILTIN_MODELS stands in only for an install made before the group existed)."""
    tomllib = pytest.importorskip("tomllib")  # 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"][ENTRY_POINT_GROUP] == BUILTIN_MODELS


def test_a_model_function_named_by_import_path_gets_its_options():
    from disttrain.models import build_model

    config = load_config(None, ["model.name=user_models:tiny_mlp", "model.options={hidden: 5}"])
    assert config.model.options == {"hidden": 5}
    model = build_model(config.model, 16, 3)
    assert model.name == "tiny" and model.layers[-2].units == 5


@pytest.mark.parametrize(
    "name, why",
    [
        ("no_such_package.models:net", "module 'no_such_package.models' not found"),
        ("user_models:no_such_function", "module 'user_models' ("),
        ("resnet", "no model is registered under this name"),
        ("user_models", "no model is registered under this name"),
        ("user_models:1st", "expected package.module:function"),
    ],
)
def test_a_model_name_that_finds_no_function_is_refused_when_the_config_loads(name, why):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"model.name={name}", "model.width=0"])
    lines = str(error.value).splitlines()  # every problem at once, one line each
    line = next(x for x in lines if "model.name" in x)
    assert line.strip().startswith(f"model.name: got {name!r} ({why}")
    accepted = "alexnet, resnet50, small_cnn (entry-point group disttrain.models) or package."
    assert line.endswith(f"; accepted: {accepted}module:function")
    assert any("model.width: got 0" in x for x in lines)
    if name == "user_models:no_such_function":
        assert "has no function 'no_such_function'" in line


def test_model_options_are_a_mapping_of_names():
    with pytest.raises(ConfigError, match=r"model.options: got \{'a-b': 1\}; accepted: a mapping"):
        load_config(None, ["model.options={a-b: 1}"])
    with pytest.raises(ConfigError, match="model.options: got 3; accepted: a mapping of names"):
        load_config(None, ["model.options=3"])


@pytest.mark.parametrize(
    "name, why",
    [
        ("user_models:not_a_model", "returned builtins.str, not a keras.Model"),
        (
            "user_models:one_logit_too_many",
            "the model's output has shape (None, 4); expected logits of shape (batch, 3)",
        ),
    ],
)
def test_a_model_function_that_builds_no_fitting_model_is_unrecoverable(name, why):
    from disttrain.models import build_model

    with pytest.raises(Unrecoverable) as error:
        build_model(ModelConfig(name=name), 16, 3)
    assert str(error.value).startswith(f"model.name {name!r}") and why in str(error.value)


def test_a_task_whose_model_does_not_fit_exits_4_with_one_error_line(tmp_path):
    """Found before the first step, and said once: a restart would build the same model."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "run_dir: " + str(tmp_path / "run") + "\n"
        "data: {source: synthetic, synthetic_classes: 3, image_size: 16}\n"
        "model: {name: 'user_models:one_logit_too_many'}\n"
        "cluster: {workers: 0, ps: 0}\n"
        "eval: {enabled: false}\n"
    )
    result = cli("task", "--config", str(config), env={**TESTS_ON_PATH, "TF_CONFIG": ""})
    assert result.returncode == EXIT_UNRECOVERABLE, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model.name 'user_models:one_logit_too_many': the model's output has shape "
        "(None, 4); expected logits of shape (batch, 3), one per class of the data"
    )
    assert "Traceback" not in result.stderr


def test_a_task_that_cannot_find_the_model_exits_4_with_one_error_line(tmp_path):
    """The submitter found it, this task's environment does not: restarts would not help."""
    config = tmp_path / "config.yaml"
    config.write_text("model: {name: 'user_models:tiny_mlp'}\ncluster: {workers: 0, ps: 0}\n")
    without_tests = {"PYTHONPATH": str(REPO), "TF_CONFIG": ""}
    result = cli("task", "--config", str(config), env=without_tests)
    assert result.returncode == EXIT_UNRECOVERABLE, result.stderr[-3000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: model.name: got 'user_models:tiny_mlp' (module 'user_models' not found")
    )
    assert result.stderr.strip().endswith("(in this task's environment)")


TINY_MODEL_PACKAGE = REPO / "tests" / "plugins" / "tiny_model"


@pytest.fixture(scope="module")
def tiny_model_installed(tmp_path_factory) -> dict[str, str]:
    """A package that registers the model `tiny`, installed by pip into a folder of its own."""
    target = install_plugin(TINY_MODEL_PACKAGE, tmp_path_factory.mktemp("site"))
    return {"PYTHONPATH": os.pathsep.join([str(target), str(REPO)]), "TF_CONFIG": ""}


def test_a_model_another_package_registers_is_found_by_name_and_trains(
    tiny_model_installed, tmp_path
):
    wrong = cli("train", "--dry-run", "--set", "model.name=tiyn", env=tiny_model_installed)
    assert wrong.returncode == 2
    assert "accepted: alexnet, resnet50, small_cnn, tiny (entry-point group" in wrong.stderr

    config = tmp_path / "config.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "data: {source: synthetic, synthetic_classes: 3, image_size: 16, batch_size: 4}\n"
        "model: {name: tiny, options: {filters: 3}}\n"
        "train: {steps: 2, steps_per_schedule: 2}\n"
        "checkpoint: {every_steps: 2}\n"
        "cluster: {workers: 0, ps: 0}\n"
        "eval: {enabled: false}\n"
    )
    result = cli("task", "--config", str(config), env=tiny_model_installed)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model: tiny |" in result.stdout
    assert json.loads((tmp_path / "run" / "DONE").read_text())["step"] == 2


def tiny_folder(
    builtin: Path, root: Path, per_class: int = 12, classes: tuple[str, str] = ("circle", "square")
) -> Path:
    """Two classes of the built-in dataset plus one corrupt JPEG in the training split."""
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for path in sorted((builtin / split / name).glob("*.jpg"))[:per_class]:
                shutil.copy(path, root / split / name / path.name)
    corrupt = root / "train" / classes[1] / "corrupt.jpg"
    corrupt.write_bytes((root / "train" / classes[1] / "00000.jpg").read_bytes()[:300])
    return root


def job_args(run_dir: Path, data: Path, *extra: str) -> list[str]:
    sets = [
        "data.source=image_folder",
        "data.batch_size=4",
        "cluster.workers=1",
        "cluster.max_restarts=0",
        "eval.enabled=false",
        *extra,
    ]
    return small_job(run_dir, data, *[a for s in sets for a in ("--set", s)])


def worker_log(home: Path, name: str) -> str:
    return (home / "local" / name / "logs" / "worker-0.log").read_text()


@pytest.mark.integration
def test_alexnet_trains_in_bfloat16_with_xla_and_skips_a_corrupt_jpeg(
    tmp_path, builtin_data, disttrain_home
):
    data = tiny_folder(builtin_data, tmp_path / "data")
    result = cli(
        "train",
        *job_args(
            tmp_path / "run",
            data,
            "model.name=alexnet",
            "train.precision=mixed_bfloat16",
            "train.jit_compile=true",
            "train.steps=10",
            "train.steps_per_schedule=5",
            "checkpoint.every_steps=10",
        ),
        check=True,
    )
    assert "model: alexnet | precision: mixed_bfloat16 | jit_compile: True" in result.stdout
    assert "data | bad files skipped so far: 1" in result.stdout
    assert json.loads((tmp_path / "run" / "DONE").read_text())["step"] == 10
    log = worker_log(disttrain_home, "t")
    assert log.count(str(data / "train" / "square" / "corrupt.jpg")) == 1


@pytest.mark.integration
def test_a_model_defined_outside_disttrain_trains_on_chief_worker_and_ps(
    tmp_path, builtin_data, disttrain_home
):
    run_dir = tmp_path / "run"
    args = job_args(
        run_dir,
        builtin_data,
        "data.source=builtin",
        "model.name=user_models:tiny_mlp",
        "model.options={hidden: 6}",
        "train.steps=6",
        "train.steps_per_schedule=3",
        "checkpoint.every_steps=6",
        "cluster.workers=2",
        "eval.enabled=true",
    )
    cli("train", *args, env=TESTS_ON_PATH, check=True)
    chief = (disttrain_home / "local" / "t" / "logs" / "chief-0.log").read_text()
    assert "strategy: ParameterServerStrategyV2 | model: user_models:tiny_mlp" in chief
    assert json.loads((run_dir / "DONE").read_text())["step"] == 6
    stored = (run_dir / "config.yaml").read_text()
    assert "name: user_models:tiny_mlp" in stored and "hidden: 6" in stored
    # Its best export classifies image files through the bytes signature.
    images = sorted((builtin_data / "test" / "ring").glob("*.jpg"))[:3]
    table = cli("predict", "--run-dir", str(run_dir), *map(str, images), env=TESTS_ON_PATH)
    rows = table.stdout.splitlines()
    assert table.returncode == 0 and rows[0].split() == ["IMAGE", "CLASS", "PROBABILITY"], table
    names = json.loads((run_dir / "class_names.json").read_text())
    for row, image in zip(rows[1:], images, strict=True):
        shown, name, probability = row.split()
        assert shown == str(image) and name in names and 0.0 < float(probability) <= 1.0


@pytest.mark.integration
def test_a_corrupt_jpeg_fails_the_job_with_its_path_when_configured(
    tmp_path, builtin_data, disttrain_home
):
    data = tiny_folder(builtin_data, tmp_path / "data", per_class=3)
    result = cli(
        "train",
        *job_args(
            tmp_path / "run",
            data,
            "data.on_bad_file=fail",
            "train.steps=20",
            "cluster.max_restarts=2",
        ),
    )
    assert result.returncode != 0
    corrupt = str(data / "train" / "square" / "corrupt.jpg")
    # Said once, as the job's reason; not retried, since a restart would read the same file.
    reason = "chief-0 stopped: data.on_bad_file is fail and this file is not a decodable image: "
    reason += corrupt
    assert f"job failed: {reason}" in result.stdout, result.stdout[-3000:]
    assert "restarting" not in result.stdout
    # TensorFlow's own copies of the error stay in the task logs, off the console.
    chief_log = (disttrain_home / "local" / "t" / "logs" / "chief-0.log").read_text()
    assert "encountered the following error when processing closure" in chief_log
    for copy in ("encountered the following error", "Truncated error message", "Detected at"):
        assert copy not in result.stdout + result.stderr
    status = cli("status", "t").stdout
    assert reason in status
    assert not (tmp_path / "run" / "DONE").exists()


@pytest.mark.integration
def test_resuming_a_run_with_other_classes_fails_once_and_keeps_the_runs_config(
    tmp_path, builtin_data, disttrain_home
):
    run_dir = tmp_path / "run"
    six_classes = ["data.source=builtin", f"data.root={builtin_data}", "train.steps=10"]
    cli(
        "train",
        *job_args(run_dir, builtin_data, *six_classes, "checkpoint.every_steps=10"),
        check=True,
    )
    stored = (run_dir / "config.yaml").read_text()

    two_classes = tiny_folder(builtin_data, tmp_path / "data")
    again = job_args(run_dir, two_classes, "train.steps=20", "cluster.max_restarts=2")
    result = cli("train", *again)
    assert result.returncode != 0
    assert (
        f"job failed: chief-0 stopped: run dir {run_dir} trains on the classes circle, cross, "
        "ring, square, stripes, triangle; this config's data has circle, square."
    ) in result.stdout, result.stdout[-3000:]
    assert "restarting" not in result.stdout
    assert (run_dir / "config.yaml").read_text() == stored  # the run can still be evaluated


@pytest.mark.integration
def test_resuming_with_as_many_other_classes_fails_too(tmp_path, builtin_data, disttrain_home):
    """Their checkpoint restores without an error: only the recorded names tell them apart."""
    run_dir = tmp_path / "run"
    first = tiny_folder(builtin_data, tmp_path / "first")
    cli("train", *job_args(run_dir, first, "train.steps=4", "checkpoint.every_steps=4"), check=True)
    other = tiny_folder(builtin_data, tmp_path / "other", classes=("ring", "cross"))
    result = cli("train", *job_args(run_dir, other, "train.steps=8"))
    assert result.returncode != 0
    assert "trains on the classes circle, square; this config's data has cross, ring" in (
        result.stdout
    ), result.stdout[-3000:]
    assert json.loads((run_dir / "checkpoints" / "LATEST").read_text())["step"] == 4


@pytest.mark.integration
def test_resnet50_partitioned_over_two_ps_trains_checkpoints_and_resumes(
    tmp_path, builtin_data, disttrain_home
):
    data = tiny_folder(builtin_data, tmp_path / "data")
    run_dir = tmp_path / "run"
    common = [
        "model.name=resnet50",
        "cluster.ps=2",
        "model.partition_min_shard_bytes=1000000",
        "train.steps_per_schedule=2",
        "checkpoint.every_steps=2",
    ]
    first = cli("train", *job_args(run_dir, data, *common, "train.steps=2"), check=True)

    sharded = re.search(r"sharded across ps: (.*)", first.stdout).group(1)
    assert "(2 shards)" in sharded  # large kernels are split over both ps
    assert json.loads((run_dir / "checkpoints" / "LATEST").read_text())["step"] == 2

    second = cli("train", *job_args(run_dir, data, *common, "train.steps=4"), check=True)

    assert "checkpoint | restored | ckpt-2 | resuming at step 2" in second.stdout
    assert json.loads((run_dir / "DONE").read_text())["step"] == 4
    # The checkpoint holds whole variables: an unpartitioned model (the evaluator's) reads it.
    import tensorflow as tf

    from disttrain.models import build_model

    model = build_model(ModelConfig(name="resnet50"), 32, 2)
    before = model.layers[-1].kernel.numpy().copy()
    prefix = run_dir / "checkpoints" / "ckpt-4" / "ckpt"
    tf.train.Checkpoint(model=model).read(
        str(prefix)
    ).expect_partial().assert_existing_objects_matched()
    assert (model.layers[-1].kernel.numpy() != before).any()
