"""The cluster shape and the one function that turns it into a task's TF_CONFIG.

Every launcher (local processes, Kubernetes objects, Helm templates) describes the same
tasks with this module and hands each task the TF_CONFIG built here; only the way a
task's address is spelled differs (`127.0.0.1:port`, `name-worker-1.name:2222`, ...).

Pure Python: no TensorFlow, no Kubernetes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from disttrain.config import Config

CHIEF, WORKER, PS, EVALUATOR = "chief", "worker", "ps", "evaluator"
# Roles that make up the training cluster; the evaluator is deliberately not one of them.
TRAINING_ROLES = (CHIEF, WORKER, PS)
TASK_ENV = {"GRPC_FAIL_FAST": "use_caller"}


@dataclass(frozen=True)
class ClusterShape:
    workers: int
    ps: int
    evaluator: bool = True

    def count(self, role: str) -> int:
        return {CHIEF: 1, WORKER: self.workers, PS: self.ps, EVALUATOR: int(self.evaluator)}[role]

    @classmethod
    def of(cls, config: Config) -> ClusterShape:
        return cls(config.cluster.workers, config.cluster.ps, config.eval.enabled)

    @property
    def strategy(self) -> str:
        """What the chief trains with: the shape decides, not a separate setting."""
        if self.ps > 0:
            return "parameter_server"
        if self.workers > 0:
            return "multi_worker_mirrored"
        return "single_process"


@dataclass(frozen=True)
class Task:
    role: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"


# (role, index) -> "host:port"; each launcher supplies its own.
AddressOf = Callable[[str, int], str]


def tasks_of(shape: ClusterShape) -> list[Task]:
    """Every task of the job, in start order: servers first, then the chief, then the evaluator."""
    order = (PS, WORKER, CHIEF, EVALUATOR)
    return [Task(role, i) for role in order for i in range(shape.count(role))]


def cluster_spec(shape: ClusterShape, address_of: AddressOf) -> dict[str, list[str]]:
    """The `cluster` part of TF_CONFIG: chief, workers and ps, never the evaluator."""
    spec = {}
    for role in TRAINING_ROLES:
        if shape.count(role):
            spec[role] = [address_of(role, i) for i in range(shape.count(role))]
    return spec


def tf_config_for(shape: ClusterShape, address_of: AddressOf, task: Task) -> dict:
    """The TF_CONFIG of one task.

    The evaluator gets a cluster of its own task only: a ParameterServerStrategy
    coordinator that saw it would try to schedule training on it, and MWMS would wait
    for it to join the all-reduce.
    """
    if task.role == EVALUATOR:
        cluster = {EVALUATOR: [address_of(EVALUATOR, task.index)]}
    elif shape.strategy == "single_process":
        cluster = {}
    else:
        cluster = cluster_spec(shape, address_of)
    return {"cluster": cluster, "task": {"type": task.role, "index": task.index}}


def tf_config_json(shape: ClusterShape, address_of: AddressOf, task: Task) -> str:
    """TF_CONFIG as the exact string every launcher puts in the task's environment."""
    return json.dumps(tf_config_for(shape, address_of, task), sort_keys=True)


def task_from_tf_config(tf_config: dict) -> Task:
    """The task a TF_CONFIG describes; no TF_CONFIG at all means a single-process chief."""
    task = tf_config.get("task") or {}
    return Task(task.get("type", CHIEF), int(task.get("index", 0)))
