"""Time to a target test accuracy: disttrain on the local launcher vs plain Keras (issue 13).

    .venv/bin/python bench/time_to_accuracy.py [--data DIR] [--target 0.8] [--rounds 1]

In one run, alternating --rounds times, the same job trains twice: the default config's
model, per-step batch, recipe and number of steps, on the same files decoded by the same
pipeline (disttrain/data/pipeline.py), with --data an image folder
(`DIR/{train,test}/<class>/*.jpg`) or, by default, the built-in dataset.

* plain Keras: this script again (`--keras`), one process: the model from
  disttrain.models, the optimizer from disttrain.steps, `model.fit` over the training
  pipeline (the crops and flips the step would do, mapped on the batches) with the test
  split as validation data, evaluated after every epoch (one pass over the training
  split). Each evaluation is stamped with the seconds since that process started.
* disttrain: `disttrain train` on the local launcher, the default shape (chief, 2 workers,
  1 ps, evaluator), with `checkpoint.every_seconds` (--every-seconds) so the evaluator
  sees checkpoints while training runs, and `eval.latest_only: true` so it evaluates the
  newest one at each poll: evaluating every checkpoint in order, it never caught up with
  the backlog its start-up left (publish to evaluation: 59-70 s instead of 4 s on the
  shared 2-core machine). `--job-set KEY=VALUE` adds or overrides such settings. Each line
  of the evaluator's eval/results.jsonl is stamped (`evaluated_at`) relative to when
  `disttrain train` was started.

For each it prints the seconds to the first evaluation at or above --target and the final
accuracy; then the ratio of the two times against issue 13's target (disttrain <= 2.0x
Keras) and whether the final accuracies are within 1 point. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 2.0  # issue 13: disttrain <= 2.0x plain Keras
ACCURACY_POINTS = 0.01  # final accuracies within 1 point
TIMEOUT_SECONDS = 1800
# The disttrain job's settings for a race to an accuracy (the evaluator's side of it).
RACE = ["eval.latest_only=true"]


@dataclass
class Curve:
    """One training's evaluations: (seconds since its process started, step, accuracy);
    for disttrain, also when the chief's milestones came (seconds, step)."""

    name: str
    evaluations: list[tuple[float, int, float]]
    milestones: dict[str, tuple[float, int]] = field(default_factory=dict)

    def seconds_to(self, target: float) -> float | None:
        return next((s for s, _, accuracy in self.evaluations if accuracy >= target), None)

    @property
    def final_accuracy(self) -> float:
        return self.evaluations[-1][2]


def job_settings(data: Path | None) -> list[str]:
    """The `--set` overrides both trainings read: the data; the rest is the default job's
    (the built-in dataset is made once in its cache folder, ~/.cache/disttrain)."""
    if data is None:
        return []
    return ["data.source=image_folder", f"data.root={data.resolve()}"]


# --- plain Keras, in a process of its own -----------------------------------------------


