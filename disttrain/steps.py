"""The math of one training chunk and one evaluation batch; the loop lives in train.py.

A chunk runs `num_steps` optimizer steps inside one tf.function, so the coordinator pays
its per-call cost (a remote function launch under ParameterServerStrategy) once per
chunk, not once per step. Each chunk returns sums (loss, correct, examples) that the
chief adds up; nothing here knows which strategy is in use.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from disttrain.data.pipeline import prepare_on_device

_SUM = tf.distribute.ReduceOp.SUM


def make_train_chunk(
    strategy: tf.distribute.Strategy, model: keras.Model, optimizer: keras.optimizers.Optimizer
):
    """A tf.function(iterator, num_steps) -> (loss_sum, correct, examples)."""

    def replica_step(images, labels):
        images = prepare_on_device(images, training=True)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
            # Averaged over the global batch: MWMS sums gradients across replicas.
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return _batch_sums(per_example, logits, labels)

    @tf.function
    def train_chunk(iterator, num_steps):
        totals = (tf.constant(0.0), tf.constant(0, tf.int64), tf.constant(0, tf.int64))
        for _ in tf.range(num_steps):
            images, labels = next(iterator)
            sums = strategy.run(replica_step, args=(images, labels))
            sums = [strategy.reduce(_SUM, s, axis=None) for s in sums]
            totals = tuple(t + s for t, s in zip(totals, sums))
        return totals

    return train_chunk


def make_eval_batch(model: keras.Model):
    """A tf.function(images, labels) -> (loss_sum, correct, examples) for uint8 images."""

    @tf.function
    def eval_batch(images, labels):
        logits = model(prepare_on_device(images, training=False), training=False)
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return _batch_sums(per_example, logits, labels)

    return eval_batch


def _batch_sums(per_example, logits, labels):
    predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.int64))
    examples = tf.cast(tf.size(labels), tf.int64)
    return tf.reduce_sum(tf.cast(per_example, tf.float32)), correct, examples
