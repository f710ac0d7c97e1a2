"""The test cluster itself (tests/kubecluster), driven with the real kubectl and helm.

These prove the cluster behaves as Kubernetes does for what the launchers rely on, so the
end-to-end launcher tests (test_e2e_kubernetes.py) can trust it: Indexed Jobs whose pods
reach each other by DNS name on separate network hosts, backoffLimit, restart in place with
`logs --previous`, cascade and orphan deletion, strict validation, env and volumes,
server-side apply (helm), deadlines and TTLs, a gateway to Azurite outside the cluster, and a
teardown that leaves nothing behind, even after a test process was killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kubecluster import KubeCluster, unavailable_reason
from kubecluster.external import azurite_outside
from kubecluster.network import GATEWAY_ADDRESS, host_links, netns_names

pytestmark = pytest.mark.integration


def python_job(name: str, script: str, **spec: object) -> dict:
    """A batch/v1 Job whose container runs `script` with the project's python."""
    pod_spec = {
        "restartPolicy": spec.pop("restartPolicy", "Never"),
        "containers": [
            {
                "name": "main",
                "image": "python:3.11-slim",
                "command": ["python", "-c", textwrap.dedent(script)],
            }
        ],
    }
    pod_spec.update(spec.pop("pod", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"labels": {"job": name}}, "spec": pod_spec}, **spec},
    }


def apply(cluster: KubeCluster, namespace: str, *objects: dict, server_side: bool = False):
    args = ["apply", "-n", namespace, "-f", "-"] + (["--server-side"] if server_side else [])
    return cluster.kubectl(*args, input="\n---\n".join(json.dumps(o) for o in objects))


def job_condition(cluster: KubeCluster, namespace: str, name: str) -> dict | None:
    job = cluster.get("Job", namespace, name, "batch/v1") or {}
    done = [
        c
        for c in (job.get("status") or {}).get("conditions", [])
        if c["type"] in ("Complete", "Failed")
    ]
    return done[0] if done else None


def wait_job(cluster: KubeCluster, namespace: str, name: str, timeout: float = 60) -> dict:
    return cluster.wait_for(
        f"job {name} to finish", lambda: job_condition(cluster, namespace, name), timeout
    )


def pods_of(cluster: KubeCluster, namespace: str, job: str) -> list[dict]:
    return cluster.list("Pod", namespace, f"job={job}")


PING_PONG = """
    import os, socket, time
    index = int(os.environ["JOB_COMPLETION_INDEX"])
    print("index", index, "hostname", socket.gethostname(), flush=True)
    if index == 0:
        server = socket.create_server(("0.0.0.0", 5000))
        conn, (peer, _) = server.accept()
        print("from", peer, conn.recv(100).decode(), flush=True)
        conn.sendall(b"pong")
    else:
        for attempt in range(300):
            try:
                conn = socket.create_connection(("pingpong-0.peers", 5000))
                break
            except OSError:
                time.sleep(0.1)
        conn.sendall(b"ping from " + socket.gethostname().encode())
        print("reply", conn.recv(100).decode(), flush=True)
"""


def test_indexed_job_pods_reach_each_other_by_dns_name(kube_cluster, kube_namespace):
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "peers"},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"job": "pingpong"},
        },
    }
    job = python_job(
        "pingpong",
        PING_PONG,
        completions=2,
        parallelism=2,
        completionMode="Indexed",
        backoffLimit=0,
        pod={"subdomain": "peers"},
    )
    apply(kube_cluster, kube_namespace, service, job)
    assert wait_job(kube_cluster, kube_namespace, "pingpong")["type"] == "Complete"

    status = kube_cluster.get("Job", kube_namespace, "pingpong", "batch/v1")["status"]
    assert status["completedIndexes"] == "0-1" and status["succeeded"] == 2
    pods = {p["spec"]["hostname"]: p for p in pods_of(kube_cluster, kube_namespace, "pingpong")}
    assert set(pods) == {"pingpong-0", "pingpong-1"}
    addresses = {h: p["status"]["podIP"] for h, p in pods.items()}
    assert addresses["pingpong-0"] != addresses["pingpong-1"]
    assert all(ip.startswith("198.1") for ip in addresses.values())
    server_log = kube_cluster.kubectl(
        "logs", "-n", kube_namespace, pods["pingpong-0"]["metadata"]["name"]
    ).stdout
    # The server saw the client's own pod address: two hosts, not one loopback.
    assert f"from {addresses['pingpong-1']} ping from pingpong-1" in server_log
    assert "hostname pingpong-0" in server_log
    client_log = kube_cluster.kubectl(
        "logs", "-n", kube_namespace, pods["pingpong-1"]["metadata"]["name"]
    ).stdout
    assert "reply pong" in client_log


