"""The evaluator sidecar on real checkpoints: order, once-only, DONE, the best export."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from disttrain.checkpoints import fetch_checkpoint, publish_checkpoint, staged_prefix
from disttrain.config import Config, load_config
from disttrain.data.pipeline import eval_dataset, list_split, prepare_on_device
from disttrain.done import write_done
from disttrain.evaluator import SERVING_SIGNATURE, Evaluator
from disttrain.models import build_model
from disttrain.storage import BEST_EXPORT, BEST_METRICS, EVAL_RESULTS, RunDir


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
    serving = tf.saved_model.load(str(export)).signatures[SERVING_SIGNATURE]
    images, _ = next(iter(eval_dataset(config.data, evaluator.split, 16)))
    served = serving(images=images)["logits"].numpy()

    restored = build_model(config.model, config.data.image_size, len(metrics["class_names"]))
    _, prefix = fetch_checkpoint(run_dir, tmp_path / "restore", step=metrics["step"])
    tf.train.Checkpoint(model=restored).read(str(prefix)).expect_partial()
    expected = restored(prepare_on_device(images, training=False), training=False).numpy()
    # Same graph, same weights; only float rounding (oneDNN op order) may differ.
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_array_equal(served.argmax(-1), expected.argmax(-1))


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

    from disttrain.checkpoints import publish_checkpoint, published_steps
    from disttrain.evaluator import awaiting_evaluation
    from disttrain.storage import EVAL_RESULTS, RunDir

    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.write_text(EVAL_RESULTS, '{"step": 100}\n')
    publish = partial(
        publish_checkpoint,
        run_dir,
        keep=1,
        protected_steps=lambda: awaiting_evaluation(run_dir),
        log=lambda _: None,
    )
    for step in (100, 200, 300, 400):
        staged = tmp_path / f"staged-{step}"
        staged.mkdir()
        (staged / "ckpt.index").write_bytes(b"x" * step)
        publish(staged_folder=staged, step=step)
    # 100 is evaluated and old: deleted; 200 and 300 wait for the evaluator; 400 is newest.
    assert published_steps(run_dir) == [200, 300, 400]


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