def keras_curve(settings: list[str]) -> None:
    """Train with `model.fit` and print one JSON line per evaluation (run with --keras)."""
    from disttrain.startup import process_start_time

    started = process_start_time()
    import keras
    import tensorflow as tf

    from disttrain.config import load_config
    from disttrain.data.pipeline import (
        decodes_once,
        eval_dataset,
        prepare_on_device,
        random_crops,
        train_dataset,
    )
    from disttrain.data.sources import list_split
    from disttrain.models import build_model
    from disttrain.steps import make_optimizer

    config = load_config(None, settings)
    data, train = config.data, config.train
    keras.utils.set_random_seed(train.seed)
    split, test = list_split(data, data.train_split), list_split(data, data.test_split)
    crop = data.crop_min_area if decodes_once(data, split) else 0.0

    def augmented(images, labels):  # what the distributed step does on the device
        images = random_crops(images, crop) if crop else images
        return prepare_on_device(images, True, data.random_flip), labels

    batches = train_dataset(data, split, 1, 0, seed=train.seed).map(augmented)
    validation = eval_dataset(data, test, config.eval.batch_size).map(
        lambda images, labels: (prepare_on_device(images, False), labels)
    )
    model = build_model(config.model, data.image_size, len(split.class_names), train.precision)
    model.compile(
        optimizer=make_optimizer(train, model),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=train.jit_compile,
    )
    steps_per_epoch = math.ceil(len(split.files) / data.batch_size)

    class Stamp(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seconds = time.time() - started
            step = (epoch + 1) * steps_per_epoch
            print(json.dumps([seconds, step, float(logs["val_accuracy"])]), flush=True)

    tf.get_logger().setLevel("ERROR")
    model.fit(
        batches,
        epochs=math.ceil(train.steps / steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        validation_data=validation,
        callbacks=[Stamp()],
        verbose=0,
    )


def run_keras(settings: list[str], scratch: Path) -> Curve:
    log = scratch / "keras.out"
    command = [sys.executable, __file__, "--keras", *settings]
    with open(log, "wb") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
    lines = log.read_text(errors="replace").splitlines()
    if done.returncode != 0:
        raise SystemExit(f"plain Keras failed ({done.returncode}):\n" + "\n".join(lines[-30:]))
    evaluations = [tuple(json.loads(line)) for line in lines if line.startswith("[")]
    return Curve("plain Keras", evaluations)


# --- disttrain on the local launcher -----------------------------------------------------


def run_disttrain(settings: list[str], job_only: list[str], scratch: Path, name: str) -> Curve:
    """The local job with `settings` and `job_only` (what plain Keras has no use for)."""
    run_dir = scratch / "runs" / name
    job = [*settings, *job_only, f"name={name}", f"run_dir={run_dir}"]
    command = [sys.executable, "-m", "disttrain", "train"]
    command += [arg for setting in job for arg in ("--set", setting)]
    env = {**_env(), "DISTTRAIN_HOME": str(scratch / "home")}
    log = scratch / f"{name}.out"
    started = time.time()
    with open(log, "wb") as out:
        done = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            timeout=TIMEOUT_SECONDS,
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"disttrain failed ({done.returncode}):\n" + "\n".join(tail))
    results = (run_dir / "eval" / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in results if line.strip()]
    evaluations = [(r["evaluated_at"] - started, r["step"], r["accuracy"]) for r in records]
    chief_log = scratch / "home" / "local" / name / "logs" / "chief-0.log"
    return Curve("disttrain", evaluations, chief_milestones(chief_log.read_text(), started))


# The chief's log lines: a time (whole seconds), a level, then what happened.
CHIEF_LINES = {
    "first step": re.compile(r"^(\S+) INFO startup \| first step:()", re.M),
    "published": re.compile(r"^(\S+) INFO checkpoint \| published \| ckpt-(\d+)", re.M),
}


def chief_milestones(log: str, started: float) -> dict[str, tuple[float, int]]:
    """Seconds after `started` (+-1 s) of the chief's first step and each publish."""
    found = {}
    for what, line in CHIEF_LINES.items():
        for stamp, step in line.findall(log):
            seconds = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) - started
            found[f"{what} {step}".strip()] = (seconds, int(step or 0))
    return found


def where_the_time_went(curve: Curve, target: float) -> str:
    """Startup, checkpoint cadence and evaluator latency on the way to `target`."""
    first_step = curve.milestones.get("first step", (float("nan"), 0))[0]
    published = {step: s for name, (s, step) in curve.milestones.items() if name != "first step"}
    reached = next(((s, step) for s, step, a in curve.evaluations if a >= target), None)
    parts = [f"chief's first step {first_step:.0f} s"]
    if published:
        step, seconds = min(published.items())
        parts.append(f"first checkpoint published {seconds:.0f} s (ckpt-{step})")
    first = curve.evaluations[0]
    parts.append(f"first evaluation {first[0]:.1f} s (ckpt-{first[1]})")
    if reached:
        seconds, step = reached
        lag = seconds - published.get(step, float("nan"))
        parts.append(
            f"ckpt-{step} reached {target:.2f} at {seconds:.1f} s, {lag:.0f} s after its publish"
        )
    lags = [s - published[step] for s, step, _ in curve.evaluations if step in published]
    if lags:
        parts.append(f"publish -> evaluation median {statistics.median(lags):.1f} s")
    return "  disttrain, seconds after `disttrain train` (log times +-1 s): " + " | ".join(parts)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


