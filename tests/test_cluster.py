"""The cluster shape and TF_CONFIG contract that every launcher shares."""

import json

import pytest

from disttrain.cluster import (
    ClusterShape,
    Task,
    task_from_tf_config,
    tasks_of,
    tf_config_for,
    tf_config_json,
)


def address(role: str, index: int) -> str:
    return f"{role}-{index}.job:2222"


@pytest.mark.parametrize(
    ("workers", "ps", "evaluator"),
    [(2, 1, True), (4, 2, False), (1, 0, True), (0, 0, True)],
)
def test_every_task_sees_the_same_cluster_and_its_own_task(workers, ps, evaluator):
    shape = ClusterShape(workers, ps, evaluator)
    training = [t for t in tasks_of(shape) if t.role != "evaluator"]
    clusters = {json.dumps(tf_config_for(shape, address, t)["cluster"]) for t in training}
    assert len(clusters) == 1
    for task in tasks_of(shape):
        config = tf_config_for(shape, address, task)
        assert config["task"] == {"type": task.role, "index": task.index}
        assert task_from_tf_config(config) == task


def test_parameter_server_cluster_lists_chief_workers_and_ps_but_not_the_evaluator():
    shape = ClusterShape(workers=2, ps=1, evaluator=True)
    config = tf_config_for(shape, address, Task("worker", 1))
    assert config["cluster"] == {
        "chief": ["chief-0.job:2222"],
        "worker": ["worker-0.job:2222", "worker-1.job:2222"],
        "ps": ["ps-0.job:2222"],
    }


def test_the_evaluator_gets_only_its_own_task():
    shape = ClusterShape(workers=2, ps=1, evaluator=True)
    config = tf_config_for(shape, address, Task("evaluator", 0))
    assert config == {
        "cluster": {"evaluator": ["evaluator-0.job:2222"]},
        "task": {"type": "evaluator", "index": 0},
    }


def test_shape_decides_the_strategy():
    assert ClusterShape(2, 1).strategy == "parameter_server"
    assert ClusterShape(2, 0).strategy == "multi_worker_mirrored"
    assert ClusterShape(0, 0).strategy == "single_process"


def test_a_single_process_job_has_an_empty_cluster():
    config = tf_config_for(ClusterShape(0, 0, False), address, Task("chief", 0))
    assert config == {"cluster": {}, "task": {"type": "chief", "index": 0}}


def test_tasks_start_servers_before_the_chief_and_evaluator_last():
    order = [t.name for t in tasks_of(ClusterShape(2, 1, True))]
    assert order == ["ps-0", "worker-0", "worker-1", "chief-0", "evaluator-0"]


def test_tf_config_json_is_stable_and_keeps_the_task_index_readable_in_graph():
    text = tf_config_json(ClusterShape(2, 1), address, Task("worker", 1))
    assert text == tf_config_json(ClusterShape(2, 1), address, Task("worker", 1))
    # disttrain.data.pipeline.worker_index_on_worker parses exactly this shape.
    assert '"task": {"index": 1, "type": "worker"}' in text
