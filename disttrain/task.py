"""`disttrain task --config PATH`: the one command every task of every launcher runs.

The role comes from TF_CONFIG; the resolved config comes from a file (a ConfigMap in
Kubernetes) or URL. Each role waits for the peers it needs before starting, so tasks may
be started in any order.
"""

from __future__ import annotations

import json
import os

import fsspec

from disttrain.checkpoints import wait_for_first_checkpoint
from disttrain.cluster import CHIEF, EVALUATOR, PS, WORKER, ClusterShape, Task, task_from_tf_config
from disttrain.config import Config, ConfigError, config_from_dict
from disttrain.done import is_done
from disttrain.failures import Unrecoverable, exit_at_once
from disttrain.heartbeat import start_heartbeat_from_env
from disttrain.lease import hold_run_dir
from disttrain.peers import accepts, resolves, wait_for_peers
from disttrain.preemption import watch_for_sigterm
from disttrain.progress import log
from disttrain.startup import phase_done
from disttrain.storage import RunDir


def load_task_config(path_or_url: str) -> Config:
    import yaml

    try:
        with fsspec.open(path_or_url, "r") as f:
            raw = yaml.safe_load(f.read())
    except FileNotFoundError:
        raise ConfigError(f"--config: {path_or_url!r} does not exist") from None
    try:
        return config_from_dict(raw or {})
    except ConfigError as exc:
        # The submitting machine found the model and this task's environment does not (its
        # image or PYTHONPATH lacks the package): a restart would not find it either.
        if all(problem.key == "model.name" for problem in exc.problems):
            raise Unrecoverable(f"{exc} (in this task's environment)") from None
        raise


def run_task(config_path: str) -> None:
    watch_for_sigterm()  # a task stopped now exits as preempted (EXIT_PREEMPTED)
    keep_two_inter_op_threads()
    config = load_task_config(config_path)
    # First, before the imports and the peer wait: a task stopped there is as hung.
    start_heartbeat_from_env(config.cluster.hung_task_seconds, log)
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = task_from_tf_config(tf_config)
    shape = ClusterShape.of(config)
    check_tf_config_matches(tf_config, shape, task)
    log(f"{task.name} | starting | strategy: {shape.strategy} | run dir: {config.run_dir}")
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    phase_done("python + cli")
    if task.role == EVALUATOR:
        run_evaluator(config)
        return
    # One writer a run dir (lease.py): the chief takes the lease first, so a job refused
    # for another job's run dir fails in seconds (exit 4), before TensorFlow and its peers.
    lease = hold_run_dir(RunDir(config.run_dir), config, log) if task.role == CHIEF else None
    # TensorFlow is imported before waiting for peers: the peers import it at the same
    # time, so the chief's import overlaps their start instead of following it.
    trains = task.role == CHIEF or shape.strategy == "multi_worker_mirrored"
    if trains:
        from disttrain.train import train
    else:
        from disttrain.server import serve
    phase_done("import tensorflow")
    if task.role in (CHIEF, WORKER):
        stage_remote_data(config)
    if not wait_for_needed_peers(config, shape, tf_config, task):
        log(f"{task.name} | stopping | the chief wrote DONE: the job ended before its peers met")
        if lease is not None:  # a chief restarted after DONE: the next job may take the run dir
            lease.release()
        return
    phase_done("peer wait")
    if trains:
        train(config, task, shape, lease)
        if shape.strategy == "multi_worker_mirrored":
            # Every member has met the others after DONE (strategy.leave_together) and has
            # nothing left to write; TensorFlow's teardown would wait for an abort that
            # comes only once the coordination service declares a member gone (10 s).
            exit_at_once(0)
    else:
        serve(config, task, tf_config)


