"""The run's resolved config as TensorBoard HParams, so runs can be compared side by side.

The evaluator writes them into its own event files, `logs/eval`, with its accuracy and
loss as the metrics: TensorBoard finds a session's metrics in the session's own run (or in
runs below it), and the evaluation's numbers are the ones runs are compared by. A
TensorBoard over a folder of run dirs shows each run as one row, named by its run dir.
"""

from __future__ import annotations

import json

from tensorboard.plugins.hparams import api as hp

from disttrain.config import Config, config_to_dict

# What the HParams table shows for each run: the evaluation's (the session's own run).
METRICS = ("accuracy", "loss")


def flat_hparams(config: Config) -> dict[str, bool | int | float | str]:
    """Every trainer key as `section.key` (`model.options.<name>` for model options) with a
    value TensorBoard can show: lists as JSON text, other values as they are."""
    flat: dict[str, bool | int | float | str] = {}

    def add(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{prefix}{key}.", inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix.rstrip(".")] = value
        elif value is not None:
            flat[prefix.rstrip(".")] = json.dumps(value)

    add("", config_to_dict(config))
    return flat


def write_hparams(config: Config) -> None:
    """The experiment's columns and this run's values, into the active summary writer."""
    values = flat_hparams(config)
    hp.hparams_config(
        hparams=[hp.HParam(name) for name in values],
        metrics=[hp.Metric(tag, display_name=f"eval {tag}") for tag in METRICS],
    )
    hp.hparams(values, trial_id=config.run_dir)
