"""Faults of the network and of the chief, on the test cluster (tests/kubecluster).

Each test runs a short job (one ps unless said, no evaluator) with the Kubernetes launcher,
breaks something while it trains, and checks how the job ends:

* a worker cut off from the ps (every packet between them dropped, then healed): TensorFlow
  has no deadline on the calls of a step, so the worker's chunk waits, and finishes once
  the network is back (or comes back CANCELLED or UNAVAILABLE and runs again); no pod
  restarts;
* the chief cut off from everyone for longer than `cluster.chief_timeout_seconds`: the
  servers stop serving it and are restarted, the chief exits to be restarted too
  (disttrain/cutoff.py), and the new chief resumes from the last checkpoint;
* a lost chief (SIGKILL: the pod fails with 137 and its Job makes a new one) while the ps
  runs on: the new chief trains from the checkpoint's values, not from what the ps held;
  and a lost chief under MultiWorkerMirroredStrategy (no ps), which takes its worker down.

Partitions are nftables rules in a pod's network namespace (kubecluster/partitions.py).
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from checkpoint_invariants import assert_each_checkpoint_holds_the_updates_of_its_step
from kubecluster.disttrain_jobs import (
    assert_trained,
    chief_log,
    chief_result,
    job_args,
    last_reported_step,
    pods_of,
    run_dir,
    training_started,
    wait_for_servers_to_stop,
)
from kubecluster.partitions import dropped, partitioned
from processes import cli

pytestmark = [pytest.mark.integration, pytest.mark.faults]

STEPS = 200


def start_job(k8s, name: str, *sets: str, workers: int = 1) -> None:
    cluster, namespace, env = k8s
    settings = [a for s in (f"train.steps={STEPS}", *sets) for a in ("--set", s)]
    args = job_args(namespace, name, *settings, workers=workers, evaluator=False)
    cli("train", "--launcher", "k8s", *args, env=env, check=True)
    cluster.wait_for(
        "training to start", lambda: training_started(cluster, namespace, name), timeout=300
    )


def finish(k8s, name: str) -> None:
    cluster, namespace, _ = k8s
    cluster.wait_for("the job to finish", lambda: chief_result(cluster, namespace, name), 600)
    assert chief_result(cluster, namespace, name) == "Complete", cluster.describe()
    assert_trained(cluster, namespace, name, steps=STEPS)


def latest_step(cluster, namespace: str, name: str) -> int:
    latest = run_dir(cluster, namespace, name) / "checkpoints" / "LATEST"
    return json.loads(latest.read_text())["step"] if latest.exists() else 0


def failed_pods(cluster, namespace: str, job: str) -> int:
    return cluster.get("Job", namespace, job, "batch/v1")["status"].get("failed", 0)


def logs_of(cluster, namespace: str, name: str, role: str) -> list[str]:
    """The logs of a task's pods (index 0), oldest pod first (kubectl: no CLI start-up)."""
    pods = sorted(
        pods_of(cluster, namespace, name, role=role, index="0"),
        key=lambda p: p["metadata"]["creationTimestamp"],
    )
    return [cluster.kubectl("logs", "-n", namespace, p["metadata"]["name"]).stdout for p in pods]


def test_a_worker_cut_off_from_the_ps_stalls_its_chunk_until_healed_and_nothing_fails(k8s):
    """TensorFlow's calls between a worker and a ps have no deadline, and a partition that
    drops packets tells TCP nothing: the chunk running on the cut-off worker waits (the
    chief's stall warning names it) and finishes once the network is back; no pod restarts.
    The call may come back CANCELLED or UNAVAILABLE after the heal, which the coordinator
    takes for a transient failure and runs the chunk again; nothing is marked failed."""
    cluster, namespace, _ = k8s
    start_job(k8s, "wcut", "train.stall_warning_seconds=10", workers=2)
    (ps,) = pods_of(cluster, namespace, "wcut", role="ps")
    (worker,) = pods_of(cluster, namespace, "wcut", role="worker", index="0")
    stalled = re.compile(
        r"no chunk finished for (\d+)s \| waiting for steps (\d+)-(\d+), running on worker-0"
    )

    def stalled_for(seconds: int) -> tuple[str, str, str] | None:
        found = stalled.findall(chief_log(cluster, namespace, "wcut"))
        return found[-1] if found and int(found[-1][0]) >= seconds else None

    peers = [ps["status"]["podIP"]]
    with partitioned(cluster, namespace, worker["metadata"]["name"], peers) as netns:
        # The chief's own clock: its warnings repeat every 10 s while the chunk waits.
        cluster.wait_for("worker-0's chunk to wait 30 s", lambda: stalled_for(30), timeout=300)
        _, _, chunk_end = stalled_for(30)
        assert dropped(netns) > 0  # the worker did try to reach the ps
    finish(k8s, "wcut")

    log = chief_log(cluster, namespace, "wcut")
    assert re.search(rf"train \| step:\s+{STEPS}/{STEPS}", log), log[-3000:]
    assert last_reported_step(log) >= int(chunk_end)
    # After the heal, the held-up call returns, or comes back with an error that TensorFlow's
    # coordinator takes for a transient failure of the worker-ps path: it runs the chunk
    # again and marks no worker or ps failed (cluster_coordinator.py, `wait_on_failure`).
    # That error is CANCELLED ("This derived error is ignored"), or UNAVAILABLE from the ps
    # when its side of the connection was reset meanwhile ("treated as a transient
    # connectivity failure", up to TF_COORDINATOR_IGNORE_TRANSIENT_PS_FAILURES, 3, per ps).
    # Any other failure is a bug.
    failures = re.findall(r"failed with (\w+)\(", log)
    assert set(failures) <= {"CancelledError", "UnavailableError"}, log[-3000:]
    ignored = log.count("This derived error is ignored") + log.count(
        "It is treated as a transient connectivity failure"
    )
    assert ignored >= len(failures), log[-3000:]
    assert "Worker /job:" not in log, log[-3000:]  # "Worker ... failed with": a real one
    assert "checkpoint | restored" not in log  # never restarted
    for job in ("wcut", "wcut-ps-0", "wcut-worker-0", "wcut-worker-1"):
        assert failed_pods(cluster, namespace, job) == 0, job
    assert [p["metadata"]["uid"] for p in pods_of(cluster, namespace, "wcut", role="ps")] == [
        ps["metadata"]["uid"]
    ]


