"""Fine-tuning: a new run that starts from other weights, with some layers not trained.

`train.init_from` names another run's dir (its newest published checkpoint, or the one of
`train.init_from_step`) or a Keras weights file (`.weights.h5`, `.keras`), as a path or any
fsspec URL; a remote file is copied to local scratch first. Only the model's weights are
read: the new run starts at step 0, with a new optimizer and its own schedule. They are
loaded after the model is built under the strategy and before the first step, by the
task that runs the training loop (the chief; under MultiWorkerMirroredStrategy every
worker, as each holds a replica), so the values are assigned into the distributed
variables: on the ps under ParameterServerStrategy. A run dir that has a checkpoint of
its own resumes from it and ignores init_from: a restarted fine-tuning run must not
start over.

`train.freeze` makes layers not trainable, by name prefix, before the optimizer is built:
the optimizer holds no slots for them and the step computes no gradients for them.

TensorFlow and Keras are imported inside the functions that load or freeze:
`init_source_problem` is the launcher's check, before any task starts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from disttrain.checkpoints import MANIFEST, checkpoint_folder, fetch_checkpoint, published_steps
from disttrain.config import TrainConfig, is_keras_weights_file
from disttrain.failures import Unrecoverable
from disttrain.progress import log
from disttrain.storage import LATEST_FILE, RunDir, file_exists, local_copy

ACCEPTED_SOURCES = (
    "another run's dir with a published checkpoint, or a Keras weights file (.weights.h5, .keras)"
)
# How TensorFlow's checkpoint reader and Keras's weights loader say that a value does not
# fit a variable; each names the variable and both shapes (see `does_not_fit`).
_SHAPE_ERRORS = (
    re.compile(
        r"incompatible tensor with shape (?P<source>\([^)]*\)) when attempting to restore "
        r"variable with shape (?P<model>\([^)]*\)) and name (?P<variable>[^\s:]+)"
    ),
    re.compile(
        r"variable\.shape=(?P<model>\([^)]*\)), Received: value\.shape=(?P<source>\([^)]*\))"
        r"\. Target variable: <Variable path=(?P<variable>[^,]+)"
    ),
)
_SHOWN_LAYERS = 12  # a message lists at most this many layer names


def init_source_problem(train: TrainConfig) -> str:
    """Why `train.init_from` names no weights to load ("" when it does): no such file or
    folder, a folder without a published checkpoint, or no checkpoint of init_from_step."""
    source = train.init_from
    if is_keras_weights_file(source):
        return "" if file_exists(source) else _refused(source, "which does not exist")
    run = RunDir(source)
    if not run.exists(""):
        return _refused(source, "which does not exist")
    if not run.exists(LATEST_FILE):
        return _refused(source, f"a folder with no published checkpoint (no {LATEST_FILE})")
    step = train.init_from_step
    if step and not run.exists(f"{checkpoint_folder(step)}/{MANIFEST}"):
        steps = [
            s for s in published_steps(run) if run.exists(f"{checkpoint_folder(s)}/{MANIFEST}")
        ]
        return (
            f"train.init_from_step: got {step}, but {source} has no checkpoint of that step; "
            f"accepted: 0 (the newest) or a published step: {', '.join(map(str, steps))}"
        )
    return ""


def _refused(source: str, why: str) -> str:
    return f"train.init_from: got {source!r}, {why}; accepted: {ACCEPTED_SOURCES}"


def warm_start(model, train: TrainConfig, resumed_at: int, scratch: Path) -> str:
    """Load `train.init_from` into a new run's model; a resumed run (`resumed_at` > 0)
    keeps the weights of its own checkpoint. Returns the line to log."""
    if resumed_at:
        return (
            f"init_from | ignored | the run resumed from its own ckpt-{resumed_at}; "
            f"train.init_from ({train.init_from}) only starts a new run"
        )
    try:
        source = load_initial_weights(model, train, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # a copy of a whole model's weights
    return (
        f"init_from | loaded | the model's weights from {source} (not its optimizer or "
        "step) | starting at step 0"
    )


def load_initial_weights(model, train: TrainConfig, scratch: Path) -> str:
    """Assign the weights `train.init_from` names to `model`'s variables; returns what was
    read. Unrecoverable, in one line, when the source is missing or does not fit."""
    problem = init_source_problem(train)
    if problem:
        raise Unrecoverable(problem)
    if is_keras_weights_file(train.init_from):
        local = local_copy(train.init_from, scratch)
        _load(lambda: model.load_weights(str(local)), train.init_from)
        return train.init_from
    step = train.init_from_step or None
    found = fetch_checkpoint(RunDir(train.init_from), scratch, log, step=step)
    if found is None:
        raise Unrecoverable(
            f"train.init_from: got {train.init_from!r}, whose checkpoints failed verification "
            f"(see the warnings above); accepted: {ACCEPTED_SOURCES}"
        )
    step, prefix = found
    source = f"ckpt-{step} of {train.init_from}"
    _load(lambda: _read_model_weights(model, prefix), source)
    return source


def _read_model_weights(model, prefix: Path) -> None:
    """The model's part of a training checkpoint (model, optimizer, step)."""
    import tensorflow as tf

    status = tf.train.Checkpoint(model=model).read(str(prefix))
    status.expect_partial()  # the source's optimizer and step are left unread on purpose
    status.assert_existing_objects_matched()  # every variable of this model got a value