def keep_two_inter_op_threads() -> None:
    """At least two threads in TensorFlow's inter-op pool, which it sizes by the CPUs this
    process may run on: on one (a task pinned to a core by `launcher.local.cpus`, taskset,
    or Kubernetes' static CPU manager) a ParameterServerStrategy worker never finishes its
    first scheduled function. Set before TensorFlow is imported; a value given is kept."""
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < 2:
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "2")


def run_evaluator(config: Config) -> None:
    """Evaluate every checkpoint until the run is done; TensorFlow is imported, and the
    model built, only once there is a first checkpoint (or DONE): until then the chief,
    workers and ps that are starting have the cores to themselves."""
    wait_for_first_checkpoint(
        RunDir(config.run_dir), config.train.steps, config.eval.poll_seconds, log
    )
    from disttrain.evaluator import Evaluator

    evaluator = Evaluator(config)
    try:
        evaluator.run_continuously()
    finally:
        evaluator.close()


def stage_remote_data(config: Config) -> None:
    """Stage a remote data folder on this task's machine before it meets its peers.

    Under ParameterServerStrategy the chief lists the split and the workers run the
    dataset graph it traced, file paths included: those paths are the chief's staged copy
    (`<data.scratch_dir>/<name of the URL>`), so each worker must hold the same copy at
    the same path on its own machine (a pod's /mnt). Staging before waiting for peers lets
    every machine copy at once. Tasks sharing a machine share one copy; a complete copy
    is reused.
    """
    from disttrain.data.sources import is_remote, list_split

    if config.data.source in ("image_folder", "tfrecord") and is_remote(config.data.root):
        list_split(config.data, config.data.train_split)


def wait_for_needed_peers(config: Config, shape: ClusterShape, tf_config: dict, task: Task) -> bool:
    """The PSS coordinator needs every server listening; everyone else only names.
    False when the job ended meanwhile: nothing is left to do.

    Servers listen first and connect later, so making them wait for each other's ports
    would deadlock; MWMS members meet in the all-reduce setup, which waits by itself.
    """
    peers = peer_addresses(tf_config, task)
    timeout = config.cluster.peer_timeout_seconds
    if task.role == CHIEF and shape.strategy == "parameter_server":
        check, what = accepts, "accept connections"
    else:
        check, what = resolves, "resolve"
    return wait_for_peers(peers, check, timeout, what, log, moot=lambda: ended(config))


def ended(config: Config) -> bool:
    """Whether the chief has written DONE for this run. A worker or ps replaced late (evicted
    or stopped near the end, it served out its grace period after DONE) starts when its
    peers have ended and no longer resolve; so does a chief restarted with its ps after
    DONE (the local launcher restarts both when a SIGTERMed ps exits just before the
    finished chief does). It must stop, not fail its peer wait and be retried until the
    restart budget is spent. Storage that cannot answer, or answers
    slowly, counts as not ended: the task waits on as before (one look, no retries)."""
    try:
        return is_done(RunDir(config.run_dir, retries=False), config.train.steps)
    except Exception:
        return False


def peer_addresses(tf_config: dict, task: Task) -> dict[str, str]:
    cluster = tf_config.get("cluster") or {}
    return {
        f"{role}-{i}": address
        for role, addresses in cluster.items()
        for i, address in enumerate(addresses)
        if Task(role, i) != task
    }


def check_tf_config_matches(tf_config: dict, shape: ClusterShape, task: Task) -> None:
    cluster = tf_config.get("cluster") or {}
    if task.role not in (CHIEF, WORKER, PS, EVALUATOR):
        raise ConfigError(
            f"TF_CONFIG task type {task.role!r}; accepted: chief, worker, ps, evaluator"
        )
    if task.role == EVALUATOR or shape.strategy == "single_process":
        return
    for role in (WORKER, PS):
        got = len(cluster.get(role, []))
        if got != shape.count(role):
            raise ConfigError(
                f"TF_CONFIG lists {got} {role} tasks but cluster.{role}"
                f"{'s' if role == WORKER else ''} in the config is "
                f"{shape.count(role)}"
            )
