"""The Kubernetes launcher, unmodified, against the test cluster (tests/kubecluster).

Every task is a real `disttrain task` process in its own pod, on its own network host
(network namespace + address), finding its peers through the headless Service's DNS names,
with the run dir on a mounted Azure Files share (a local folder behind the CSI volume), or in
Azure Blob (Azurite outside the cluster, reached through its gateway, with the credentials in
a Secret), and the config from the job's ConfigMap. The CLI talks to the cluster's API server
through a kubeconfig, exactly as it would to AKS.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from azurite import ACCOUNT_KEY
from kubecluster.disttrain_jobs import (
    SECRET,
    SHARE,
    assert_trained,
    blob_job_args,
    chief_log,
    chief_result,
    holds,
    job_args,
    last_reported_step,
    objects_of_jobs,
    pod_logs,
    pods_of,
    read_blob,
    run_dir,
    training_started,
    wait_for_servers_to_stop,
)
from processes import cli, kill_tree, start_cli

from launchers.prepare import LOCAL_CREDENTIALS

pytestmark = pytest.mark.integration


def test_k8s_job_trains_to_completion_and_status_logs_stop_work(k8s):
    cluster, namespace, env = k8s
    started = time.monotonic()
    result = cli("train", "--launcher", "k8s", "--wait", *job_args(namespace, "mnist"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr + cluster.describe()
    assert "job mnist: succeeded" in result.stdout
    assert f"storage | preflight skipped | /azure/{SHARE}/" in result.stdout
    wall = time.monotonic() - started

    assert_trained(cluster, namespace, "mnist")
    folder = run_dir(cluster, namespace, "mnist")
    # The job's result is the chief's; the evaluator ends after it, with the last checkpoint.
    cluster.wait_for(
        "the evaluator's results", (folder / "eval" / "results.jsonl").exists, timeout=180
    )
    assert (folder / "eval" / "results.jsonl").read_text().strip()
    assert list((folder / "export" / "best").iterdir())
    pods = pods_of(cluster, namespace, "mnist")
    tasks = sorted(
        f"{p['metadata']['labels']['disttrain.io/role']}-"
        f"{p['metadata']['labels']['disttrain.io/index']}"
        for p in pods
    )
    assert tasks == ["chief-0", "evaluator-0", "ps-0", "worker-0", "worker-1"]
    # The chief's success ends the job; the others stop on their own (DONE) soon after.
    cluster.wait_for(
        "every task to exit",
        lambda: (
            {p["status"]["phase"] for p in pods_of(cluster, namespace, "mnist")} == {"Succeeded"}
        ),
        timeout=120,
    )
    # Five hosts: every task had its own address.
    assert len({p["status"]["podIP"] for p in pods}) == 5

    status = cli(
        "status",
        "mnist",
        "--launcher",
        "k8s",
        "--namespace",
        namespace,
        env=env,
        check=True,
    ).stdout
    assert "succeeded" in status.splitlines()[0]
    assert sum("Succeeded" in line for line in status.splitlines()) == 5
    where = ["-l", "k8s", "-n", namespace]
    as_json = json.loads(cli("status", "mnist", *where, "-o", "json", env=env, check=True).stdout)
    assert as_json["result"] == "succeeded" and as_json["namespace"] == namespace
    assert {t["phase"] for t in as_json["tasks"]} == {"Succeeded"}
    # The chief's and the evaluator's pod logs: the last progress line and evaluation.
    final_step = json.loads((folder / "eval" / "results.jsonl").read_text().splitlines()[-1])
    assert as_json["progress"]["step"] == as_json["progress"]["total_steps"], as_json
    assert as_json["progress"]["eta"] is None  # the job has ended
    assert as_json["progress"]["last_eval"]["step"] == final_step["step"], as_json
    described = cli("describe", "mnist", *where, env=env, check=True).stdout
    assert "Job/mnist" in described and "Service/mnist" in described, described
    assert described.count("last termination: Completed (exit code 0)") >= 5, described

    logs = cli(
        "logs",
        "mnist",
        "worker",
        "1",
        "--launcher",
        "k8s",
        "--namespace",
        namespace,
        env=env,
        check=True,
    ).stdout
    assert "worker-1" in logs and "DONE" in logs
    assert "worker-0 |" not in logs

    stopped = cli(
        "stop",
        "mnist",
        "--launcher",
        "k8s",
        "--namespace",
        namespace,
        env=env,
        check=True,
    ).stdout
    assert "Job/mnist" in stopped
    cluster.wait_for(
        "every object of the job to be deleted",
        lambda: (
            not any(
                cluster.list(kind, namespace, "app.kubernetes.io/instance=mnist", api_version=api)
                for kind, api in (
                    ("Pod", "v1"),
                    ("Job", "batch/v1"),
                    ("Service", "v1"),
                    ("ConfigMap", "v1"),
                )
            )
        ),
        timeout=60,
    )
    print(f"\ne2e k8s job (chief, 2 workers, 1 ps, evaluator; 200 steps): {wall:.1f} s")


def test_dry_run_applied_with_kubectl_survives_a_deleted_chief_and_an_evicted_worker_for_free(
    k8s,
):
    """`kubectl delete pod` of the chief between two checkpoints: the kubelet sends SIGTERM and
    waits the pod's grace period; the chief publishes the steps it trained and exits 5, and
    its replacement resumes there. A worker evicted through the eviction API (DisruptionTarget)
    is replaced too. Neither spends its Job's backoffLimit."""
    cluster, namespace, env = k8s
    sets = ("--set", "train.steps=300", "--set", "checkpoint.every_steps=1000")
    args = job_args(namespace, "applied", *sets, workers=2, evaluator=False)
    manifest = cli("train", "--launcher", "k8s", "--dry-run", *args, env=env, check=True).stdout
    applied = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest).stdout
    assert "job.batch/applied created" in applied

    cluster.wait_for(
        "training to start", lambda: training_started(cluster, namespace, "applied"), timeout=120
    )
    (chief,) = pods_of(cluster, namespace, "applied", role="chief")
    (worker,) = pods_of(cluster, namespace, "applied", role="worker", index="1")
    reported = last_reported_step(chief_log(cluster, namespace, "applied"))
    cluster.kubectl("delete", "pod", "-n", namespace, chief["metadata"]["name"], "--wait=false")
    cluster.evict(namespace, worker["metadata"]["name"])
    for role, index, old in (("chief", "0", chief), ("worker", "1", worker)):
        cluster.wait_for(
            f"a replacement {role}-{index} pod",
            lambda r=role, i=index, u=old["metadata"]["uid"]: any(
                p["metadata"]["uid"] != u
                for p in pods_of(cluster, namespace, "applied", role=r, index=i)
            ),
            timeout=120,
        )
    cluster.wait_for(
        "the job to finish", lambda: chief_result(cluster, namespace, "applied"), timeout=300
    )
    assert chief_result(cluster, namespace, "applied") == "Complete", cluster.describe()
    assert_trained(cluster, namespace, "applied", steps=300)

    logs = "\n".join(pod_logs(cluster, namespace).values())
    (published,) = [int(s) for s in re.findall(r"preempted \| ckpt-(\d+) published", logs)]
    assert 0 < reported <= published < 300, logs[-3000:]  # no interval checkpoint before 1000
    assert f"checkpoint | restored | ckpt-{published} | resuming at step {published}" in logs
    for job in ("applied", "applied-worker-1"):
        assert cluster.get("Job", namespace, job, "batch/v1")["status"]["failed"] == 0, job


