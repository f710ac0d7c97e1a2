"""The evaluator sidecar on real checkpoints: order, once-only, DONE, the best export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from processes import REPO

from disttrain.checkpoints import (
    fetch_checkpoint,
    publish_checkpoint,
    published_steps,
    referenced_steps,
    staged_prefix,
)
from disttrain.config import Config, load_config
from disttrain.data.pipeline import eval_dataset, prepare_on_device
from disttrain.data.sources import list_split
from disttrain.done import write_done
from disttrain.evaluator import Evaluator
from disttrain.export import (
    BYTES_SIGNATURE,
    SERVING_SIGNATURE,
    best_metrics,
    export_saved_model,
    publish_export,
    repair_best_export,
)
from disttrain.models import build_model
from disttrain.storage import (
    BEST_EXPORT,
    BEST_EXPORT_NEXT,
    BEST_METRICS,
    EVAL_RESULTS,
    SERVING_EXPORT,
    RunDir,
)


def eval_config(run_dir: str, data_root: Path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"run_dir={run_dir}",
            f"data.root={data_root}",
            "eval.max_examples=96",
            "eval.batch_size=32",
            "eval.poll_seconds=0.2",
            *overrides,
        ],
    )


class CheckpointMaker:
    """Publishes real checkpoints of the configured model, each with different weights."""

    def __init__(self, config: Config, staging: Path):
        classes = len(list_split(config.data, config.data.test_split).class_names)
        self.model = build_model(config.model, config.data.image_size, classes)
        self.run_dir, self.staging = RunDir(config.run_dir), staging
        self.rng = np.random.default_rng(0)

    def publish(self, step: int) -> None:
        for weight in self.model.weights:
            weight.assign(self.rng.normal(0, 0.05, weight.shape).astype(np.float32))
        prefix = staged_prefix(self.staging, step)
        tf.train.Checkpoint(model=self.model).write(str(prefix))
        publish_checkpoint(self.run_dir, prefix.parent, step, keep=100, log=lambda _: None)


def results(run_dir: RunDir) -> list[dict]:
    return [json.loads(line) for line in run_dir.read_text(EVAL_RESULTS).splitlines()]


def test_evaluator_evaluates_every_checkpoint_once_in_order_and_finishes_after_done(
    azurite_env, builtin_data, tmp_path
):
    config = eval_config(f"az://{azurite_env.create_container()}/run", builtin_data)
    run_dir = RunDir(config.run_dir)
    maker = CheckpointMaker(config, tmp_path / "staging")
    evaluator = Evaluator(config)
    started = time.time()
    sidecar = threading.Thread(target=evaluator.run_continuously, daemon=True)
    sidecar.start()

    maker.publish(100)
    deadline = time.monotonic() + 120
    while not run_dir.exists(EVAL_RESULTS):
        assert sidecar.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    for step in (200, 300, 400):  # faster than it polls: it catches up in order
        maker.publish(step)
    while len(results(run_dir)) < 4:
        assert sidecar.is_alive()
        time.sleep(0.1)
    time.sleep(1.0)  # several polls with nothing new and no DONE: it keeps waiting
    assert sidecar.is_alive()
    maker.publish(500)
    write_done(run_dir, config.train.steps)
    sidecar.join(timeout=120)
    evaluator.close()

    assert not sidecar.is_alive()
    assert [r["step"] for r in results(run_dir)] == [100, 200, 300, 400, 500]
    assert all(r["examples"] == 96 for r in results(run_dir))
    evaluated_at = [r["evaluated_at"] for r in results(run_dir)]
    assert evaluated_at == sorted(evaluated_at)
    assert started <= evaluated_at[0] and evaluated_at[-1] <= time.time()
    # Eval summaries were mirrored into the run dir.
    assert any(name.startswith("events.out.tfevents") for name in run_dir.list_names("logs/eval"))


def test_best_export_is_the_best_checkpoint_and_serves_its_predictions(
    azurite_env, builtin_data, tmp_path
):
    config = eval_config(f"az://{azurite_env.create_container()}/run", builtin_data)
    run_dir = RunDir(config.run_dir)
    maker = CheckpointMaker(config, tmp_path / "staging")
    for step in (100, 200, 300, 400):
        maker.publish(step)
    write_done(run_dir, config.train.steps)
    evaluator = Evaluator(config)
    evaluator.run_continuously()
    evaluator.close()

    evaluated = results(run_dir)
    best = max(evaluated, key=lambda r: r["accuracy"])  # the first of equals is kept
    metrics = json.loads(run_dir.read_text(BEST_METRICS))
    assert metrics["step"] == best["step"] and metrics["metric"] == "accuracy"
    assert metrics["accuracy"] == best["accuracy"] and metrics["class_names"]

    export = tmp_path / "export"
    for relative in run_dir.list_files(BEST_EXPORT):
        run_dir.get_file(f"{BEST_EXPORT}/{relative}", export / relative)
    signatures = tf.saved_model.load(str(export)).signatures
    images, _ = next(iter(eval_dataset(config.data, evaluator.split, 16)))
    served = signatures[SERVING_SIGNATURE](images=images)["logits"].numpy()

    restored = build_model(config.model, config.data.image_size, len(metrics["class_names"]))
    _, prefix = fetch_checkpoint(run_dir, tmp_path / "restore", step=metrics["step"])
    tf.train.Checkpoint(model=restored).read(str(prefix)).expect_partial()
    expected = restored(prepare_on_device(images, training=False), training=False).numpy()
    # Same graph, same weights; only float rounding (oneDNN op order) may differ.
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_array_equal(served.argmax(-1), expected.argmax(-1))

    # The bytes signature on the JPEG files the evaluator scored (eval.max_examples, in split
    # order): their pixels as evaluation decoded them, and the accuracy the evaluator recorded.
    files = evaluator.split.files[: config.eval.max_examples]
    labels = np.array(evaluator.split.labels[: config.eval.max_examples])
    from_files = signatures[BYTES_SIGNATURE](
        image_bytes=tf.constant([Path(f).read_bytes() for f in files])
    )
    pixels = np.concatenate([x for x, _ in eval_dataset(config.data, evaluator.split, 32, 96)])
    from_pixels = signatures[SERVING_SIGNATURE](images=pixels)["probabilities"].numpy()
    np.testing.assert_allclose(from_files["probabilities"].numpy(), from_pixels, atol=1e-6)
    classes = from_files["class_index"].numpy()
    assert np.mean(classes == labels) == best["accuracy"]
    names = [name.decode() for name in from_files["class_name"].numpy()]
    assert names == [metrics["class_names"][i] for i in classes]
    # The same SavedModel is TensorFlow Serving's one version: the best step.
    assert run_dir.list_names(SERVING_EXPORT) == [str(best["step"])]
    assert run_dir.exists(f"{SERVING_EXPORT}/{best['step']}/saved_model.pb")


def test_latest_only_skips_older_checkpoints_and_loss_picks_the_lowest(builtin_data, tmp_path):
    config = eval_config(
        str(tmp_path / "run"), builtin_data, "eval.latest_only=true", "eval.best_metric=loss"
    )
    run_dir = RunDir(config.run_dir)
    maker = CheckpointMaker(config, tmp_path / "staging")
    for step in (100, 200, 300):
        maker.publish(step)
    evaluator = Evaluator(config)
    evaluated: set[int] = set()
    assert evaluator.poll(evaluated) is False  # no DONE yet
    maker.publish(400)
    write_done(run_dir, config.train.steps)
    assert evaluator.poll(evaluated) is True
    evaluator.close()

    steps = [r["step"] for r in results(run_dir)]
    assert steps == [300, 400]
    lowest = min(results(run_dir), key=lambda r: r["loss"])
    assert json.loads(run_dir.read_text(BEST_METRICS))["step"] == lowest["step"]


def test_a_restarted_evaluator_does_not_evaluate_a_checkpoint_twice(builtin_data, tmp_path):
    config = eval_config(str(tmp_path / "run"), builtin_data)
    run_dir = RunDir(config.run_dir)
    maker = CheckpointMaker(config, tmp_path / "staging")
    maker.publish(100)
    first = Evaluator(config)
    first.poll(set())
    first.close()
    maker.publish(200)
    write_done(run_dir, config.train.steps)
    second = Evaluator(config)
    second.run_continuously()
    second.close()
    assert [r["step"] for r in results(run_dir)] == [100, 200]


def test_retention_keeps_checkpoints_the_evaluator_has_not_reached(tmp_path):
    from functools import partial

    from disttrain.checkpoints import awaiting_evaluation, publish_checkpoint, published_steps
    from disttrain.storage import EVAL_RESULTS, RunDir

    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.write_text(EVAL_RESULTS, '{"step": 100}\n')
    publish = partial(
        publish_checkpoint,
        run_dir,
        keep=1,
        unevaluated_steps=lambda: awaiting_evaluation(run_dir),
        max_unevaluated=10,
        log=lambda _: None,
    )
    for step in (100, 200, 300, 400):
        publish(staged_folder=staged_checkpoint(tmp_path, step), step=step)
    # 100 is evaluated and old: deleted; 200 and 300 wait for the evaluator; 400 is newest.
    assert published_steps(run_dir) == [200, 300, 400]


def staged_checkpoint(tmp_path: Path, step: int) -> Path:
    """A stand-in staged checkpoint folder (retention does not look inside)."""
    staged = tmp_path / f"staged-{step}"
    staged.mkdir()
    (staged / "ckpt.index").write_bytes(b"x" * step)
    return staged


def test_retention_holds_at_most_max_unevaluated_checkpoints_for_a_dead_evaluator(tmp_path):
    from disttrain.checkpoints import awaiting_evaluation

    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.write_text(EVAL_RESULTS, '{"step": 100}\n')  # then the evaluator died
    lines: list[str] = []
    for step in range(100, 900, 100):
        publish_checkpoint(
            run_dir,
            staged_checkpoint(tmp_path, step),
            step,
            keep=1,
            log=lines.append,
            unevaluated_steps=lambda: awaiting_evaluation(run_dir),
            max_unevaluated=2,
        )
    # The newest two unevaluated (700, 800; 800 is also the newest kept) stay; the rest go.
    assert published_steps(run_dir) == [700, 800]
    warnings = [line for line in lines if "WARNING" in line]
    for step in (200, 300, 400, 500, 600):
        assert any(f"delete ckpt-{step} before the evaluator reached it" in w for w in warnings)
    assert all("checkpoint.max_unevaluated (2)" in w for w in warnings) and len(warnings) == 5
    assert "checkpoint | retention | delete ckpt-100" in lines  # evaluated: no warning


def test_max_unevaluated_must_not_be_negative(tmp_path):
    from disttrain.config import ConfigError

    with pytest.raises(ConfigError, match="checkpoint.max_unevaluated: got -1"):
        load_config(None, [f"run_dir={tmp_path}", "checkpoint.max_unevaluated=-1"])


def test_an_unusable_newest_checkpoint_does_not_keep_the_evaluator_alive(tmp_path):
    from disttrain.config import load_config
    from disttrain.done import write_done
    from disttrain.evaluator import Evaluator
    from disttrain.storage import LATEST_FILE, RunDir

    run_dir = RunDir(str(tmp_path / "run"))
    # LATEST names a checkpoint whose folder never arrived (corrupt or deleted).
    run_dir.write_text(LATEST_FILE, '{"step": 50, "files": [], "sizes": {}, "sha256": {}}')
    (tmp_path / "run" / "checkpoints" / "ckpt-50").mkdir()
    write_done(run_dir, 50)
    config = load_config(
        None, [f"run_dir={run_dir.url}", "train.steps=50", "eval.poll_seconds=0.05"]
    )
    evaluator = Evaluator(config)
    try:
        finished = threading.Thread(target=evaluator.run_continuously, daemon=True)
        finished.start()
        finished.join(timeout=60)
        assert not finished.is_alive(), "the evaluator kept retrying an unusable checkpoint"
    finally:
        evaluator.close()
    assert evaluator.unusable == {50}


def exported_model(units: int, path: Path, seed: int) -> tuple[keras.Model, Path]:
    """A dense model on 32x32 images exported like the best export (`units` sets its size)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(units)]
    )
    export_saved_model(model, 32, [f"class-{i}" for i in range(units)], path)
    return model, path