def test_failing_pod_exhausts_backoff_limit(kube_cluster, kube_namespace):
    job = python_job("fails", "import sys; print('boom'); sys.exit(3)", backoffLimit=1)
    apply(kube_cluster, kube_namespace, job)
    waited = kube_cluster.kubectl(
        "wait", "-n", kube_namespace, "--for=condition=Failed", "job/fails", "--timeout=60s"
    )
    assert "condition met" in waited.stdout
    condition = job_condition(kube_cluster, kube_namespace, "fails")
    assert condition["reason"] == "BackoffLimitExceeded"
    pods = pods_of(kube_cluster, kube_namespace, "fails")
    assert len(pods) == 2  # the first try and one retry: backoffLimit 1
    for pod in pods:
        assert pod["status"]["phase"] == "Failed"
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"


# A task that takes 3 s to stop on SIGTERM (disttrain's chief publishing), then exits 5.
STOPS_AS_PREEMPTED = """
    import signal, sys, time
    def stop(*_):
        print("SIGTERM", flush=True)
        time.sleep(3)
        sys.exit(5)
    signal.signal(signal.SIGTERM, stop)
    print("running", flush=True)
    time.sleep(600)
"""


def running_pod(cluster: KubeCluster, namespace: str, job: str, not_uid: str = "") -> dict:
    def running() -> dict | None:
        found = [
            p
            for p in pods_of(cluster, namespace, job)
            if p["status"].get("phase") == "Running" and p["metadata"]["uid"] != not_uid
        ]
        return found[0] if found else None

    return cluster.wait_for(f"a running pod of {job}", running)


def test_the_pod_failure_policy_fails_on_exit_4_and_replaces_disrupted_pods_for_free(
    kube_cluster, kube_namespace
):
    """disttrain's podFailurePolicy (launchers/k8s_objects.py), as the Job controller applies
    it: exit 4 fails the Job after one pod; a pod evicted through the eviction API (it gets
    DisruptionTarget, and dies of SIGTERM) or one that exits 5 after a plain delete is
    replaced, once it has ended, without counting against backoffLimit 0."""
    from launchers.k8s_objects import FAILURE_POLICY

    def job(name: str, script: str) -> dict:
        return python_job(name, script, backoffLimit=0, podFailurePolicy=FAILURE_POLICY)

    apply(
        kube_cluster,
        kube_namespace,
        job("broken", "import sys; print('error: no fix'); sys.exit(4)"),
        job("evicted", "import time; print('running', flush=True); time.sleep(600)"),
        job("preempted", STOPS_AS_PREEMPTED),
    )
    condition = wait_job(kube_cluster, kube_namespace, "broken")
    (pod,) = pods_of(kube_cluster, kube_namespace, "broken")
    assert (condition["type"], condition["reason"]) == ("Failed", "PodFailurePolicy")
    assert condition["message"] == (
        f"Container main for pod {kube_namespace}/{pod['metadata']['name']} failed with exit "
        "code 4 matching FailJob rule at index 0"
    )

    evicted = running_pod(kube_cluster, kube_namespace, "evicted")
    kube_cluster.evict(kube_namespace, evicted["metadata"]["name"])
    deleted = running_pod(kube_cluster, kube_namespace, "preempted")
    name = deleted["metadata"]["name"]
    # Running means its process started, not that python has installed the SIGTERM handler
    # yet (slow on a loaded machine); a SIGTERM before that exits 143, a counted failure.
    kube_cluster.wait_for(
        f"{name} to handle SIGTERM",
        lambda: "running" in kube_cluster.kubectl("logs", "-n", kube_namespace, name).stdout,
    )
    kube_cluster.kubectl("delete", "pod", "-n", kube_namespace, name, "--wait=false")
    # Still stopping (3 s): not replaced before it has ended.
    (terminating,) = pods_of(kube_cluster, kube_namespace, "preempted")
    assert terminating["metadata"]["deletionTimestamp"]
    for job_name, old in (("evicted", evicted), ("preempted", deleted)):
        uid = old["metadata"]["uid"]
        running_pod(kube_cluster, kube_namespace, job_name, not_uid=uid)
        status = kube_cluster.get("Job", kube_namespace, job_name, "batch/v1")["status"]
        assert status["failed"] == 0 and not job_condition(kube_cluster, kube_namespace, job_name)
        # The old pod ended, was counted (as nothing) and let go: it is gone from the API.
        kube_cluster.wait_for(
            f"the old {job_name} pod to be removed",
            lambda n=job_name, u=uid: u not in uids_of(kube_cluster, kube_namespace, n),
        )


