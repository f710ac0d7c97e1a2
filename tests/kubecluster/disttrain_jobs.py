"""Running disttrain jobs on the test cluster: the settings, and reading their results.

Shared by the end-to-end tests of the Kubernetes and Helm launchers. A job keeps its run dir
on the Azure Files share `tfshare` (a folder of the cluster behind the CSI volume), reads the
built-in dataset from the same share, and gets its storage Secret by reference; a blob job
(`blob_job_args`) keeps its run dir in Azure Blob instead (Azurite outside the cluster,
external.py) and mounts no share at all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import KubeCluster

SHARE = "tfshare"
SECRET = "azure-storage"
DATA_ROOT = f"/azure/{SHARE}/data"


def put_dataset_on_share(cluster: KubeCluster) -> None:
    """The built-in dataset on the share, so pods read it instead of each generating it."""
    from disttrain.data.builtin import ensure_builtin_dataset

    ensure_builtin_dataset(cluster.share(SHARE) / "data")


def create_storage_secret(cluster: KubeCluster, namespace: str) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "stringData": {"AZURE_STORAGE_ACCOUNT_NAME": "testaccount"},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))


def job_args(namespace: str, name: str, *extra: str, workers: int = 2, evaluator: bool = True):
    """`--set` arguments for a small job whose run dir is on the share."""
    settings = {
        "name": name,
        "run_dir": f"/azure/{SHARE}/runs/{namespace}/{name}",
        "data.root": DATA_ROOT,
        "train.steps": 200,
        "train.log_every_seconds": 1,
        "checkpoint.every_steps": 50,
        "eval.poll_seconds": 0.5,
        "eval.enabled": str(evaluator).lower(),
        "cluster.workers": workers,
        "cluster.ps": 1,
        "cluster.max_restarts": 3,
        "launcher.k8s.namespace": namespace,
        "launcher.k8s.storage.secret": SECRET,
        "launcher.k8s.storage.azure_file_share": SHARE,
    }
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return [*args, *extra]


def blob_job_args(namespace: str, name: str, url: str, secret: str, *extra: str, **shape):
    """`--set` arguments for a small job with its run dir at `url` (az://) and no share.

    The credentials come from `secret` only; each pod generates the built-in dataset in its
    own scratch folder (a couple of seconds), as nothing is shared between pods but the blob.
    """
    blob = {
        "run_dir": url,
        "data.root": "",
        "train.steps": 100,
        "launcher.k8s.storage.azure_file_share": "",
        "launcher.k8s.storage.secret": secret,
    }
    settings = [arg for key, value in blob.items() for arg in ("--set", f"{key}={value}")]
    return job_args(namespace, name, *settings, *extra, **shape)


def read_blob(emulator, container: str, name: str) -> str:
    """A blob's text, read with the Azure SDK (not through disttrain)."""
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(emulator.connection_string())
    return client.get_blob_client(container, name).download_blob().readall().decode()


def pod_logs(cluster: KubeCluster, namespace: str) -> dict[str, str]:
    """Every log of every container instance of the namespace's pods (restarts included)."""
    folders = (cluster.kubelet.root / "pods").glob(f"{namespace}_*/logs/*/*.log")
    return {str(path): path.read_text(errors="replace") for path in sorted(folders)}


def objects_of_jobs(cluster: KubeCluster, namespace: str) -> list[str]:
    """Kind/name of everything in the namespace but what the `k8s` fixture put there."""
    found = []
    for kind, api in (
        ("Job", "batch/v1"),
        ("Deployment", "apps/v1"),
        ("Pod", "v1"),
        ("Service", "v1"),
        ("ConfigMap", "v1"),
        ("Secret", "v1"),  # helm keeps its releases in Secrets
    ):
        names = [o["metadata"]["name"] for o in cluster.list(kind, namespace, api_version=api)]
        found += [f"{kind}/{name}" for name in names if (kind, name) != ("Secret", SECRET)]
    return found


def run_dir(cluster: KubeCluster, namespace: str, name: str) -> Path:
    return cluster.share(SHARE) / "runs" / namespace / name


def pods_of(cluster: KubeCluster, namespace: str, name: str, **labels: str) -> list[dict]:
    selector = ",".join(
        [
            f"app.kubernetes.io/instance={name}",
            *(f"disttrain.io/{k}={v}" for k, v in labels.items()),
        ]
    )
    return cluster.list("Pod", namespace, selector)


def job_result(cluster: KubeCluster, namespace: str, job_name: str) -> str | None:
    """`Complete` or `Failed` once the Job (a task's, or the chief's: the job's name) ended."""
    job = cluster.get("Job", namespace, job_name, "batch/v1") or {}
    for condition in (job.get("status") or {}).get("conditions", []):
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return condition["type"]
    return None


def chief_result(cluster: KubeCluster, namespace: str, name: str) -> str | None:
    return job_result(cluster, namespace, name)


def wait_for_servers_to_stop(cluster: KubeCluster, namespace: str, *task_jobs: str) -> None:
    """Servers stop some seconds after the chief: they poll for DONE (task.MOOT_POLL_SECONDS),
    so their last log line is there only once their Jobs completed."""
    for job_name in task_jobs:
        cluster.wait_for(
            f"{job_name} to complete",
            lambda job_name=job_name: job_result(cluster, namespace, job_name),
            timeout=120,
        )
        assert job_result(cluster, namespace, job_name) == "Complete", cluster.describe()


def chief_log(cluster: KubeCluster, namespace: str, name: str) -> str:
    pods = pods_of(cluster, namespace, name, role="chief")
    if not pods:
        return ""
    result = cluster.kubectl("logs", "-n", namespace, pods[-1]["metadata"]["name"], check=False)
    return result.stdout


def last_reported_step(log: str) -> int:
    """The step of the chief's last progress line (`train | step: N/...`), 0 before one."""
    steps = re.findall(r"train \| step:\s+(\d+)/", log)
    return int(steps[-1]) if steps else 0


def training_started(cluster: KubeCluster, namespace: str, name: str) -> bool:
    return "train | step:" in chief_log(cluster, namespace, name)


def assert_trained(cluster: KubeCluster, namespace: str, name: str, steps: int = 200) -> None:
    folder = run_dir(cluster, namespace, name)
    assert (folder / "DONE").exists(), cluster.describe()
    latest = json.loads((folder / "checkpoints" / "LATEST").read_text())
    assert latest["step"] == steps


def holds(stored, sent) -> bool:
    """Whether the API server's object holds everything that was sent: the same value at
    every key that was sent (the server adds its own: uid, status, defaults, ownership)."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(
            key in stored and holds(stored[key], value) for key, value in sent.items()
        )
    if isinstance(sent, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(sent)
            and all(holds(a, b) for a, b in zip(stored, sent))
        )
    return stored == sent