def served_logits(run_dir: RunDir, folder: str, local: Path, images: np.ndarray) -> np.ndarray:
    """Download an export folder from the run dir, load it, and run its serving signature."""
    for relative in run_dir.list_files(folder):
        run_dir.get_file(f"{folder}/{relative}", local / relative)
    serving = tf.saved_model.load(str(local)).signatures[SERVING_SIGNATURE]
    return serving(images=tf.constant(images))["logits"].numpy()


def stop_when_uploading(azurite, container: str, blob: str, uploader: threading.Thread) -> None:
    """Stop Azurite once `blob` has uploaded blocks but is not committed yet: mid-upload."""
    from azure.storage.blob import BlobServiceClient
    from test_checkpoints import staged_blocks

    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    data_blob = client.get_blob_client(container, blob)
    deadline = time.monotonic() + 120
    while not staged_blocks(data_blob):
        assert uploader.is_alive() and time.monotonic() < deadline, f"{blob} never uploaded"
        time.sleep(0.02)
    azurite.stop()


def publish_in_background(run_dir: RunDir, local: Path, metrics: dict):
    failures: list[Exception] = []

    def publish() -> None:
        try:
            publish_export(run_dir, local, metrics)
        except Exception as exc:  # the outage outlasted the retries, as it should here
            failures.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    return thread, failures