def uids_of(cluster: KubeCluster, namespace: str, job: str) -> set[str]:
    return {pod["metadata"]["uid"] for pod in pods_of(cluster, namespace, job)}


COUNTING = """
    import pathlib, sys
    counter = pathlib.Path("/scratch/attempts")
    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    print(f"attempt {attempt}", flush=True)
    sys.exit(0 if attempt == 2 else 1)
"""


def test_on_failure_restarts_in_place_and_keeps_previous_logs(kube_cluster, kube_namespace):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "retry"},
        "spec": {
            "restartPolicy": "OnFailure",
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.11-slim",
                    "command": ["python", "-c", textwrap.dedent(COUNTING)],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                }
            ],
        },
    }
    apply(kube_cluster, kube_namespace, pod)
    kube_cluster.wait_for(
        "pod retry to succeed",
        lambda: (
            (kube_cluster.get("Pod", kube_namespace, "retry") or {}).get("status", {}).get("phase")
            == "Succeeded"
        ),
        timeout=60,
    )
    status = kube_cluster.get("Pod", kube_namespace, "retry")["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    logs = kube_cluster.kubectl("logs", "-n", kube_namespace, "retry").stdout
    previous = kube_cluster.kubectl("logs", "-n", kube_namespace, "retry", "--previous").stdout
    assert (logs.strip(), previous.strip()) == ("attempt 2", "attempt 1")


def test_deleting_a_job_cascades_to_its_pods_or_orphans_them(kube_cluster, kube_namespace):
    for name in ("cascade", "orphan"):
        apply(kube_cluster, kube_namespace, python_job(name, "import time; time.sleep(600)"))
    for name in ("cascade", "orphan"):
        kube_cluster.wait_for(
            f"{name} pod running",
            lambda n=name: [
                p
                for p in pods_of(kube_cluster, kube_namespace, n)
                if p["status"].get("phase") == "Running"
            ],
        )
    kube_cluster.kubectl("delete", "-n", kube_namespace, "job/cascade", "--timeout=60s")
    kube_cluster.kubectl("delete", "-n", kube_namespace, "job/orphan", "--cascade=orphan")
    kube_cluster.wait_for(
        "cascade's pod to be deleted",
        lambda: not pods_of(kube_cluster, kube_namespace, "cascade"),
        timeout=60,
    )
    (orphan,) = pods_of(kube_cluster, kube_namespace, "orphan")
    assert orphan["status"]["phase"] == "Running"
    assert "ownerReferences" not in orphan["metadata"]


def test_invalid_objects_are_rejected_like_a_real_api_server(kube_cluster, kube_namespace):
    typo = python_job("typo", "pass")
    typo["spec"]["template"]["spec"]["containers"][0]["comand"] = ["oops"]
    rejected = kube_cluster.kubectl(
        "apply", "-n", kube_namespace, "-f", "-", input=json.dumps(typo), check=False
    )
    assert rejected.returncode != 0
    assert "comand" in rejected.stderr and "invalid" in rejected.stderr.lower()

    always = python_job("always", "pass", restartPolicy="Always")
    rejected = kube_cluster.kubectl(
        "apply", "-n", kube_namespace, "-f", "-", input=json.dumps(always), check=False
    )
    assert 'Unsupported value: "Always"' in rejected.stderr

    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "once"}}
    kube_cluster.kubectl("create", "-n", kube_namespace, "-f", "-", input=json.dumps(config_map))
    again = kube_cluster.kubectl(
        "create", "-n", kube_namespace, "-f", "-", input=json.dumps(config_map), check=False
    )
    assert "AlreadyExists" in again.stderr
    missing = kube_cluster.kubectl("get", "-n", kube_namespace, "pod/nope", check=False)
    assert 'pods "nope" not found' in missing.stderr


ENV_AND_VOLUMES = """
    import os, pathlib
    for key in ("LITERAL", "FROM_CONFIG", "FROM_SECRET", "POD_NAME", "POD_IP", "ALL_A"):
        print(key, "=", os.environ.get(key), flush=True)
    print("config file =", pathlib.Path("/etc/app/settings.txt").read_text())
    print("secret file =", pathlib.Path("/etc/creds/token").read_text())
    pathlib.Path("/azure/myshare/written-by-pod").write_text(os.environ["POD_NAME"])
"""


