"""Choosing the tf.distribute strategy from the cluster shape."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import tensorflow as tf

from disttrain.cluster import ClusterShape


def make_strategy(shape: ClusterShape, partition_min_shard_bytes: int = 0):
    """(strategy, coordinator or None) for this task's cluster shape.

    ps in the shape: ParameterServerStrategy with a ClusterCoordinator (asynchronous);
    workers but no ps: MultiWorkerMirroredStrategy (synchronous all-reduce); neither:
    the default strategy in this one process.
    """
    if shape.strategy == "parameter_server":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        strategy = tf.distribute.ParameterServerStrategy(
            resolver, variable_partitioner=variable_partitioner(shape, partition_min_shard_bytes)
        )
        return strategy, tf.distribute.coordinator.ClusterCoordinator(strategy)
    if shape.strategy == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy(), None
    return tf.distribute.get_strategy(), None


# The coordination-service barrier every MWMS member reaches once its training is over.
FINISHED_BARRIER = "disttrain/finished"


def leave_together(shape: ClusterShape, timeout_seconds: float, log: Callable[[str], None]) -> None:
    """Under MWMS: return once every member (chief and workers) has finished training.

    MultiWorkerMirroredStrategy runs TensorFlow's coordination service on the chief; each
    member's agent sends it heartbeats, and none tells it that it leaves (the agent's
    Shutdown() runs only when the eager context is destroyed, which Python's exit does
    not do). Each member used to exit on its own once its loop ended: a worker while the
    chief was still publishing, or the chief first, taking the service with it. The
    interpreter's teardown of the others (destroying the dataset iterators) then waited
    until the service declared the member that had left dead ("stopped sending
    heartbeats", after its 10 s heartbeat timeout) and aborted the collectives: 15-20 s
    after DONE, longer on a loaded machine. Meeting at the service's barrier after DONE,
    then exiting at once (task.py), ends every member within moments of each other.

    A member that died is not waited for: the service fails the barrier once its
    heartbeats stop; `timeout_seconds` bounds the rest. Training is over either way, so a
    failed barrier is only logged.
    """
    if shape.strategy != "multi_worker_mirrored":
        return
    from tensorflow.python.eager import context

    started = time.monotonic()
    try:
        context.context().wait_at_barrier(FINISHED_BARRIER, int(timeout_seconds * 1000))
    except (tf.errors.OpError, RuntimeError) as exc:
        log(f"train | WARNING | not every member finished together | {_first_line(exc)}")
        return
    log(f"train | every member finished | waited {time.monotonic() - started:.1f} s")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def variable_partitioner(shape: ClusterShape, min_shard_bytes: int):
    """Shard large variables across the ps (None: every variable whole on one ps).

    A variable of at least `min_shard_bytes` is cut along its first axis into shards of
    at least that size, at most one per ps: a 4096x4096 dense kernel then no longer makes
    one ps the hot spot every worker reads from.
    """
    if min_shard_bytes <= 0 or shape.ps < 2:
        return None
    _checkpoint_sharded_variables_whole()
    return tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=shape.ps
    )


def _checkpoint_sharded_variables_whole() -> None:
    """Let a Keras variable holding a ShardedVariable be checkpointed, as one tensor.

    A Keras 3 variable checkpoints through its value's `_serialize_to_tensors`, which
    TensorFlow's ShardedVariable does not implement (it only offers the older saveables),
    so saving fails. Giving it the two methods, in terms of its public conversion and
    `assign`, writes the whole value under the variable's usual key: the checkpoint is
    the same as an unpartitioned run's, so the evaluator (unpartitioned) and a resume with
    any ps count restore it.
    """
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    def serialize(variable):
        return {"VARIABLE_VALUE": tf.convert_to_tensor(variable)}

    def restore(variable, restored):
        return variable.assign(restored["VARIABLE_VALUE"])

    ShardedVariable._serialize_to_tensors = serialize
    ShardedVariable._restore_from_tensors = restore


def describe_placement(variables) -> str:
    """A start-up line: how many variables, their size, and which are sharded across ps."""
    sharded = []
    for variable in variables:
        value = getattr(variable, "value", variable)  # a Keras variable wraps a tf.Variable
        shards = getattr(value, "variables", None)  # a ShardedVariable lists its shards
        if shards is not None and len(shards) > 1:
            sharded.append(f"{variable.path} ({len(shards)} shards)")
    megabytes = sum(math.prod(v.shape) * 4 for v in variables) / 1e6  # float32 variables
    return (
        f"model | variables: {len(variables)} ({megabytes:.1f} MB) | "
        f"sharded across ps: {', '.join(sharded) if sharded else 'none'}"
    )