def test_an_outage_while_replacing_the_best_export_never_leaves_it_incomplete(
    own_azurite, tmp_path, brief_storage_retries
):
    container = own_azurite.create_container()
    run_dir = RunDir(f"az://{container}/run")
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    _, first_export = exported_model(10, tmp_path / "first", seed=1)
    publish_export(run_dir, first_export, {"step": 100, "accuracy": 0.5})
    expected_first = served_logits(run_dir, BEST_EXPORT, tmp_path / "got-first", images)
    # 71 MB of variables, above the SDK's single-request limit: uploaded in blocks, so it
    # can be cut off in the middle.
    _, big_export = exported_model(5800, tmp_path / "big", seed=2)
    big_data = "variables/variables.data-00000-of-00001"

    # 1. Storage fails while the new export is uploading beside the old one.
    uploader, failures = publish_in_background(run_dir, big_export, {"step": 200, "accuracy": 0.9})
    stop_when_uploading(own_azurite, container, f"run/{BEST_EXPORT_NEXT}/{big_data}", uploader)
    uploader.join(timeout=300)
    own_azurite.start()
    assert failures and not uploader.is_alive()
    assert best_metrics(run_dir)["step"] == 100
    again = served_logits(run_dir, BEST_EXPORT, tmp_path / "after-outage-1", images)
    np.testing.assert_array_equal(again, expected_first)
    assert 100 in referenced_steps(run_dir)

    # 2. Storage fails while export/best/ itself is being rewritten: best.next/ is complete.
    uploader, failures = publish_in_background(run_dir, big_export, {"step": 200, "accuracy": 0.9})
    stop_when_uploading(own_azurite, container, f"run/{BEST_EXPORT}/{big_data}", uploader)
    uploader.join(timeout=300)
    own_azurite.start()
    assert failures and not uploader.is_alive()
    assert not run_dir.exists(BEST_METRICS) and best_metrics(run_dir)["step"] == 200
    assert 200 in referenced_steps(run_dir)
    served_logits(run_dir, BEST_EXPORT_NEXT, tmp_path / "next", images)  # complete: loads

    # The evaluator's start-up repair makes export/best/ whole again.
    repair_best_export(run_dir, tmp_path / "repair")
    assert json.loads(run_dir.read_text(BEST_METRICS))["step"] == 200
    assert not run_dir.exists(BEST_EXPORT_NEXT)
    repaired = served_logits(run_dir, BEST_EXPORT, tmp_path / "repaired", images)
    assert run_dir.list_names(SERVING_EXPORT) == ["200"]  # TensorFlow Serving's version too
    served = served_logits(run_dir, f"{SERVING_EXPORT}/200", tmp_path / "served", images)
    np.testing.assert_array_equal(served, repaired)


