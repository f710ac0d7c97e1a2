"""The evaluator sidecar: every published checkpoint evaluated once, in step order.

It is not part of the training cluster (see cluster.tf_config_for): it only reads the
run dir. For each checkpoint that LATEST has covered it writes eval summaries and one
line of `eval/results.jsonl`, and keeps `export/best/` as a SavedModel of the best
checkpoint so far (by `eval.best_metric`) with a small `metrics.json`, replaced so that the
run dir always holds one complete best export (see `publish_export`). It ends once the
chief's DONE marker is present and the checkpoint DONE names has been evaluated, so it
never outlives the job.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from disttrain.checkpoints import (
    evaluated_steps,
    fetch_checkpoint,
    latest_manifest,
    published_steps,
    waiting_for_first_checkpoint,
)
from disttrain.config import Config
from disttrain.data.pipeline import eval_dataset, prepare_on_device
from disttrain.data.sources import list_split
from disttrain.done import is_done
from disttrain.models import build_model
from disttrain.progress import eval_line, log
from disttrain.steps import make_eval_batch
from disttrain.storage import (
    BEST_EXPORT,
    BEST_EXPORT_NEXT,
    BEST_METRICS,
    BEST_NEXT_METRICS,
    EVAL_LOGS,
    EVAL_RESULTS,
    RunDir,
    describe,
    with_retries,
)
from disttrain.summaries import SummaryMirror

SERVING_SIGNATURE = "serving_default"
# Beside each SavedModel; written last and deleted first, so it marks a complete folder.
EXPORT_METRICS = "metrics.json"
# Higher accuracy is better; lower loss is better.
_BETTER = {"accuracy": lambda new, old: new > old, "loss": lambda new, old: new < old}


class Evaluator:
    def __init__(self, config: Config):
        self.config = config
        self.run_dir = RunDir(config.run_dir)
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
        self._say_what_it_waits_for(timeout_seconds)
        last_news = time.monotonic()
        while True:
            seen = len(evaluated | self.unusable)
            try:
                if self.poll(evaluated):
                    log(f"eval | finished | checkpoints evaluated in this run: {len(evaluated)}")
                    return True
            except Exception as exc:  # storage outage: the next poll tries again
                log(f"eval | WARNING | poll failed, retrying | {describe(exc)}")
            if len(evaluated | self.unusable) > seen:
                last_news = time.monotonic()
            elif timeout_seconds and time.monotonic() - last_news > timeout_seconds:
                log(f"eval | gave up | no new checkpoint for {timeout_seconds:g}s")
                return False
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
        result = {"step": step, **self.measure()}
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
        self.writer.flush()
        self.mirror.request_sync()
        record = {**result, "evaluated_at": evaluated_at}
        self.run_dir.append_line(EVAL_RESULTS, json.dumps(record, sort_keys=True))
        return result

    def measure(self) -> dict:
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
        for images, labels in dataset:
            batch_loss, batch_correct, batch_examples = self.eval_batch(images, labels)
            loss_sum += float(batch_loss)
            correct += int(batch_correct)
            examples += int(batch_examples)
        return {
            "loss": loss_sum / max(examples, 1),
            "accuracy": correct / max(examples, 1),
            "examples": examples,
        }

    def keep_best(self, result: dict) -> None:
        """Export the model as export/best/ when `result` beats the current best."""
        metric = self.config.eval.best_metric
        best = best_metrics(self.run_dir)
        if best is not None and best["step"] != result["step"]:
            if not _BETTER[metric](result[metric], best[metric]):
                return
        metrics = {**result, "metric": metric, "class_names": list(self.split.class_names)}
        local = self.scratch / "export"
        shutil.rmtree(local, ignore_errors=True)
        export_saved_model(self.model, self.config.data.image_size, local)
        publish_export(self.run_dir, local, metrics)
        log(f"eval | best export | ckpt-{result['step']} | {metric}: {result[metric]:.4f}")


def best_metrics(run_dir: RunDir) -> dict | None:
    """The metrics of the current best export (None when there is none).

    That is export/best/, unless a replacement was cut short while rewriting it: then the
    complete copy is export/best.next/ (see `publish_export`).
    """
    for metrics in (BEST_METRICS, BEST_NEXT_METRICS):
        try:
            return json.loads(run_dir.read_text(metrics))
        except FileNotFoundError:
            continue
    return None


def export_saved_model(model: keras.Model, image_size: int, path: Path) -> None:
    """A SavedModel whose serving signature takes uint8 images, as the input pipeline ships.

    The same normalisation as evaluation runs inside the signature, so a client sends
    raw pixels and gets the checkpoint's exact predictions.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        logits = model(prepare_on_device(images, training=False), training=False)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1),
        }

    archive.add_endpoint(
        name=SERVING_SIGNATURE,
        fn=serve,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, "images")],
    )
    archive.write_out(str(path), verbose=False)


