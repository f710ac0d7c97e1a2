"""The math of one training chunk and one evaluation batch; the loop lives in train.py.

A chunk runs `num_steps` optimizer steps inside one tf.function, so the coordinator pays
its per-call cost (a remote function launch under ParameterServerStrategy) once per
chunk, not once per step. Each chunk returns sums (loss, correct, examples, bad files)
that the chief adds up; nothing here knows which strategy is in use.

A negative label marks a placeholder for a file the input pipeline could not decode (see
data/pipeline.py): it is left out of the loss and the accuracy, and counted the first
time a worker meets it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from disttrain.config import TrainConfig
from disttrain.data.pipeline import BAD_FILE_FIRST_SEEN, prepare_on_device, random_crops

_SUM = tf.distribute.ReduceOp.SUM


def make_optimizer(config: TrainConfig, model: keras.Model) -> keras.optimizers.Optimizer:
    """The recipe's optimizer, built for the model (call inside the strategy scope).

    Adam, AdamW or SGD with the learning-rate schedule and decoupled weight decay of
    `config` (the step clips the gradients: see `make_train_chunk`); the defaults are plain
    Adam at a constant rate. float16 gets dynamic loss scaling, as its small gradients
    underflow. The optimizer updates each shard of a partitioned variable as a variable of
    its own: its slots then live on the shard's ps, and no update needs the whole variable
    in one place (a ShardedVariable cannot be updated as one).
    """
    common = {
        "learning_rate": make_learning_rate(config),
        "weight_decay": config.weight_decay or None,
    }
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            momentum=config.momentum, nesterov=config.nesterov, **common
        )
    elif config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(**common)
    else:
        optimizer = keras.optimizers.Adam(**common)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(update_targets(model.trainable_variables))
    return optimizer


def make_learning_rate(
    config: TrainConfig,
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate, or its schedule over the optimizer's step count.

    Keras calls a schedule with the optimizer's `iterations`, a variable the checkpoint
    holds with the optimizer: a resumed run continues the curve where it stopped. It
    counts applied steps, as the global step does (a float16 step skipped for overflowing
    gradients is the one difference).
    """
    schedules = keras.optimizers.schedules
    warmup = config.warmup_steps
    if config.lr_schedule == "cosine":  # Keras's own warmup: linear, from 0 to the peak
        return schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else config.learning_rate,
            decay_steps=config.decay_steps or config.steps - warmup,
            alpha=config.min_learning_rate / config.learning_rate,
            warmup_target=config.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    rate = config.learning_rate
    if config.lr_schedule == "piecewise":
        rate = schedules.PiecewiseConstantDecay(config.lr_boundaries, config.lr_values)
    return LinearWarmup(rate, warmup) if warmup else rate


@keras.saving.register_keras_serializable("disttrain")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """A rate (or schedule) scaled linearly from 0 to all of it over `warmup_steps`, the
    warmup CosineDecay has built in, for the schedules that have none."""

    def __init__(self, rate, warmup_steps: int):
        self.rate, self.warmup_steps = rate, warmup_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rate = self.rate(step) if callable(self.rate) else self.rate
        return rate * keras.ops.minimum(step / self.warmup_steps, 1.0)

    def get_config(self) -> dict:
        rate = self.rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = keras.optimizers.schedules.serialize(rate)
        return {"rate": rate, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config: dict) -> LinearWarmup:
        rate = config["rate"]
        if isinstance(rate, dict):
            rate = keras.optimizers.schedules.deserialize(rate)
        return cls(rate, config["warmup_steps"])


def learning_rate_at(rate, step: int) -> float:
    """The value of `make_learning_rate`'s result at `step` (for the summaries)."""
    return float(rate(step)) if callable(rate) else float(rate)


def update_targets(variables) -> list:
    """The variables the optimizer updates: the shards of a partitioned variable, in order."""
    return [target for variable in variables for target in _shards_or_self(variable)]


def split_gradients(grads, variables) -> list:
    """Each variable's gradient, cut along axis 0 like its shards (see update_targets)."""
    parts = []
    for grad, variable in zip(grads, variables):
        shards = _shards_or_self(variable)
        sizes = [shard.shape[0] for shard in shards]
        parts.extend(tf.split(grad, sizes, axis=0) if len(shards) > 1 else [grad])
    return parts


def _shards_or_self(variable) -> list:
    shards = getattr(getattr(variable, "value", None), "variables", None)
    return list(shards) if shards is not None and len(shards) > 1 else [variable]