def test_a_chief_cut_off_from_everyone_exits_and_the_job_resumes_with_fresh_servers(k8s):
    """Longer than cluster.chief_timeout_seconds: the ps and the worker stop serving the
    chief they cannot reach (exit 3, restarted by their Jobs); the chief, reaching none of
    them for as long, exits 3 as well instead of waiting in TensorFlow's calls, and its new
    pod (a new network namespace: not cut off) resumes from the last checkpoint."""
    cluster, namespace, env = k8s
    start_job(k8s, "ccut", "cluster.chief_timeout_seconds=15", "checkpoint.every_steps=50")
    cluster.wait_for(
        "a first checkpoint", lambda: latest_step(cluster, namespace, "ccut"), timeout=300
    )
    (chief,) = pods_of(cluster, namespace, "ccut", role="chief")
    with partitioned(cluster, namespace, chief["metadata"]["name"]):
        cluster.wait_for(
            "a new chief pod",
            lambda: any(
                p["metadata"]["uid"] != chief["metadata"]["uid"]
                for p in pods_of(cluster, namespace, "ccut", role="chief")
            ),
            timeout=300,
        )
    published = latest_step(cluster, namespace, "ccut")  # nothing publishes in between
    finish(k8s, "ccut")
    wait_for_servers_to_stop(cluster, namespace, "ccut-ps-0", "ccut-worker-0")

    cut_off, resumed = logs_of(cluster, namespace, "ccut", "chief")
    assert (
        "train | cut off | none of the servers (ps-0, worker-0) accepted a connection for 15s"
        in cut_off
    ), cut_off[-3000:]
    assert "error: cut off from every server for 15s: ps-0, worker-0" in cut_off
    for role in ("ps", "worker"):
        gave_up, last = logs_of(cluster, namespace, "ccut", role)
        assert re.search(r"error: the chief \(\S+\) was unreachable for 15s", gave_up), gave_up[
            -2000:
        ]
        assert f"{role}-0 | stopping | the chief wrote DONE" in last, last[-2000:]
    assert f"checkpoint | restored | ckpt-{published} | resuming at step {published}" in resumed
    for job in ("ccut", "ccut-ps-0", "ccut-worker-0"):
        assert failed_pods(cluster, namespace, job) == 1, (job, cluster.describe())
    assert_each_checkpoint_holds_the_updates_of_its_step(run_dir(cluster, namespace, "ccut"))


