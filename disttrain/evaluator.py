"""The evaluator sidecar: every published checkpoint evaluated once, in step order.

It is not part of the training cluster (see cluster.tf_config_for): it only reads the
run dir. It ends once the chief's DONE marker is present and the checkpoint DONE names
has been evaluated, so it never outlives the job.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from disttrain.checkpoints import fetch_checkpoint, latest_manifest, published_steps
from disttrain.config import Config
from disttrain.data.pipeline import eval_dataset, list_split
from disttrain.models import build_model
from disttrain.progress import log
from disttrain.steps import make_eval_batch
from disttrain.storage import DONE_FILE, EVAL_LOGS, EVAL_RESULTS, RunDir
from disttrain.summaries import SummaryMirror


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
        self.mirror = SummaryMirror(self.scratch / "events", self.run_dir, EVAL_LOGS, 0.0)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def evaluated_steps(self) -> set[int]:
        if not self.run_dir.exists(EVAL_RESULTS):
            return set()
        lines = self.run_dir.read_text(EVAL_RESULTS).splitlines()
        return {json.loads(line)["step"] for line in lines if line.strip()}

    def run_continuously(self) -> None:
        """Evaluate new checkpoints as they are published until the job is done."""
        evaluated = self.evaluated_steps()
        while True:
            done = self.run_dir.exists(DONE_FILE)  # read before listing: no race with LATEST
            for step in self.committed_steps():
                if step not in evaluated:
                    if self.evaluate_step(step) is not None:
                        evaluated.add(step)
            latest = latest_manifest(self.run_dir)
            if done and (latest is None or latest.step in evaluated):
                log(f"eval | finished | evaluated {len(evaluated)} checkpoints")
                return
            time.sleep(self.config.eval.poll_seconds)

    def run_once(self) -> dict | None:
        """Evaluate the newest published checkpoint once (the 2017 eval chart's behaviour)."""
        latest = latest_manifest(self.run_dir)
        if latest is None:
            log(f"eval | no checkpoint published under {self.run_dir.url} yet")
            return None
        return self.evaluate_step(latest.step)

    def committed_steps(self) -> list[int]:
        """Steps of checkpoints that LATEST has covered, ascending."""
        latest = latest_manifest(self.run_dir)
        if latest is None:
            return []
        return [s for s in published_steps(self.run_dir) if s <= latest.step]

    def evaluate_step(self, step: int) -> dict | None:
        found = fetch_checkpoint(self.run_dir, self.scratch / "restore", log, step=step)
        if found is None:
            log(f"eval | skipped | ckpt-{step} is gone or unusable")
            return None
        self.checkpoint.read(str(found[1])).expect_partial()
        result = {"step": step, **self.measure()}
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss", result["loss"])
            tf.summary.scalar("accuracy", result["accuracy"])
        self.writer.flush()
        self.mirror.sync()
        self.run_dir.append_line(EVAL_RESULTS, json.dumps(result, sort_keys=True))
        log(
            f"eval | step: {step:6d} | loss: {result['loss']:.4f} | "
            f"accuracy: {result['accuracy']:.4f} | examples: {result['examples']}"
        )
        return result

    def measure(self) -> dict:
        dataset = eval_dataset(
            self.config.data, self.split, self.config.eval.batch_size, self.config.eval.max_examples
        )
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
