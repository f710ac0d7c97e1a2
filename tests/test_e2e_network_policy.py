"""Nobody else on a job's ports: NetworkPolicy, enforced by the test cluster
(tests/kubecluster/network_policy.py), first for a bare server as policies come and go,
then for the k8s launcher's own policy while its job trains.

Each probe is a pod running a bare `socket.create_connection` to an address and port with
a short timeout. One small job (a worker and a ps) trains long enough for three probes: a
pod labelled as one of the job's own training pods connects; a pod of another job in the
same namespace and a pod in another namespace (with the very labels of the job's pods)
cannot.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
from kubecluster.disttrain_jobs import job_args, pods_of, training_started
from kubecluster.garbage import NAMESPACES, delete
from kubecluster.network_policy import TABLE
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


SERVER = """
    import socket
    server = socket.create_server(("0.0.0.0", 5000))
    while True:
        server.accept()[0].close()
"""


def has_policy_table(cluster, namespace: str, pod: str) -> bool:
    (netns,) = [
        r.netns
        for r in list(cluster.kubelet.runners.values())
        if (r.namespace, r.name) == (namespace, pod)
    ]
    listed = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "table", "inet", TABLE],
        capture_output=True,
        text=True,
    )
    return listed.returncode == 0


def test_policies_isolate_a_pod_as_they_come_and_go(kube_cluster, kube_namespace):
    cluster, namespace = kube_cluster, kube_namespace
    server = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "server", "labels": {"app": "db"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.12-slim",
                    "command": ["python3", "-c", textwrap.dedent(SERVER)],
                    "ports": [{"name": "sql", "containerPort": 5000}],
                }
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(server))
    address = cluster.wait_for(
        "the server's address",
        lambda: (cluster.get("Pod", namespace, "server") or {}).get("status", {}).get("podIP"),
    )
    web, batch = {"app": "web"}, {"app": "batch"}
    assert probe(cluster, namespace, probe_pod("open", batch, address, 5000)) == "connected\n"
    assert not has_policy_table(cluster, namespace, "server")  # no policy, no table

    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "db"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": web}}], "ports": [{"port": "sql"}]}
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(policy))
    refused = probe(cluster, namespace, probe_pod("batch", batch, address, 5000))
    assert refused.startswith("not connected: TimeoutError"), refused
    assert probe(cluster, namespace, probe_pod("web", web, address, 5000)) == "connected\n"

    cluster.kubectl("delete", "networkpolicy", "db", "-n", namespace)
    assert probe(cluster, namespace, probe_pod("after", batch, address, 5000)) == "connected\n"
    assert not has_policy_table(cluster, namespace, "server")


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
