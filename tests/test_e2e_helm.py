"""The Helm launcher and the charts, unmodified, against the test cluster (tests/kubecluster).

Helm 4 installs with server-side apply by default and keeps releases in Secrets; the test
cluster serves both (and the OpenAPI v3 paths helm reads to leave field validation to the
server), so no helm flag is changed for it.
"""

from __future__ import annotations

import base64
import json
import urllib.request

import pytest
import yaml
from azurite import ACCOUNT_KEY
from kubecluster.disttrain_jobs import (
    DATA_ROOT,
    SECRET,
    SHARE,
    assert_trained,
    blob_job_args,
    chief_result,
    job_args,
    objects_of_jobs,
    pods_of,
    run_dir,
)
from processes import REPO, cli

pytestmark = pytest.mark.integration

CHARTS = REPO / "launchers" / "charts"


def test_helm_launcher_trains_to_completion_and_stop_uninstalls(k8s):
    cluster, namespace, env = k8s
    args = job_args(namespace, "charted", workers=1, evaluator=True)
    result = cli("train", "--launcher", "helm", "--wait", *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr + cluster.describe()
    assert "job charted: succeeded" in result.stdout
    assert f"storage | preflight skipped | /azure/{SHARE}/" in result.stdout
    assert_trained(cluster, namespace, "charted")
    results = run_dir(cluster, namespace, "charted") / "eval" / "results.jsonl"
    cluster.wait_for("the evaluator's results", results.exists, timeout=180)  # after the chief
    assert results.read_text()

    status = cli(
        "status",
        "charted",
        "--launcher",
        "helm",
        "--namespace",
        namespace,
        env=env,
        check=True,
    ).stdout
    assert "STATUS: deployed" in status and "succeeded" in status
    releases = cluster.helm("list", "-n", namespace, "-q").stdout.split()
    assert sorted(releases) == ["charted", "charted-eval"]

    stopped = cli(
        "stop",
        "charted",
        "--launcher",
        "helm",
        "--namespace",
        namespace,
        env=env,
        check=True,
    ).stdout
    assert "uninstalled charted, charted-eval" in stopped
    assert cluster.helm("list", "-n", namespace, "-q").stdout.split() == []
    cluster.wait_for(
        "the releases' objects to be deleted",
        lambda: (
            not pods_of(cluster, namespace, "charted")
            and cluster.get("Job", namespace, "charted", "batch/v1") is None
        ),
        timeout=60,
    )


def test_a_wrong_storage_key_fails_the_helm_submit_before_anything_is_installed(
    k8s, outside_azurite
):
    cluster, namespace, env = k8s
    url = f"az://{outside_azurite.create_container()}/runs/wrongkey"
    wrong_key = base64.b64encode(b"not the account key".ljust(64, b".")).decode()
    args = blob_job_args(namespace, "wrongkey", url, SECRET)
    result = cli(
        "train", "--launcher", "helm", *args, env={**env, **outside_azurite.env(wrong_key)}
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"run_dir: run dir {url}: could not write a probe object" in output, output
    assert wrong_key not in output and ACCOUNT_KEY not in output
    assert cluster.helm("list", "-n", namespace, "-q").stdout.split() == []
    assert objects_of_jobs(cluster, namespace) == []


def test_a_release_that_fails_to_install_takes_the_ones_before_it_along(k8s):
    cluster, namespace, env = k8s
    # An object the eval release would create already exists: helm refuses to adopt it.
    taken = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "half-eval-config"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(taken))
    result = cli("train", "--launcher", "helm", *job_args(namespace, "half"), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: upgrade --install failed" in result.stderr
    assert "rolling back: job half: uninstalled half\n" in result.stderr
    assert cluster.helm("list", "-n", namespace, "-q").stdout.split() == []  # any status
    left = [o for o in objects_of_jobs(cluster, namespace) if not o.startswith("Pod/")]
    assert left == ["ConfigMap/half-eval-config"], left  # only what was there before


def test_a_job_whose_chief_job_is_gone_but_releases_stay_is_not_overwritten(k8s):
    """The chief's TTL deletes its Job only; the releases stay until `disttrain stop`."""
    cluster, namespace, env = k8s
    args = job_args(namespace, "kept", evaluator=False)
    cli("train", "--launcher", "helm", *args, env=env, check=True)
    cluster.kubectl("delete", "job", "kept", "-n", namespace)
    result = cli("train", "--launcher", "helm", *args, env=env)
    assert result.returncode == 1
    assert "error: release kept of job 'kept' already exists" in result.stderr
    assert cluster.helm("list", "-n", namespace, "-q").stdout.split() == ["kept"]
    stopped = cli("stop", "kept", "-l", "helm", "-n", namespace, env=env)
    assert "uninstalled kept" in stopped.stdout, stopped.stdout + stopped.stderr


def sample_values(namespace: str, name: str) -> dict:
    """configs/values.override.yaml, adapted to this machine: no GPU and no labelled node
    pools (the sample asks for both), a small job, the run dir and data on the share."""
    values = yaml.safe_load((REPO / "configs" / "values.override.yaml").read_text())
    values.update(name=name, runDir=f"/azure/{SHARE}/runs/{namespace}/{name}")
    values["cluster"].update(workers=1, ps=1)
    for role in ("chief", "worker", "ps"):
        values[role].update(gpus=0, nodeSelector={}, cpu="100m", memory="1Gi")
    values["storage"].update(secret=SECRET, azureFileShare=SHARE)
    values["config"] = {
        "data": {"root": DATA_ROOT},
        "train": {"steps": 200, "log_every_seconds": 1},
        "checkpoint": {"every_steps": 50},
        "eval": {"poll_seconds": 0.5},
    }
    return values


def board_tags(cluster, namespace: str, release: str) -> dict:
    """The runs and tags TensorBoard serves, asked at the board pod's IP and port."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=tensorboard"
    (pod,) = cluster.list("Pod", namespace, selector)
    url = f"http://{pod['status']['podIP']}:6006/data/plugin/scalars/tags"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except OSError:  # not listening yet
        return {}


def test_the_samples_three_chart_workflow_trains_and_serves_tensorboard(k8s, pod_network, tmp_path):
    cluster, namespace, _ = k8s
    values = tmp_path / "values.override.yaml"
    values.write_text(yaml.safe_dump(sample_values(namespace, "sample")))
    target = ["-n", namespace, "-f", str(values)]
    cluster.helm("install", "sample", str(CHARTS / "distrib-tensorflow"), *target)
    cluster.helm("install", "sample-eval", str(CHARTS / "eval-tensorflow"), *target)
    notes = cluster.helm(
        "install",
        "sample-tensorboard",
        str(CHARTS / "tensorboard"),
        *target,
        "--wait",
        "--timeout",
        "120s",
    ).stdout
    assert "port-forward" in notes

    cluster.wait_for(
        "the chief to finish", lambda: chief_result(cluster, namespace, "sample"), timeout=240
    )
    assert chief_result(cluster, namespace, "sample") == "Complete", cluster.describe()
    assert_trained(cluster, namespace, "sample")
    cluster.wait_for(
        "the evaluator to write results",
        lambda: (run_dir(cluster, namespace, "sample") / "eval" / "results.jsonl").exists(),
        timeout=120,
    )
    board = cluster.get("Deployment", namespace, "sample-tensorboard", "apps/v1")
    assert board["status"]["readyReplicas"] == 1
    # Served beyond the pod itself: on its IP, where the Service sends port-forwards.
    tags = cluster.wait_for(
        "TensorBoard on the board pod's IP to list the train and eval runs",
        lambda: (t := board_tags(cluster, namespace, "sample")).keys() >= {"train", "eval"} and t,
        timeout=60,
    )
    assert {"loss", "accuracy"} <= set(tags["train"]), tags
    for release in ("sample-tensorboard", "sample-eval", "sample"):
        cluster.helm("uninstall", release, "-n", namespace, "--wait")
    cluster.wait_for("every pod to be gone", lambda: not cluster.list("Pod", namespace), timeout=60)


def test_helm_installs_exactly_what_its_dry_run_printed(k8s):
    cluster, namespace, env = k8s
    args = job_args(namespace, "planned", workers=1, evaluator=True)
    dry = cli("train", "--launcher", "helm", "--dry-run", *args, env=env, check=True).stdout
    printed = [doc for doc in yaml.safe_load_all(dry) if doc]
    try:
        cli("train", "--launcher", "helm", *args, env=env, check=True)
        installed = [
            doc
            for release in ("planned", "planned-eval")
            for doc in yaml.safe_load_all(
                cluster.helm("get", "manifest", release, "-n", namespace).stdout
            )
            if doc
        ]
        assert installed == printed
        again = cli("train", "--launcher", "helm", *args, env=env)
        assert again.returncode == 1  # the running job is refused, with helm's own way out
        assert f"`disttrain stop planned -l helm -n {namespace}` first" in again.stderr
    finally:
        cli("stop", "planned", "--launcher", "helm", "--namespace", namespace, env=env)