def test_a_lost_chief_resumes_from_the_checkpoint_on_the_ps_that_outlived_it(k8s):
    """SIGKILL of the chief, once it trained past its last checkpoint: its pod fails (137)
    and its Job makes a new one; the ps and the worker run on. Each coordinator creates
    its variables anew, in a TensorFlow eager context of its own on every server, and
    restores the checkpoint into them: the new chief starts from the checkpoint's weights
    and update count, not from what the ps held for the lost chief (trained past it)."""
    cluster, namespace, env = k8s
    # One checkpoint before the last: the chief is killed between the two, after training
    # past the first, so nothing is published between the kill and the restart.
    start_job(k8s, "lost", f"checkpoint.every_steps={STEPS // 2}")

    def trained_past_the_checkpoint() -> int:
        published = latest_step(cluster, namespace, "lost")
        trained = last_reported_step(chief_log(cluster, namespace, "lost"))
        return trained if 0 < published < trained else 0

    trained = cluster.wait_for(
        "training past the first checkpoint", trained_past_the_checkpoint, timeout=300
    )
    (ps,) = pods_of(cluster, namespace, "lost", role="ps")
    chief = kill_the_chief(cluster, namespace, "lost")
    assert exit_code(cluster, namespace, chief) == 137  # a crash: 128 + SIGKILL
    published = latest_step(cluster, namespace, "lost")  # the lost chief's last
    finish(k8s, "lost")

    assert failed_pods(cluster, namespace, "lost") == 1
    # The ps and the worker outlived the chief: the same pods, never failed.
    assert [p["metadata"]["uid"] for p in pods_of(cluster, namespace, "lost", role="ps")] == [
        ps["metadata"]["uid"]
    ]
    assert failed_pods(cluster, namespace, "lost-ps-0") == 0
    assert failed_pods(cluster, namespace, "lost-worker-0") == 0
    # One eager context per coordinator on the ps: the new chief's variables are its own.
    (ps_log,) = logs_of(cluster, namespace, "lost", "ps")
    assert ps_log.count("Creating sync eager service context") == 2, ps_log[-3000:]

    _, resumed = logs_of(cluster, namespace, "lost", "chief")
    line = re.search(
        rf"checkpoint \| restored \| ckpt-{published} \| resuming at step {published} \| "
        r"optimizer updates: (\d+) \| weights \|w\| sum: (\S+)",
        resumed,
    )
    assert line, resumed[-3000:]
    assert trained > published  # what the ps held had more updates than the checkpoint
    assert int(line.group(1)) == published
    folder = run_dir(cluster, namespace, "lost") / "checkpoints" / f"ckpt-{published}"
    assert float(line.group(2)) == pytest.approx(weights_sum(folder), rel=1e-6)
    assert_each_checkpoint_holds_the_updates_of_its_step(run_dir(cluster, namespace, "lost"))


def kill_the_chief(cluster, namespace: str, name: str) -> dict:
    """SIGKILL the chief's process, as a crash would; returns its pod once it has failed."""
    (chief,) = pods_of(cluster, namespace, name, role="chief")
    process = cluster.process_of(namespace, chief["metadata"]["name"])
    assert process is not None, cluster.describe()
    process.send_signal(signal.SIGKILL)
    cluster.wait_for(
        "the chief's pod to fail", lambda: exit_code(cluster, namespace, chief) is not None, 60
    )
    return chief


def exit_code(cluster, namespace: str, pod: dict) -> int | None:
    """The exit code of a pod's ended container, None while it runs."""
    stored = cluster.get("Pod", namespace, pod["metadata"]["name"]) or {}
    for status in stored.get("status", {}).get("containerStatuses", []):
        ended = status.get("state", {}).get("terminated")
        if ended:
            return ended["exitCode"]
    return None


# Where a checkpoint keeps the model's weights: a variable is saved once, under the first
# path that reaches it, and the optimizer's list of what it trains comes before the model.
MODEL_WEIGHTS = ("optimizer/_trainable_variables/", "model/")


def weights_sum(folder: Path) -> float:
    """The sum of |w| over the model's float weights in a checkpoint, as the restoring chief
    logs it (disttrain/train.py, describe_restored)."""
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(folder / "ckpt"))
    dtypes = reader.get_variable_to_dtype_map()
    return sum(
        float(np.abs(reader.get_tensor(key).astype(np.float64)).sum())
        for key, dtype in dtypes.items()
        if key.startswith(MODEL_WEIGHTS) and dtype.is_floating
    )


def test_a_lost_chief_under_mwms_restarts_with_its_replicas_from_the_last_checkpoint(k8s):
    """MultiWorkerMirroredStrategy (no ps): every replica takes part in each step's
    all-reduce, so a SIGKILLed chief fails the worker's step too; each is restarted by its
    Job and together they resume from the last published checkpoint."""
    cluster, namespace, _ = k8s
    start_job(k8s, "mwms", "cluster.ps=0", f"checkpoint.every_steps={STEPS // 2}")
    cluster.wait_for(
        "a first checkpoint", lambda: latest_step(cluster, namespace, "mwms"), timeout=300
    )
    kill_the_chief(cluster, namespace, "mwms")
    published = latest_step(cluster, namespace, "mwms")
    finish(k8s, "mwms")

    _, resumed = logs_of(cluster, namespace, "mwms", "chief")
    assert "strategy: multi_worker_mirrored" in resumed
    assert f"checkpoint | restored | ckpt-{published} | resuming at step {published}" in resumed
    assert failed_pods(cluster, namespace, "mwms") == 1
    assert failed_pods(cluster, namespace, "mwms-worker-0") >= 1
    assert_each_checkpoint_holds_the_updates_of_its_step(run_dir(cluster, namespace, "mwms"))
