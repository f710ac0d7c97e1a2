"""The evaluator sidecar: every published checkpoint evaluated once, in step order.

It is not part of the training cluster (see cluster.tf_config_for): it only reads the
run dir. For each checkpoint that LATEST has covered it writes eval summaries and one
line of `eval/results.jsonl`, and keeps the best export: a SavedModel of the best
checkpoint so far (by `eval.best_metric`) with a small `metrics.json`, in `export/best/` and
as TensorFlow Serving's version in `export/serving/`, replaced so that the run dir always
holds one complete best export (see export.py). It ends once the
chief's DONE marker is present and the checkpoint DONE names has been evaluated, so it
never outlives the job.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from disttrain import preemption
from disttrain.checkpoints import (
    evaluated_steps,
    fetch_checkpoint,
    latest_manifest,
    published_steps,
    record_evaluation,
    waiting_for_first_checkpoint,
)
from disttrain.config import Config
from disttrain.data.pipeline import eval_dataset
from disttrain.data.sources import list_split
from disttrain.done import is_done
from disttrain.export import best_metrics, export_saved_model, publish_export, repair_best_export
from disttrain.failures import Unrecoverable
from disttrain.hparams import write_hparams
from disttrain.lease import fence_for_job
from disttrain.models import build_model
from disttrain.pictures import write_confusion_matrix
from disttrain.progress import eval_line, log
from disttrain.steps import make_eval_batch
from disttrain.storage import (
    BEST_EXPORT,
    CLASS_NAMES_FILE,
    EVAL_LOGS,
    EVAL_RESULTS,
    FailingPolls,
    RunDir,
    describe,
)
from disttrain.summaries import SummaryMirror

# Higher accuracy is better; lower loss is better.
_BETTER = {"accuracy": lambda new, old: new > old, "loss": lambda new, old: new < old}


class Evaluator:
    def __init__(self, config: Config):
        self.config = config
        self.run_dir = RunDir(config.run_dir)
        # It writes only while the run dir's lease names its job (lease.py).
        self.run_dir.fence = fence_for_job(self.run_dir, config.name)
        self.split = list_split(config.data, config.data.test_split)
        self.model = build_model(config.model, config.data.image_size, len(self.split.class_names))
        self.checkpoint = tf.train.Checkpoint(model=self.model)
        self.eval_batch = make_eval_batch(self.model)
        self.scratch = Path(tempfile.mkdtemp(prefix="disttrain-eval-"))
        self.writer = tf.summary.create_file_writer(str(self.scratch / "events"))
        self.mirror = SummaryMirror(self.scratch / "events", self.run_dir, EVAL_LOGS, 10.0, log)
        # Committed checkpoints that failed verification: reported once, never retried (a
        # corrupt newest checkpoint must not keep the evaluator alive after DONE).
        self.unusable: set[int] = set()
        self.passes = 0  # a bad test file is named in the first pass only

    def close(self) -> None:
        self.writer.close()
        self.mirror.close()  # the last eval summaries land before the scratch folder goes
        shutil.rmtree(self.scratch, ignore_errors=True)

    def evaluated_steps(self) -> set[int]:
        return evaluated_steps(self.run_dir)

    def run_continuously(self, timeout_seconds: float = 0) -> bool:
        """Evaluate new checkpoints as they are published until the job is done: True.
        False when `timeout_seconds` (0: none) pass with nothing new to evaluate."""
        try:
            repair_best_export(self.run_dir, self.scratch / "repair")
        except Exception as exc:  # the next replacement of the best export repairs it too
            log(f"eval | WARNING | could not repair {BEST_EXPORT} | {describe(exc)}")
        evaluated = self.evaluated_steps()
        with self.writer.as_default():  # once per start: the config this evaluator runs
            write_hparams(self.config)
        self._say_what_it_waits_for(timeout_seconds)
        last_news = time.monotonic()
        failures = FailingPolls(f"evaluate the checkpoints in {self.run_dir.url}", log, "eval")
        while True:
            seen = len(evaluated | self.unusable)
            try:
                if self.poll(evaluated):
                    log(f"eval | finished | checkpoints evaluated in this run: {len(evaluated)}")
                    return True
                failures.succeeded()
            except Unrecoverable:  # another job holds the run dir: waiting will not help
                raise
            except Exception as exc:  # storage outage: the next poll tries again, for a while
                failures.failed(exc)
            if len(evaluated | self.unusable) > seen:
                last_news = time.monotonic()
            elif timeout_seconds and time.monotonic() - last_news > timeout_seconds:
                log(f"eval | gave up | no new checkpoint for {timeout_seconds:g}s")
                return False
            preemption.stop_if_requested()
            time.sleep(self.config.eval.poll_seconds)

    def _say_what_it_waits_for(self, timeout_seconds: float) -> None:
        if latest_manifest(self.run_dir) is not None:
            return
        log(
            waiting_for_first_checkpoint(
                self.run_dir, self.config.eval.poll_seconds, timeout_seconds
            )
        )

    def poll(self, evaluated: set[int]) -> bool:
        """Evaluate what is new; True once DONE is there and the last checkpoint evaluated."""
        # Read before listing: no race with LATEST. A DONE short of train.steps is an
        # earlier run's (the run dir was re-submitted to train further).
        done = is_done(self.run_dir, self.config.train.steps)
        for step in self.steps_to_evaluate(evaluated | self.unusable):
            if self.evaluate_step(step) is not None:
                evaluated.add(step)
            else:
                self.unusable.add(step)
        latest = latest_manifest(self.run_dir)
        return done and (latest is None or latest.step in evaluated | self.unusable)

    def run_once(self) -> dict | None:
        """Evaluate the newest published checkpoint once (the 2017 eval chart's behaviour)."""
        latest = latest_manifest(self.run_dir)
        if latest is None:
            log(f"eval | no checkpoint published under {self.run_dir.url} yet")
            return None
        if latest.step in evaluated_steps(self.run_dir):
            # Its record and the best export stay as the run made them (perhaps on other
            # data, with --set): this evaluation is shown, not recorded.
            log(f"eval | ckpt-{latest.step} is already in {EVAL_RESULTS}: shown, not recorded")
            return self.evaluate_step(latest.step, record=False)
        return self.evaluate_step(latest.step)

    def steps_to_evaluate(self, evaluated: set[int]) -> list[int]:
        """Committed steps not yet evaluated, ascending (only the newest with latest_only)."""
        latest = latest_manifest(self.run_dir)
        if latest is None or latest.step in evaluated:
            return []
        if self.config.eval.latest_only:
            return [latest.step]
        committed = [s for s in published_steps(self.run_dir) if s <= latest.step]
        return [s for s in committed if s not in evaluated]

    def evaluate_step(self, step: int, record: bool = True) -> dict | None:
        found = fetch_checkpoint(self.run_dir, self.scratch / "restore", log, step=step)
        if found is None:
            log(f"eval | skipped | ckpt-{step} is gone or unusable")
            return None
        self.checkpoint.read(str(found[1])).expect_partial()
        measured, confusion = self.measure_with_confusion()
        result = {"step": step, **measured}
        evaluated_at = round(time.time(), 3)  # when the accuracy was known (Unix time)
        log(eval_line(result))
        if not record:
            return result
        # The best export before the record: if storage fails in between, the step is not
        # in results.jsonl yet, so the next poll evaluates it again instead of losing it.
        self.keep_best(result)
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss", result["loss"])
            tf.summary.scalar("accuracy", result["accuracy"])
            self._write_confusion_matrix(confusion, step)
        self.writer.flush()
        self.mirror.request_sync()
        record = {**result, "evaluated_at": evaluated_at}
        record_evaluation(self.run_dir, record)  # once, even when this step is evaluated again
        return result

    def _write_confusion_matrix(self, confusion: np.ndarray, step: int) -> None:
        try:
            write_confusion_matrix(confusion, self.run_class_names(), step)
        except Exception as exc:  # a picture never costs the evaluation its record
            log(f"eval | WARNING | no confusion matrix for ckpt-{step} | {describe(exc)}")

    def measure(self) -> dict:
        """The loss, accuracy and examples of one pass over the test split."""
        return self.measure_with_confusion()[0]

    def measure_with_confusion(self) -> tuple[dict, np.ndarray]:
        """`measure`'s numbers and the pass's confusion matrix (rows: true class, columns:
        predicted; in label order, that of `run_class_names`)."""
        eval_config = self.config.eval
        dataset = eval_dataset(
            self.config.data,
            self.split,
            eval_config.batch_size,
            eval_config.max_examples,
            report_bad_files=self.passes == 0,
        )
        self.passes += 1
        loss_sum, correct, examples = 0.0, 0, 0
        classes = len(self.split.class_names)
        confusion = np.zeros([classes, classes], np.int64)
        for images, labels in dataset:
            batch_loss, batch_correct, batch_examples, predicted = self.eval_batch(images, labels)
            loss_sum += float(batch_loss)
            correct += int(batch_correct)
            examples += int(batch_examples)
            np.add.at(confusion, (labels.numpy(), predicted.numpy()), 1)
        measured = {
            "loss": loss_sum / max(examples, 1),
            "accuracy": correct / max(examples, 1),
            "examples": examples,
        }
        return measured, confusion

    def keep_best(self, result: dict) -> None:
        """Export the model as export/best/ when `result` beats the current best."""
        metric = self.config.eval.best_metric
        best = best_metrics(self.run_dir)
        if best is not None and best["step"] != result["step"]:
            if not _BETTER[metric](result[metric], best[metric]):
                return
        class_names = self.run_class_names()
        metrics = {**result, "metric": metric, "class_names": class_names}
        local = self.scratch / "export"
        shutil.rmtree(local, ignore_errors=True)
        export_saved_model(self.model, self.config.data.image_size, class_names, local)
        publish_export(self.run_dir, local, metrics)
        log(f"eval | best export | ckpt-{result['step']} | {metric}: {result[metric]:.4f}")

    def run_class_names(self) -> list[str]:
        """The classes the run trains on, in label order, as the chief recorded them (the
        export names its predictions with them); the test split's for a run dir without
        that record."""
        if self.run_dir.exists(CLASS_NAMES_FILE):
            return json.loads(self.run_dir.read_text(CLASS_NAMES_FILE))
        return list(self.split.class_names)
