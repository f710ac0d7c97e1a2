"""Choosing the tf.distribute strategy from the cluster shape."""

from __future__ import annotations

import tensorflow as tf

from disttrain.cluster import ClusterShape


def make_strategy(shape: ClusterShape):
    """(strategy, coordinator or None) for this task's cluster shape.

    ps in the shape: ParameterServerStrategy with a ClusterCoordinator (asynchronous);
    workers but no ps: MultiWorkerMirroredStrategy (synchronous all-reduce); neither:
    the default strategy in this one process.
    """
    if shape.strategy == "parameter_server":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        strategy = tf.distribute.ParameterServerStrategy(resolver)
        return strategy, tf.distribute.coordinator.ClusterCoordinator(strategy)
    if shape.strategy == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy(), None
    return tf.distribute.get_strategy(), None