def publish_export(run_dir: RunDir, local: Path, metrics: dict) -> None:
    """Replace export/best/ so that the run dir always holds one complete best export.

    Blob storage cannot rename a folder, so export/best/ is rewritten in place and is
    incomplete while that happens. A complete copy must exist elsewhere first: the new
    export goes to export/best.next/, then export/best/ is rewritten, then best.next/ is
    deleted. An outage anywhere leaves export/best/ complete (old or new) or best.next/
    complete (new); `best_metrics` and retention read both, `repair_best_export` finishes
    an interrupted swap. (Moving the old export aside instead would mean copying remote
    files; the new ones are here on local disk.)
    """
    if run_dir.exists(BEST_METRICS):  # export/best/ is complete: it stays until best.next/ is
        _write_export(run_dir, local, metrics, BEST_EXPORT_NEXT)
    # Otherwise export/best/ is incomplete already (the first export, or a swap cut short
    # whose complete copy stays in best.next/ until export/best/ is whole again).
    _write_export(run_dir, local, metrics, BEST_EXPORT)
    _delete_export(run_dir, BEST_EXPORT_NEXT)


def _write_export(run_dir: RunDir, local: Path, metrics: dict, folder: str) -> None:
    """Upload a SavedModel to `folder`, with metrics.json deleted first and written last."""
    _delete_export(run_dir, folder)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        relative = f"{folder}/{path.relative_to(local).as_posix()}"
        with_retries(
            lambda p=path, r=relative: run_dir.put_file(p, r), f"upload {relative}", log=log
        )
    marker, text = f"{folder}/{EXPORT_METRICS}", json.dumps(metrics, sort_keys=True, indent=1)
    with_retries(lambda: run_dir.write_text(marker, text), f"write {marker}", log=log)


def _delete_export(run_dir: RunDir, folder: str) -> None:
    """Its metrics.json first: a deletion cut short never leaves a folder that looks complete."""
    marker = f"{folder}/{EXPORT_METRICS}"
    with_retries(lambda: run_dir.delete(marker), f"delete {marker}", log=log)
    with_retries(lambda: run_dir.delete(folder), f"delete {folder}", log=log)


def repair_best_export(run_dir: RunDir, scratch: Path) -> None:
    """Finish a replacement that was cut short while export/best/ was being rewritten:
    copy the complete export/best.next/ into export/best/ (through local scratch)."""
    if run_dir.exists(BEST_METRICS) or not run_dir.exists(BEST_NEXT_METRICS):
        return
    metrics = json.loads(run_dir.read_text(BEST_NEXT_METRICS))
    shutil.rmtree(scratch, ignore_errors=True)
    for relative in run_dir.list_files(BEST_EXPORT_NEXT):
        if relative != EXPORT_METRICS:
            run_dir.get_file(f"{BEST_EXPORT_NEXT}/{relative}", scratch / relative)
    publish_export(run_dir, scratch, metrics)
    shutil.rmtree(scratch, ignore_errors=True)
    log(f"eval | repaired {BEST_EXPORT} | ckpt-{metrics['step']} from {BEST_EXPORT_NEXT}")