def test_killed_ps_brings_back_ps_and_chief_which_resume_from_the_checkpoint(k8s):
    cluster, namespace, env = k8s
    args = job_args(namespace, "psfault", "--set", "train.steps=400", workers=1, evaluator=False)
    submitted = cli("train", "--launcher", "k8s", *args, env=env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    latest = run_dir(cluster, namespace, "psfault") / "checkpoints" / "LATEST"
    cluster.wait_for("a first checkpoint", latest.exists, timeout=180)
    (ps_pod,) = pods_of(cluster, namespace, "psfault", role="ps")
    process = cluster.process_of(namespace, ps_pod["metadata"]["name"])
    assert process is not None, cluster.describe()
    process.send_signal(signal.SIGKILL)

    cluster.wait_for(
        "the job to finish", lambda: chief_result(cluster, namespace, "psfault"), timeout=300
    )
    assert chief_result(cluster, namespace, "psfault") == "Complete", cluster.describe()
    assert_trained(cluster, namespace, "psfault", steps=400)
    wait_for_servers_to_stop(cluster, namespace, "psfault-ps-0")
    # Each restart is a new pod, counted against its Job's backoffLimit.
    failed = {
        job: cluster.get("Job", namespace, job, "batch/v1")["status"].get("failed", 0)
        for job in ("psfault", "psfault-ps-0")
    }
    assert failed["psfault-ps-0"] >= 1 and failed["psfault"] >= 1, failed
    (chief,) = [
        p["metadata"]["name"]
        for p in pods_of(cluster, namespace, "psfault", role="chief")
        if p["status"]["phase"] == "Succeeded"
    ]
    current = cluster.kubectl("logs", "-n", namespace, chief).stdout
    resumed = [line for line in current.splitlines() if "checkpoint | restored" in line]
    assert resumed and "resuming at step 0" not in resumed[0], current[-3000:]
    # --previous is the task's pod before: the killed ps served and never saw DONE.
    where = ["-l", "k8s", "-n", namespace]
    killed = cli("logs", "psfault", "ps", "0", "--previous", *where, env=env, check=True).stdout
    assert "ps-0 | serving" in killed and "stopping" not in killed, killed[-2000:]
    last = cli("logs", "psfault", "ps", "0", *where, env=env, check=True).stdout
    assert "ps-0 | stopping | the chief wrote DONE" in last, last[-2000:]


def test_a_task_that_keeps_failing_exhausts_its_backoff_limit_and_status_says_why(k8s):
    cluster, namespace, env = k8s
    args = job_args(
        namespace,
        "broken",
        "--set",
        "data.source=image_folder",
        "--set",
        f"data.root=/azure/{SHARE}/no-such-folder",
        "--set",
        "cluster.max_restarts=1",
        workers=1,
        evaluator=False,
    )
    result = cli("train", "--launcher", "k8s", "--wait", *args, env=env, timeout=300)
    assert result.returncode != 0
    assert chief_result(cluster, namespace, "broken") == "Failed"
    status = cli("status", "broken", "--launcher", "k8s", "--namespace", namespace, env=env).stdout
    first = status.splitlines()[0]
    assert "failed" in first and "BackoffLimitExceeded" in first, status
    chief_row = next(line for line in status.splitlines() if line.startswith("chief-0"))
    assert "Failed" in chief_row and "BackoffLimitExceeded" in chief_row, status
    where = ["-l", "k8s", "-n", namespace]
    described = cli("describe", "broken", *where, env=env, check=True).stdout
    assert "failed (BackoffLimitExceeded" in described.splitlines()[0], described
    assert "Job/broken" in described, described


def test_a_task_that_exits_4_fails_the_job_at_once_and_status_names_it_and_why(k8s):
    """Exit code 4 (a restart cannot fix it: here, a run dir trained on other classes) fails
    the task's Job on its first pod, by the podFailurePolicy, not after backoffLimit more."""
    cluster, namespace, env = k8s
    folder = run_dir(cluster, namespace, "unfixable")
    folder.mkdir(parents=True)
    (folder / "class_names.json").write_text(json.dumps(["cat", "dog"]))
    args = job_args(namespace, "unfixable", "--set", "cluster.ps=0", workers=0, evaluator=False)
    result = cli("train", "--launcher", "k8s", "--wait", *args, env=env, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    why = f"chief-0 stopped: run dir /azure/{SHARE}/runs/{namespace}/unfixable trains on the "
    why += "classes cat, dog; this config's data has circle, cross"
    assert f"job unfixable: failed ({why}" in result.stdout, result.stdout
    assert len(pods_of(cluster, namespace, "unfixable", role="chief")) == 1  # of backoffLimit 3
    (condition,) = [
        c
        for c in cluster.get("Job", namespace, "unfixable", "batch/v1")["status"]["conditions"]
        if c["type"] == "Failed"
    ]
    assert condition["reason"] == "PodFailurePolicy", condition
    status = cli("status", "unfixable", "-l", "k8s", "-n", namespace, env=env).stdout
    assert status.splitlines()[0].startswith(
        f"job unfixable (namespace {namespace}): failed ({why}"
    )
    chief_row = next(line for line in status.splitlines() if line.startswith("chief-0"))
    assert "Failed" in chief_row and why in chief_row, status


def test_two_jobs_share_a_namespace_without_colliding(k8s):
    cluster, namespace, env = k8s
    procs = []
    try:
        for name in ("first", "second"):
            log = Path(env["DISTTRAIN_HOME"]).parent / f"{name}.log"
            args = job_args(namespace, name, "--set", "train.steps=100", workers=1, evaluator=False)
            procs.append(
                (
                    name,
                    log,
                    start_cli("train", "--launcher", "k8s", "--wait", *args, log_path=log, env=env),
                )
            )
        for _, log, proc in procs:
            assert proc.wait(timeout=300) == 0, log.read_text() + cluster.describe()
    finally:
        for _, _, proc in procs:
            kill_tree(proc)
    for name in ("first", "second"):
        assert_trained(cluster, namespace, name, steps=100)
        assert {
            p["metadata"]["labels"]["app.kubernetes.io/instance"]
            for p in pods_of(cluster, namespace, name)
        } == {name}


def test_k8s_job_with_its_run_dir_in_azure_blob_gets_the_key_from_a_secret_only(
    k8s, outside_azurite
):
    cluster, namespace, env = k8s
    container = outside_azurite.create_container()
    url = f"az://{container}/runs/blob"
    local = {**env, **outside_azurite.env()}  # the user's machine holds the connection string
    made = cli(
        "secret",
        "create",
        "--name",
        "blob-storage",
        "--namespace",
        namespace,
        env=local,
        check=True,
    ).stdout
    assert "AZURE_STORAGE_CONNECTION_STRING" in made
    args = blob_job_args(namespace, "blob", url, "blob-storage")
    manifests = [
        cli("train", "--launcher", launcher, "--dry-run", *args, env=local, check=True).stdout
        for launcher in ("k8s", "helm")
    ]
    jobs = [o for o in yaml.safe_load_all(manifests[0]) if o and o["kind"] == "Job"]
    refs = [
        item["valueFrom"]["secretKeyRef"]["name"]
        for job in jobs
        for item in job["spec"]["template"]["spec"]["containers"][0]["env"]
        if item["name"] == "AZURE_STORAGE_CONNECTION_STRING"
    ]
    assert len(jobs) == 5 and refs == ["blob-storage"] * 5

    result = cli("train", "--launcher", "k8s", "--wait", *args, env=local)
    assert result.returncode == 0, result.stdout + result.stderr + cluster.describe()
    assert f"storage | preflight ok | {url}" in result.stdout

    prefix = "runs/blob/"
    names = {b[len(prefix) :] for b in outside_azurite.blob_names(container)}
    latest = json.loads(read_blob(outside_azurite, container, prefix + "checkpoints/LATEST"))
    assert latest["step"] == 100
    missing = [f for f in latest["files"] if f"checkpoints/ckpt-100/{f}" not in names]
    assert latest["files"] and not missing, sorted(names)
    # The job's result is the chief's; the evaluator ends after it, with the last checkpoint.
    cluster.wait_for(
        "the evaluator's results in the blob",
        lambda: prefix + "eval/results.jsonl" in outside_azurite.blob_names(container),
        timeout=180,
    )
    assert read_blob(outside_azurite, container, prefix + "eval/results.jsonl").strip()
    names = {b[len(prefix) :] for b in outside_azurite.blob_names(container)}
    for expected in (
        "DONE",
        "config.yaml",
        "export/best/saved_model.pb",
        "export/best/metrics.json",
    ):
        assert expected in names, sorted(names)
    assert any(n.startswith("logs/train/events.out.tfevents") for n in names), sorted(names)
    assert any(n.startswith("logs/eval/events.out.tfevents") for n in names), sorted(names)

    config_maps = cluster.kubectl("get", "configmap", "-n", namespace, "-o", "yaml").stdout
    assert f"run_dir: {url}" in config_maps
    logs = pod_logs(cluster, namespace)
    assert len(logs) >= 5 and any("DONE" in text for text in logs.values())
    seen = [made, *manifests, result.stdout, result.stderr, config_maps, *logs.values()]
    assert not [text for text in seen if ACCOUNT_KEY in text]


def test_a_wrong_storage_key_fails_the_submit_before_any_object_is_created(k8s, outside_azurite):
    cluster, namespace, env = k8s
    url = f"az://{outside_azurite.create_container()}/runs/wrongkey"
    wrong_key = base64.b64encode(b"not the account key".ljust(64, b".")).decode()
    args = blob_job_args(namespace, "wrongkey", url, SECRET)
    result = cli("train", "--launcher", "k8s", *args, env={**env, **outside_azurite.env(wrong_key)})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"run_dir: run dir {url}: could not write a probe object" in output, output
    assert "a wrong account key" in output, output  # the cause, as Azurite reports it
    assert wrong_key not in output and ACCOUNT_KEY not in output
    assert objects_of_jobs(cluster, namespace) == []


def test_without_local_credentials_the_preflight_is_skipped_with_a_note_and_the_job_submitted(
    k8s, outside_azurite
):
    cluster, namespace, env = k8s
    url = f"az://{outside_azurite.create_container()}/runs/nokey"
    no_credentials = {name: "" for name in LOCAL_CREDENTIALS}
    args = blob_job_args(namespace, "nokey", url, SECRET, workers=1, evaluator=False)
    result = cli("train", "--launcher", "k8s", *args, env={**env, **no_credentials}, check=True)
    notes = [line for line in result.stdout.splitlines() if "preflight" in line]
    assert notes == [
        f"storage | preflight skipped | {url} | none of {', '.join(LOCAL_CREDENTIALS)} "
        f"is set here (the pods use the Secret {SECRET!r})"
    ]
    assert cluster.get("Job", namespace, "nokey", "batch/v1") is not None
    cli("stop", "nokey", "--launcher", "k8s", "--namespace", namespace, env=env)


def test_submit_sends_exactly_the_objects_the_dry_run_printed(k8s):
    cluster, namespace, env = k8s
    args = job_args(namespace, "planned", workers=1, evaluator=False)
    dry = cli("train", "--launcher", "k8s", "--dry-run", *args, env=env, check=True).stdout
    printed = [doc for doc in yaml.safe_load_all(dry) if doc]
    try:
        cli("train", "--launcher", "k8s", *args, env=env, check=True)
        created = cluster.list("Job", namespace, "app.kubernetes.io/instance=planned", "batch/v1")
        assert len(created) == sum(doc["kind"] == "Job" for doc in printed)
        for doc in printed:
            kind, name = doc["kind"], doc["metadata"]["name"]
            stored = cluster.get(kind, namespace, name, doc["apiVersion"])
            assert stored is not None and holds(stored, doc), f"{kind}/{name}"
            owners = stored["metadata"].get("ownerReferences", [])
            the_owner = (kind, name) == ("Job", "planned")
            assert [o["name"] for o in owners] == ([] if the_owner else ["planned"])
    finally:
        cli("stop", "planned", "--launcher", "k8s", "--namespace", namespace, env=env)
