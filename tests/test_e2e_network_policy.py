"""Nobody else on a job's ports: the k8s launcher's NetworkPolicy, enforced by the test
cluster (tests/kubecluster/network_policy.py), while the job trains.

One small job (a worker and a ps) trains long enough for three probe pods, each a bare
`socket.create_connection` to the ps's address and port with a short timeout: a pod
labelled as one of the job's own training pods connects; a pod of another job in the same
namespace and a pod in another namespace (with the very labels of the job's pods) cannot.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from kubecluster.disttrain_jobs import job_args, pods_of, training_started
from kubecluster.garbage import NAMESPACES, delete
from processes import cli

pytestmark = pytest.mark.integration

CONNECT_TIMEOUT_SECONDS = 3
PROBE = """
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout={timeout}).close()
    except OSError as error:
        print("not connected:", type(error).__name__, error, flush=True)
        sys.exit(1)
    print("connected", flush=True)
"""


def probe_pod(name: str, labels: dict[str, str], address: str, port: int) -> dict:
    script = textwrap.dedent(PROBE.format(timeout=CONNECT_TIMEOUT_SECONDS))
    command = ["python3", "-c", script, address, str(port)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "probe", "image": "python:3.12-slim", "command": command}],
        },
    }


def probe(cluster, namespace: str, pod: dict) -> str:
    """Run a probe pod to its end; its log ("connected" or why not)."""
    name = pod["metadata"]["name"]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    ended = cluster.wait_for(
        f"probe {namespace}/{name} to end",
        lambda: (
            (p := cluster.get("Pod", namespace, name))
            and p["status"].get("phase") in ("Succeeded", "Failed")
            and p
        ),
        timeout=120,
    )
    log = cluster.kubectl("logs", "-n", namespace, name).stdout
    assert (ended["status"]["phase"] == "Succeeded") == ("connected" in log.split()), log
    return log


def test_only_the_jobs_own_pods_reach_its_ps_port(k8s):
    cluster, namespace, env = k8s
    name, port = "guarded", 2222
    long_run = ("--set", "train.steps=100000")  # stopped below, once probed
    args = job_args(namespace, name, *long_run, workers=1, evaluator=False)
    cli("train", "--launcher", "k8s", *args, env=env, check=True)
    elsewhere = f"{namespace}-elsewhere"
    cluster.create_namespace(elsewhere)
    try:
        stored = cluster.get("NetworkPolicy", namespace, name, "networking.k8s.io/v1")
        assert stored["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": port}]
        # The chief drives the worker and the ps through the policy: its own pods connect.
        cluster.wait_for(
            "training to start", lambda: training_started(cluster, namespace, name), timeout=240
        )
        (ps,) = pods_of(cluster, namespace, name, role="ps")
        address = ps["status"]["podIP"]
        own = {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "trainer"}
        other_job = {**own, "app.kubernetes.io/instance": "intruder"}

        same_job = probe(cluster, namespace, probe_pod("same-job", own, address, port))
        assert same_job.split() == ["connected"]
        for where, labels in ((namespace, other_job), (elsewhere, own)):
            refused = probe(cluster, where, probe_pod("outsider", labels, address, port))
            # Dropped, as a CNI drops it: the connection times out.
            assert refused.startswith("not connected: TimeoutError"), (where, refused)
        # Still training: the job's own connections were never cut.
        assert ps["metadata"]["uid"] in {
            p["metadata"]["uid"] for p in pods_of(cluster, namespace, name, role="ps")
        }
    finally:
        cli("stop", name, "--launcher", "k8s", "--namespace", namespace, env=env)
        delete(cluster.store, NAMESPACES, "", elsewhere)
        cluster.wait_for(
            f"namespace {elsewhere} to be deleted",
            lambda: cluster.get("Namespace", "", elsewhere) is None,
            timeout=60,
        )