# --- the report ----------------------------------------------------------------------------


def describe(curve: Curve, target: float) -> str:
    reached = curve.seconds_to(target)
    when = f"{reached:6.1f} s" if reached is not None else " never "
    steps = curve.evaluations[-1][1]
    return (
        f"{curve.name:<11} first eval >= {target:.2f}: {when} | final accuracy "
        f"{curve.final_accuracy:.4f} ({steps} steps, {len(curve.evaluations)} evaluations)"
    )


def timeline(curve: Curve) -> str:
    shown = ", ".join(f"{s:.1f}s/{step}:{acc:.3f}" for s, step, acc in curve.evaluations)
    return f"  {curve.name} (seconds/step:accuracy): {shown}"


def verdict(keras: list[Curve], disttrain: list[Curve], target: float) -> list[str]:
    keras_times = [c.seconds_to(target) for c in keras]
    ours = [c.seconds_to(target) for c in disttrain]
    lines = []
    if None in keras_times or None in ours:
        lines.append(f"ratio: not measured, a run never reached {target:.2f} (lower --target)")
    else:
        ratio = statistics.median(ours) / statistics.median(keras_times)
        meets = "meets" if ratio <= TARGET_RATIO else "misses"
        lines.append(
            f"ratio disttrain / plain Keras, seconds to {target:.2f} (medians): {ratio:.2f}x "
            f"({meets} the target of <= {TARGET_RATIO:.1f}x)"
        )
    gap = statistics.median(c.final_accuracy for c in disttrain) - statistics.median(
        c.final_accuracy for c in keras
    )
    within = "within" if abs(gap) <= ACCURACY_POINTS else "not within"
    lines.append(
        f"final accuracy, disttrain - plain Keras (medians): {gap * 100:+.1f} points "
        f"({within} the target of 1 point)"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an image folder (default: built-in data)")
    parser.add_argument("--target", type=float, default=0.8, help="test accuracy to reach")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--every-seconds", type=float, default=3.0)
    parser.add_argument(
        "--job-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more --set for the disttrain job only (say, eval.latest_only=false)",
    )
    parser.add_argument("--keras", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras is not None:
        return keras_curve(args.keras)
    with tempfile.TemporaryDirectory(prefix="time-to-accuracy-") as folder:
        scratch = Path(folder)
        settings = job_settings(args.data)
        if args.data is None:  # made before either clock starts
            from disttrain.data.builtin import ensure_builtin_dataset

            ensure_builtin_dataset()
        keras, disttrain = [], []
        for number in range(1, args.rounds + 1):
            keras.append(run_keras(settings, scratch))
            print(f"round {number}: {describe(keras[-1], args.target)}", flush=True)
            job_only = [f"checkpoint.every_seconds={args.every_seconds}", *RACE, *args.job_set]
            disttrain.append(run_disttrain(settings, job_only, scratch, f"tta-{number}"))
            print(f"round {number}: {describe(disttrain[-1], args.target)}", flush=True)
            for curve in (keras[-1], disttrain[-1]):
                print(timeline(curve), flush=True)
            print(where_the_time_went(disttrain[-1], args.target), flush=True)
    print(
        f"\n{args.data or 'built-in data'}, the default job's model, batch, recipe and steps; "
        f"disttrain: chief, 2 workers, 1 ps, evaluator, checkpoint.every_seconds="
        f"{args.every_seconds:g} {' '.join(RACE + args.job_set)}; {os.cpu_count()} CPUs "
        "shared with whatever else runs"
    )
    print("\n".join(verdict(keras, disttrain, args.target)))


if __name__ == "__main__":
    main()