def test_tensorflow_serving_sees_one_numbered_version_the_best_with_both_signatures(
    builtin_data, tmp_path
):
    from PIL import Image

    from disttrain.data.decode import decode_central_crop
    from disttrain.export import publish_serving_version

    run_dir = RunDir(str(tmp_path / "run"))
    _, first = exported_model(6, tmp_path / "first", seed=1)
    publish_export(run_dir, first, {"step": 100})
    assert run_dir.list_names(SERVING_EXPORT) == ["100"]
    # What uploads cut short leave: a staging folder, a version without saved_model.pb.
    run_dir.write_text(f"{SERVING_EXPORT}/partial-150/variables/x", "x")
    run_dir.write_text(f"{SERVING_EXPORT}/150/variables/x", "x")
    model, second = exported_model(6, tmp_path / "second", seed=2)
    publish_export(run_dir, second, {"step": 200})
    assert run_dir.list_names(SERVING_EXPORT) == ["200"]

    version = tmp_path / "run" / "export" / "serving" / "200"
    signatures = tf.saved_model.load(str(version)).signatures
    jpeg = (builtin_data / "test" / "circle" / "00000.jpg").read_bytes()
    png = tmp_path / "big.png"  # any size, and PNG
    Image.open(builtin_data / "test" / "ring" / "00003.jpg").resize((57, 45)).save(png)
    files = [jpeg, png.read_bytes()]
    from_files = signatures[BYTES_SIGNATURE](image_bytes=tf.constant(files))
    pixels = tf.stack([decode_central_crop(tf.constant(data), 32) for data in files])
    from_pixels = signatures[SERVING_SIGNATURE](images=pixels)
    expected = tf.nn.softmax(model(prepare_on_device(pixels, training=False))).numpy()
    np.testing.assert_allclose(from_pixels["probabilities"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(from_files["probabilities"].numpy(), expected, atol=1e-6)
    classes = from_files["class_index"].numpy()
    np.testing.assert_array_equal(classes, expected.argmax(-1))
    assert [n.decode() for n in from_files["class_name"].numpy()] == [f"class-{i}" for i in classes]

    # A complete version is written once; a lost one comes back from export/best/.
    inode = (version / "saved_model.pb").stat().st_ino
    publish_serving_version(run_dir, second, 200)
    assert (version / "saved_model.pb").stat().st_ino == inode
    run_dir.delete(SERVING_EXPORT)
    repair_best_export(run_dir, tmp_path / "repair")
    assert run_dir.list_names(SERVING_EXPORT) == ["200"]
    assert (version / "saved_model.pb").read_bytes() == (second / "saved_model.pb").read_bytes()


def test_retention_keeps_the_checkpoint_of_the_best_export_while_it_is_replaced(tmp_path):
    run_dir = RunDir(str(tmp_path / "run"))
    _, export = exported_model(10, tmp_path / "export", seed=1)
    publish_export(run_dir, export, {"step": 100, "accuracy": 0.5})
    # What a replacement cut short while rewriting export/best/ leaves: only best.next/
    # has its metrics.json (the new best is ckpt-200).
    run_dir.write_text(f"{BEST_EXPORT_NEXT}/metrics.json", json.dumps({"step": 200}))
    run_dir.delete(BEST_METRICS)
    for step in (100, 200, 300, 400):
        publish_checkpoint(run_dir, staged_checkpoint(tmp_path, step), step, 1, log=lambda _: None)
    assert published_steps(run_dir) == [200, 400]


def test_continuous_eval_says_what_it_waits_for_and_gives_up_at_its_timeout(builtin_data, tmp_path):
    from processes import cli

    from disttrain.config import dump_config

    config = eval_config(str(tmp_path / "run"), builtin_data)
    run_dir = RunDir(config.run_dir)
    run_dir.write_text("config.yaml", dump_config(config))
    started = time.monotonic()
    result = cli("eval", "--run-dir", config.run_dir, "--timeout", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"eval | waiting for the first checkpoint under {run_dir.url} | polling every "
        f"{config.eval.poll_seconds:g}s, at most 1s" in result.stdout
    )
    assert result.stderr.endswith("\nerror: no new checkpoint in 1s (--timeout)\n")
    assert time.monotonic() - started < 120


# The evaluator task on an empty run dir, in a fresh process (in its main thread, where a
# task handles SIGTERM): whether it still runs without TensorFlow after WAIT seconds of
# waiting, seen from another thread, then whether it ends once DONE appears.
EVALUATOR_TASK = """
import json, sys, threading, time
from disttrain.done import write_done
from disttrain.storage import RunDir
from disttrain.task import load_task_config, run_task

config_path, wait = sys.argv[1], float(sys.argv[2])
found, ended = {}, threading.Event()


def look_then_finish():
    time.sleep(wait)
    found.update(alive=not ended.is_set(), tensorflow_while_waiting="tensorflow" in sys.modules)
    config = load_task_config(config_path)
    write_done(RunDir(config.run_dir), config.train.steps)


threading.Thread(target=look_then_finish, daemon=True).start()
run_task(config_path)
ended.set()
found.update(finished=True, tensorflow_after="tensorflow" in sys.modules)
print(json.dumps(found))
"""


def test_an_evaluator_waiting_for_the_first_checkpoint_has_not_imported_tensorflow(
    builtin_data, tmp_path
):
    from disttrain.config import dump_config

    config = eval_config(str(tmp_path / "run"), builtin_data)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(dump_config(config))
    tf_config = {"cluster": {"chief": ["localhost:2222"]}, "task": {"type": "evaluator"}}
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", EVALUATOR_TASK, str(config_path), "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(repo), "TF_CONFIG": json.dumps(tf_config)},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {
        "alive": True,
        "tensorflow_while_waiting": False,
        "finished": True,
        "tensorflow_after": True,
    }
    assert "eval | waiting for the first checkpoint under" in result.stdout


DROPPED_SIGTERM = """
import os, signal, sys, time
from disttrain import preemption
from disttrain.config import load_config
from disttrain.evaluator import Evaluator

evaluator = Evaluator(load_config(None, sys.argv[1:]))
preemption.watch_for_sigterm()


class SignalledInAFinalizer:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises Preempted here, and Python drops it


SignalledInAFinalizer()
print("requested:", preemption.requested(), flush=True)
try:
    evaluator.run_continuously(timeout_seconds=20)
except preemption.Preempted as exc:
    print("stopped:", exc)
"""


def test_an_evaluator_stops_on_sigterm_even_when_the_handlers_exception_was_dropped(
    builtin_data, tmp_path
):
    """A signal handler runs wherever Python code runs, and Python drops an exception
    raised in a finalizer. The evaluator's loop checks the request itself, so it stops
    at its next poll instead of running on until the SIGKILL after the grace period."""
    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", f"data.root={builtin_data}", "eval.poll_seconds=0.2"]
    result = subprocess.run(
        [sys.executable, "-c", DROPPED_SIGTERM, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert "Exception ignored in" in result.stderr and "Preempted" in result.stderr
    assert "requested: True" in result.stdout, result.stderr[-3000:]
    assert "stopped: task | preempted | stopped on SIGTERM" in result.stdout, result.stdout
    assert "gave up" not in result.stdout
