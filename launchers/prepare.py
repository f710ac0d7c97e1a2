"""What every launcher does before it starts a task, and the report after a success.

Pure Python (fsspec, no TensorFlow): bad input fails here, before any process starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from disttrain.config import Config, ConfigError, dump_config
from disttrain.storage import (
    CONFIG_FILE,
    DONE_FILE,
    EVAL_RESULTS,
    RunDir,
    StorageError,
    preflight,
)


def check_data(config: Config) -> None:
    """Fail early on data the tasks could not read."""
    data = config.data
    if data.source != "image_folder":
        return
    root = Path(data.root)
    if not data.root or not root.is_dir():
        raise ConfigError(
            f"data.root: got {data.root!r}; accepted: an existing folder "
            "laid out as <root>/<split>/<class>/*.jpg"
        )
    for split in (data.train_split, data.test_split):
        if not (root / split).is_dir():
            raise ConfigError(
                f"data.root: {data.root!r} has no {split!r} split folder ({root / split})"
            )


def prepare_run_dir(config: Config, log: Callable[[str], None]) -> None:
    """Check the data, write the resolved config, and clear a previous run's DONE marker.

    Submitting a job into a run dir that holds a finished run continues that run: the
    chief resumes from its latest checkpoint (so raising train.steps trains further).
    """
    check_data(config)
    check_run_dir(config, log)
    if config.data.source == "builtin":
        from disttrain.data.builtin import ensure_builtin_dataset

        log("data | preparing the built-in dataset (generated once, then cached)")
        log(f"data | built-in dataset at {ensure_builtin_dataset(config.data.root or None)}")
    run_dir = RunDir(config.run_dir)
    if run_dir.exists(DONE_FILE):
        done = json.loads(run_dir.read_text(DONE_FILE))
        log(
            f"run dir | {run_dir.url} holds a finished run (step {done.get('step')}); "
            f"continuing it to train.steps = {config.train.steps}"
        )
        run_dir.delete(DONE_FILE)
    run_dir.write_text(CONFIG_FILE, dump_config(config))


def check_run_dir(config: Config, log: Callable[[str], None]) -> None:
    """Write, list, read back and delete a probe in the run dir before any task starts."""
    try:
        log(preflight(config.run_dir))
    except StorageError as exc:
        raise ConfigError(f"run_dir: {exc}") from None


def final_report(config: Config) -> str:
    """The lines printed when a job succeeds: final accuracy and where things are."""
    run_dir = RunDir(config.run_dir)
    lines = []
    if run_dir.exists(EVAL_RESULTS):
        results = [json.loads(x) for x in run_dir.read_text(EVAL_RESULTS).splitlines() if x]
        last = max(results, key=lambda r: r["step"])
        lines.append(
            f"final eval | step: {last['step']} | accuracy: {last['accuracy']:.4f} | "
            f"loss: {last['loss']:.4f} | examples: {last['examples']}"
        )
    lines.append(f"checkpoints     : {run_dir.path('checkpoints')}")
    lines.append(
        f"tensorboard logs: {run_dir.path('logs')} "
        f"(view: disttrain board --run-dir {config.run_dir})"
    )
    return "\n".join(lines)