def _load(action, source: str) -> None:
    try:
        action()
    except (ValueError, AssertionError) as exc:
        raise Unrecoverable(does_not_fit(exc, source)) from None


def does_not_fit(exc: BaseException, source: str) -> str:
    """The message for weights that do not fit the model: the layer and both shapes when
    the loader's error names them, else the loader's first line."""
    text = str(exc)
    for pattern in _SHAPE_ERRORS:
        found = pattern.search(text)
        if found:
            variable = found["variable"]
            layer = variable.split("/")[-2] if "/" in variable else variable
            return (
                f"train.init_from: layer {layer} does not fit: {variable} has shape "
                f"{found['model']} in this model and {found['source']} in {source}; the source "
                "must be the same model (model.name and its settings, data.image_size, the "
                "number of classes)"
            )
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    return f"train.init_from: {source} does not fit this model: {first}"


def freeze_layers(model, prefixes: list[str]) -> str:
    """Make every layer whose name starts with one of `prefixes` not trainable (a nested
    model's layers too); returns the line to log. Unrecoverable when a prefix matches no
    layer, or when nothing is left to train. Call before the optimizer is built."""
    layers = list(_all_layers(model))
    unmatched = [p for p in prefixes if not any(layer.name.startswith(p) for layer in layers)]
    if unmatched:
        raise Unrecoverable(
            f"train.freeze: got {prefixes}, but no layer of model {model.name} starts with "
            f"{', '.join(map(repr, unmatched))}; accepted: prefixes of its layers' names "
            f"({_listed([layer.name for layer in layers])})"
        )
    trained_before = list(model.trainable_variables)
    frozen = [layer for layer in layers if layer.name.startswith(tuple(prefixes))]
    for layer in frozen:
        layer.trainable = False
    if not model.trainable_variables:
        raise Unrecoverable(
            f"train.freeze: got {prefixes}, which freezes every layer of model {model.name}; "
            "accepted: prefixes that leave some layer to train"
        )
    still_trained = {id(v) for v in model.trainable_variables}
    held = [v for v in trained_before if id(v) not in still_trained]
    return (
        f"freeze | not trained: {_listed([layer.name for layer in frozen])} "
        f"({_parameters(held):,} parameters) | trained: "
        f"{_parameters(model.trainable_variables):,} parameters"
    )


def _all_layers(model):
    """Every layer of `model`, those of the models nested in it included, outer first."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # a nested model (a backbone)
            yield from _all_layers(layer)


def _parameters(variables) -> int:
    total = 0
    for variable in variables:
        size = 1
        for dimension in variable.shape:
            size *= int(dimension)
        total += size
    return total


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN_LAYERS])
    return shown + (f" and {len(names) - _SHOWN_LAYERS} more" if len(names) > _SHOWN_LAYERS else "")
