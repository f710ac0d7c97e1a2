"""Run a few steps of a full recipe under one strategy, in a process of its own; prints JSON.

`python tests/recipe_under_strategy.py parameter_server|multi_worker_mirrored|clip`: a
strategy configures TensorFlow's runtime for the whole process (collectives, remote
devices), so each one gets a fresh process. parameter_server starts an in-process cluster
(one worker, one ps) and schedules the chunk through a ClusterCoordinator, as the chief does.
clip compares one clipped step on two replicas (two logical CPUs) with the same step on one.
"""

from __future__ import annotations

import json
import socket
import sys

import keras
import numpy as np
import tensorflow as tf

from disttrain.config import DataConfig, ModelConfig, TrainConfig
from disttrain.data.pipeline import train_dataset
from disttrain.data.sources import list_split
from disttrain.models import build_model
from disttrain.steps import make_learning_rate, make_optimizer, make_train_chunk

DATA = DataConfig(source="synthetic", synthetic_classes=4, image_size=16, batch_size=8)
RECIPE = TrainConfig(
    steps=20,
    optimizer="sgd",
    learning_rate=0.05,
    nesterov=True,
    weight_decay=1e-4,
    lr_schedule="cosine",
    warmup_steps=2,
    min_learning_rate=0.001,
    clip_global_norm=1.0,
    label_smoothing=0.1,
)
STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parameter_server_strategy():
    cluster = tf.train.ClusterSpec(
        {"worker": [f"127.0.0.1:{free_port()}"], "ps": [f"127.0.0.1:{free_port()}"]}
    )
    for job in ("worker", "ps"):
        tf.distribute.Server(cluster, job_name=job, task_index=0, protocol="grpc", start=True)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    return strategy, tf.distribute.coordinator.ClusterCoordinator(strategy)


def main(which: str) -> None:
    keras.utils.set_random_seed(1)
    if which == "parameter_server":
        strategy, coordinator = parameter_server_strategy()
    else:
        strategy, coordinator = tf.distribute.MultiWorkerMirroredStrategy(), None
    split = list_split(DATA, "train")
    with strategy.scope():
        model = build_model(ModelConfig(width=4, dropout=0.0), 16, 4)
        optimizer = make_optimizer(RECIPE, model)
    chunk = make_train_chunk(
        strategy,
        model,
        optimizer,
        label_smoothing=RECIPE.label_smoothing,
        clip_global_norm=RECIPE.clip_global_norm,
    )
    dataset_fn = lambda _context: train_dataset(DATA, split, 1, 0, seed=1)  # noqa: E731
    if coordinator is None:
        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        sums = [float(v) for v in chunk(iterator, tf.constant(STEPS))]
    else:
        per_worker = coordinator.create_per_worker_dataset(
            lambda: strategy.distribute_datasets_from_function(dataset_fn)
        )
        remote = coordinator.schedule(chunk, args=(iter(per_worker), tf.constant(STEPS)))
        sums = [float(v) for v in remote.fetch()]
    slot_devices = sorted({v.value.device for v in optimizer.variables if "momentum" in v.path})
    print(
        json.dumps(
            {
                "strategy": type(strategy).__name__,
                "iterations": int(optimizer.iterations.numpy()),
                "learning_rate": float(optimizer.learning_rate.numpy()),
                "expected_learning_rate": float(make_learning_rate(RECIPE)(STEPS)),
                "loss_sum": sums[0],
                "examples": sums[2],
                "slot_devices": slot_devices,
            }
        )
    )


def clip_across_replicas() -> None:
    """One clipped SGD step on the same global batch: one replica, then two."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    config = TrainConfig(optimizer="sgd", momentum=0.0, learning_rate=1.0, clip_global_norm=0.01)
    split = list_split(DATA, "train")
    keras.utils.set_random_seed(1)
    initial = build_model(ModelConfig(width=4, dropout=0.0), 16, 4).get_weights()

    def one_step(strategy, distribute) -> list:
        with strategy.scope():
            model = build_model(ModelConfig(width=4, dropout=0.0), 16, 4)
            model.set_weights(initial)
            optimizer = make_optimizer(config, model)
        chunk = make_train_chunk(
            strategy, model, optimizer, random_flip=False, clip_global_norm=0.01
        )
        dataset = train_dataset(DATA, split, 1, 0, seed=1)
        chunk(iter(distribute(strategy, dataset)), tf.constant(1))
        return model.get_weights()

    alone = one_step(tf.distribute.get_strategy(), lambda _strategy, dataset: dataset)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two = one_step(
        mirrored, lambda strategy, dataset: strategy.experimental_distribute_dataset(dataset)
    )
    step = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(alone, initial)))
    differ = max(float(np.abs(a - b).max()) for a, b in zip(alone, two))
    replicas = mirrored.num_replicas_in_sync
    print(json.dumps({"replicas": replicas, "step_norm": float(step), "max_difference": differ}))


if __name__ == "__main__":
    clip_across_replicas() if sys.argv[1] == "clip" else main(sys.argv[1])