def make_train_chunk(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    jit_compile: bool = False,
    crop_min_area: float = 0.0,
    label_smoothing: float = 0.0,
    random_flip: bool = True,
    clip_global_norm: float = 0.0,
):
    """A tf.function(iterator, num_steps) -> (loss_sum, correct, examples, bad_files).

    `crop_min_area` > 0: the batches arrive uncropped (a small split decoded once, see
    `decodes_once`) and the step crops them first, on the worker's device. The loss (and
    the loss sums it reports) is smoothed by `label_smoothing`; `random_flip` flips images
    left-right at random; `clip_global_norm` > 0 rescales each step's gradients to at most
    that global norm (see `clipped`).
    """
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def loss_of(logits, labels):
        per_example = per_example_loss(tf.maximum(labels, 0), logits, label_smoothing)
        per_example *= tf.cast(labels >= 0, tf.float32)
        # Averaged over the global batch: MWMS sums gradients across replicas.
        loss = tf.nn.compute_average_loss(per_example)
        return per_example, optimizer.scale_loss(loss) if scales_loss else loss

    def forward_backward(trainable, non_trainable, images, labels):
        """Gradients with respect to variable *values*, read on the worker beforehand.

        Working on values, not variables, is what lets XLA compile the pass (it cannot
        reach a variable living on a parameter server) and what lets a variable sharded
        across ps (a ShardedVariable, which has no single handle to differentiate) be
        trained: its value is the shards concatenated.
        """
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            logits, non_trainable = model.stateless_call(
                trainable,
                non_trainable,
                prepare_on_device(images, True, random_flip),
                training=True,
            )
            per_example, loss = loss_of(tf.cast(logits, tf.float32), labels)
        return tape.gradient(loss, trainable), per_example, logits, non_trainable

    if jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def read(variables):
        # convert_to_tensor, not identity: a ShardedVariable converts to its concatenation.
        return [tf.convert_to_tensor(v.value) for v in variables]

    def clipped(grads):
        """The gradients scaled to a global norm of at most `clip_global_norm`.

        The norm is that of the global batch's gradient: under MultiWorkerMirroredStrategy
        the sum of the replicas' gradients, so it is all-reduced here first (Keras's own
        `global_clipnorm` would clip each replica's share before the optimizer sums them).
        A loss-scaled gradient is measured unscaled; the optimizer unscales it later.
        """
        total = grads
        if strategy.num_replicas_in_sync > 1:
            total = tf.distribute.get_replica_context().all_reduce(_SUM, grads)
        norm = tf.linalg.global_norm(total)
        if scales_loss:
            norm /= tf.cast(optimizer.dynamic_scale, norm.dtype)
        # A norm that overflowed makes the step non-finite: the loss-scale optimizer skips it.
        factor = tf.where(
            tf.math.is_finite(norm), tf.minimum(1.0, clip_global_norm / norm), float("nan")
        )
        return [grad * factor for grad in grads]

    def replica_step(images, labels):
        if crop_min_area:  # outside the XLA-compiled pass: crop_and_resize stays a TF op
            images = random_crops(images, crop_min_area)
        given = read(model.non_trainable_variables)
        grads, per_example, logits, updated = forward_backward(
            read(model.trainable_variables), given, images, labels
        )
        if clip_global_norm:
            grads = clipped(grads)
        for variable, value, old in zip(model.non_trainable_variables, updated, given):
            # Batch-norm statistics and dropout seeds. A frozen layer's weights come back as
            # the very tensors they were read as: not written back (to the ps) every step.
            # (An XLA-compiled pass returns new tensors: then every one is written, unchanged.)
            if value is not old:
                variable.assign(value)
        # The loss-scale optimizer unscales, and skips a step whose gradients overflowed.
        targets = update_targets(model.trainable_variables)
        optimizer.apply_gradients(zip(split_gradients(grads, model.trainable_variables), targets))
        bad = tf.reduce_sum(tf.cast(tf.equal(labels, BAD_FILE_FIRST_SEEN), tf.int64))
        return (*_batch_sums(per_example, logits, labels), bad)

    @tf.function
    def train_chunk(iterator, num_steps):
        totals = (
            tf.constant(0.0),
            tf.constant(0, tf.int64),
            tf.constant(0, tf.int64),
            tf.constant(0, tf.int64),
        )
        for _ in tf.range(num_steps):
            images, labels = next(iterator)
            sums = strategy.run(replica_step, args=(images, labels))
            sums = [strategy.reduce(_SUM, s, axis=None) for s in sums]
            totals = tuple(t + s for t, s in zip(totals, sums))
        return totals

    return train_chunk


def per_example_loss(labels, logits, label_smoothing: float = 0.0):
    """Cross-entropy of each example's logits against its integer label, the label
    smoothed towards the uniform distribution by `label_smoothing` (0: not at all)."""
    if not label_smoothing:
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    targets = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
    return keras.losses.categorical_crossentropy(
        targets, logits, from_logits=True, label_smoothing=label_smoothing
    )


def make_eval_batch(model: keras.Model):
    """A tf.function(images, labels) -> (loss_sum, correct, examples, predicted classes) for
    uint8 images."""

    @tf.function
    def eval_batch(images, labels):
        logits = tf.cast(
            model(prepare_on_device(images, training=False), training=False), tf.float32
        )
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
        return (*_batch_sums(per_example, logits, labels), predicted)

    return eval_batch


def _batch_sums(per_example, logits, labels):
    """(loss sum, correct, examples) over the examples with a real (non-negative) label."""
    valid = labels >= 0
    predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
    correct = tf.reduce_sum(tf.cast(tf.logical_and(tf.equal(predictions, labels), valid), tf.int64))
    examples = tf.reduce_sum(tf.cast(valid, tf.int64))
    return tf.reduce_sum(tf.cast(per_example, tf.float32)), correct, examples