def test_env_and_volumes_come_from_refs_the_downward_api_and_shares(kube_cluster, kube_namespace):
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"mode": "fast", "settings.txt": "from a configmap", "A": "bulk"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "stringData": {"token": "s3cret"},
    }
    container = {
        "name": "main",
        "image": "python:3.11-slim",
        "command": ["python", "-c", textwrap.dedent(ENV_AND_VOLUMES)],
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "ALL_"}],
        "env": [
            {"name": "LITERAL", "value": "plain"},
            {
                "name": "FROM_CONFIG",
                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}},
            },
            {
                "name": "FROM_SECRET",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
            },
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "volumeMounts": [
            {"name": "settings", "mountPath": "/etc/app", "readOnly": True},
            {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
            {"name": "share", "mountPath": "/azure/myshare"},
        ],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "envpod"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [
                {"name": "settings", "configMap": {"name": "settings"}},
                {"name": "creds", "secret": {"secretName": "creds"}},
                {
                    "name": "share",
                    "csi": {
                        "driver": "file.csi.azure.com",
                        "volumeAttributes": {"shareName": "myshare", "secretName": "creds"},
                    },
                },
            ],
        },
    }
    apply(kube_cluster, kube_namespace, config_map, secret, pod)
    # `logs -f` streams until the container exits.
    kube_cluster.wait_for(
        "envpod to start",
        lambda: kube_cluster.get("Pod", kube_namespace, "envpod")["status"].get(
            "containerStatuses"
        ),
    )
    logs = kube_cluster.kubectl("logs", "-n", kube_namespace, "-f", "envpod").stdout
    pod_ip = kube_cluster.get("Pod", kube_namespace, "envpod")["status"]["podIP"]
    for line in (
        "LITERAL = plain",
        "FROM_CONFIG = fast",
        "FROM_SECRET = s3cret",
        "POD_NAME = envpod",
        f"POD_IP = {pod_ip}",
        "ALL_A = bulk",
        "config file = from a configmap",
        "secret file = s3cret",
    ):
        assert line in logs
    assert (kube_cluster.share("myshare") / "written-by-pod").read_text() == "envpod"


def test_deadline_fails_a_job_and_ttl_deletes_a_finished_one(kube_cluster, kube_namespace):
    slow = python_job("slow", "import time; time.sleep(600)", activeDeadlineSeconds=2)
    quick = python_job("quick", "print('done')", ttlSecondsAfterFinished=1)
    apply(kube_cluster, kube_namespace, slow, quick)
    condition = wait_job(kube_cluster, kube_namespace, "slow")
    assert (condition["type"], condition["reason"]) == ("Failed", "DeadlineExceeded")
    kube_cluster.wait_for(
        "slow's pod to be stopped",
        lambda: all(
            p["status"]["phase"] != "Running" for p in pods_of(kube_cluster, kube_namespace, "slow")
        ),
        timeout=60,
    )
    kube_cluster.wait_for(
        "quick to be deleted by its TTL",
        lambda: (
            kube_cluster.get("Job", kube_namespace, "quick", "batch/v1") is None
            and not pods_of(kube_cluster, kube_namespace, "quick")
        ),
        timeout=60,
    )


CHART_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
spec:
  replicas: 1
  selector: {matchLabels: {app: {{ .Release.Name }}-web}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}-web}}
    spec:
      containers:
      - name: web
        image: python:3.11-slim
        command: [python, -m, http.server, "8000"]
        env: [{name: GREETING, value: {{ .Values.greeting | quote }}}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  greeting: {{ .Values.greeting | quote }}
"""


def test_helm_installs_upgrades_and_uninstalls_with_server_side_apply(
    kube_cluster, kube_namespace, tmp_path
):
    chart = tmp_path / "web"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: web\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "web.yaml").write_text(CHART_DEPLOYMENT)
    helm = ["-n", kube_namespace]
    kube_cluster.helm("install", "site", str(chart), *helm, "--wait", "--timeout", "60s")
    deployment = kube_cluster.get("Deployment", kube_namespace, "site-web", "apps/v1")
    assert deployment["status"]["readyReplicas"] == 1
    kube_cluster.helm("upgrade", "site", str(chart), *helm, "--set", "greeting=bonjour", "--wait")
    settings = kube_cluster.get("ConfigMap", kube_namespace, "site-settings")
    assert settings["data"] == {"greeting": "bonjour"}
    assert "PATCH" in " ".join(r for r in kube_cluster.api.requests if "site-settings" in r)
    kube_cluster.wait_for(
        "the upgraded pod to run alone",
        lambda: (
            [
                p["spec"]["containers"][0]["env"][0]["value"]
                for p in kube_cluster.list("Pod", kube_namespace)
                if p["status"].get("phase") == "Running"
            ]
            == ["bonjour"]
        ),
    )
    assert "deployed" in kube_cluster.helm("status", "site", *helm).stdout
    kube_cluster.helm("uninstall", "site", *helm, "--wait")
    kube_cluster.wait_for(
        "the release's objects to be gone",
        lambda: (
            not kube_cluster.list("Pod", kube_namespace)
            and not kube_cluster.list("Deployment", kube_namespace, api_version="apps/v1")
            and kube_cluster.get("ConfigMap", kube_namespace, "site-settings") is None
        ),
    )


def test_closing_the_cluster_leaves_no_namespace_file_or_process(tmp_path):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with KubeCluster(tmp_path / "cluster") as cluster:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper"},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox:1",
                        "command": ["sleep", "600"],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/kubecluster-probe"}],
                    }
                ],
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
        }
        apply(cluster, "default", pod)
        process = cluster.wait_for(
            "sleeper to run", lambda: cluster.process_of("default", "sleeper")
        )
        prefix = cluster.network.prefix
        assert any(name.startswith(prefix) for name in netns_names())
        hosts_files = [f"/etc/netns/{n}/hosts" for n in cluster.network.namespaces[1:]]
    assert process.poll() is not None
    assert not [name for name in netns_names() if name.startswith(prefix)]
    etc_netns = Path("/etc/netns")
    assert not [
        f for f in (etc_netns.iterdir() if etc_netns.exists() else []) if f.name.startswith(prefix)
    ]
    assert not any(subprocess.run(["test", "-e", f]).returncode == 0 for f in hosts_files)
    assert not subprocess.run(["test", "-e", "/kubecluster-probe"]).returncode == 0


UPLOAD = """
    import os
    from azure.storage.blob import BlobServiceClient
    client = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    client.get_blob_client(os.environ["CONTAINER"], "from-the-pod").upload_blob(b"hello")
    print("uploaded", flush=True)
"""


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _address_on_host(address: str) -> bool:
    listed = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    return f" {address}/" in listed


def test_pods_reach_azurite_outside_the_cluster_through_the_gateway_and_nothing_stays(tmp_path):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with KubeCluster(tmp_path / "cluster") as cluster:
        with azurite_outside(cluster, tmp_path) as emulator:
            assert emulator.host == GATEWAY_ADDRESS
            container = emulator.create_container()  # this process reaches it too
            job = python_job("upload", UPLOAD)
            job["spec"]["template"]["spec"]["containers"][0]["env"] = [
                {"name": "AZURE_STORAGE_CONNECTION_STRING", "value": emulator.connection_string()},
                {"name": "CONTAINER", "value": container},
            ]
            apply(cluster, "default", job)
            assert wait_job(cluster, "default", "upload")["type"] == "Complete", cluster.describe()
            assert emulator.blob_names(container) == ["from-the-pod"]
            gateway = cluster.network.gateway
            assert gateway in host_links()
        assert emulator.process.poll() is not None
        assert gateway not in host_links() and not _address_on_host(GATEWAY_ADDRESS)


KILLED_HOLDER = """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from kubecluster import KubeCluster
    from kubecluster.external import azurite_outside
    root = Path({root!r})
    with KubeCluster(root / "cluster") as cluster:
        with azurite_outside(cluster, root) as emulator:
            print(cluster.network.gateway, emulator.process.pid, flush=True)
            time.sleep(600)
"""


def test_a_killed_test_process_leaves_a_gateway_and_azurite_that_the_next_one_removes(tmp_path):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tests = str(Path(__file__).resolve().parent)
    script = textwrap.dedent(KILLED_HOLDER).format(tests=tests, root=str(tmp_path / "killed"))
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        gateway, emulator_pid = holder.stdout.readline().split()
    finally:
        holder.kill()  # as a test process killed outright: no teardown runs
        holder.wait()
    emulator_pid = int(emulator_pid)
    assert gateway in host_links() and not _gone(emulator_pid)
    try:
        with KubeCluster(tmp_path / "cluster") as cluster:
            assert gateway not in host_links()  # the new cluster removed the stale link
            with azurite_outside(cluster, tmp_path) as emulator:
                cluster.wait_for("the stale Azurite to end", lambda: _gone(emulator_pid), 10)
                assert emulator.create_container()
        assert not [name for name in netns_names() if name.startswith(f"dtk{holder.pid}-")]
    finally:
        if not _gone(emulator_pid):  # the cleanup under test did not run: do not leak it
            os.killpg(emulator_pid, signal.SIGKILL)
