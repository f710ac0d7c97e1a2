"""The Kubernetes launcher's objects: schema-valid, restricted, stable DNS, TF_CONFIG per task.

No cluster here: the objects are what `submit` sends (plan, then execute), validated with
kubernetes-validate in strict mode against the newest and oldest supported Kubernetes.
Submitting to a real API server is tested by the test-cluster suite (tests/kubecluster/).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from kubernetes_validate.utils import validate

from disttrain.cluster import ClusterShape, Task, tasks_of, tf_config_json
from disttrain.config import Config, ConfigError
from launchers import get_launcher, load_job
from launchers.job_status import format_table
from launchers.k8s_objects import (
    address_of,
    job_objects,
    owned_by,
    owner_reference,
    storage_secret,
    to_yaml,
)
from launchers.k8s_options import K8sOptions
from launchers.kubeconfig import with_namespace
from launchers.kubernetes import KubernetesLauncher, _pod_summary, _task_row, plan_job
from launchers.pod_security import restricted_violations
from launchers.prepare import LOCAL_CREDENTIALS, check_cluster_run_dir

# Newest and oldest Kubernetes the launcher supports (README, "Kubernetes and Helm").
K8S_VERSIONS = ("1.37.0", "1.26.0")
# The trainer's regex for its shard index (disttrain/data/pipeline.py).
INDEX_IN_TF_CONFIG = re.compile(r'"task"\s*:\s*\{[^}]*"index"\s*:\s*(\d+)')
SHARE = [
    "run_dir=/azure/tfshare/runs/mnist",
    "launcher.k8s.storage.azure_file_share=tfshare",
    "launcher.k8s.storage.secret=azure-storage",
]
NO_SHARE = ["launcher.k8s.storage.azure_file_share="]
PLANTED_KEY = "PLANTEDkey0123456789+/abcdefSECRETVALUE=="
# Blob through AKS workload identity: a service account, the account's name, no Secret.
IDENTITY = [
    "run_dir=az://runs/x",
    *NO_SHARE,
    "launcher.k8s.storage.secret=",
    "launcher.k8s.service_account=trainer",
    "launcher.k8s.storage.account_name=mystorage",
]


def k8s_job(*overrides: str) -> tuple[Config, K8sOptions]:
    """A job for the k8s launcher in namespace `default`, as if the kubeconfig said so: the
    trainer's config and the launcher's options."""
    config, launcher = load_job(
        None, [*SHARE, "launcher.name=k8s", "launcher.k8s.namespace=default", *overrides]
    )
    return config, launcher.options["k8s"]


SHAPES = {
    "1w0ps": ["cluster.workers=1", "cluster.ps=0", "eval.enabled=false"],
    "2w1ps": ["cluster.workers=2", "cluster.ps=1"],
    "4w2ps-gpu": [
        "cluster.workers=4",
        "cluster.ps=2",
        "launcher.k8s.worker.gpus=1",
        "launcher.k8s.worker.node_selector={jobrole: worker}",
        "launcher.k8s.ps.node_selector={jobrole: ps}",
        "launcher.k8s.ps.tolerations=[{key: dedicated, operator: Equal, value: ps, "
        "effect: NoSchedule}]",
    ],
    "blob-board-deadline": [
        "run_dir=az://runs/mnist",
        "launcher.k8s.storage.azure_file_share=",
        "launcher.k8s.storage.secret=azure-storage",
        "launcher.k8s.tensorboard.enabled=true",
        "launcher.k8s.active_deadline_seconds=7200",
        "launcher.k8s.ttl_seconds_after_finished=600",
        "launcher.k8s.service_account=trainer",
        "launcher.k8s.storage.scratch_size_limit=20Gi",
    ],
    "share-through-claim": [
        "launcher.k8s.storage.azure_file_claim=tf-share-claim",
        "launcher.k8s.storage.secret=azure-storage",
    ],
}


@pytest.fixture(params=sorted(SHAPES))
def objects(request):
    return job_objects(*k8s_job(*SHAPES[request.param]))


def jobs_by_task(objs: list[dict]) -> dict[Task, dict]:
    found = {}
    for obj in objs:
        if obj["kind"] == "Job":
            labels = obj["spec"]["template"]["metadata"]["labels"]
            found[Task(labels["disttrain.io/role"], int(labels["disttrain.io/index"]))] = obj
    return found


def container_of(obj: dict) -> dict:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return container


def env_of(obj: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_of(obj)["env"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(objects, version):
    for obj in objects:
        validate(obj, version, strict=True)


def test_every_pod_meets_the_restricted_pod_security_standard(objects):
    assert [p for obj in objects for p in restricted_violations(obj)] == []


def test_restricted_check_catches_a_host_path_scratch():
    objs = job_objects(*k8s_job("launcher.k8s.storage.scratch_host_path=/mnt"))
    problems = [p for obj in objs for p in restricted_violations(obj)]
    assert problems and all("hostPath" in p for p in problems)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_task_gets_the_tf_config_of_the_cluster_contract(shape):
    config, k8s = k8s_job(*SHAPES[shape])
    cluster_shape = ClusterShape.of(config)
    jobs = jobs_by_task(job_objects(config, k8s))
    assert set(jobs) == set(tasks_of(cluster_shape))
    for task, job in jobs.items():
        tf_config = env_of(job)["TF_CONFIG"]
        expected = tf_config_json(
            cluster_shape, address_of(config.name, k8s.namespace, k8s.port), task
        )
        assert tf_config == expected
        assert int(INDEX_IN_TF_CONFIG.search(tf_config).group(1)) == task.index
        assert env_of(job)["GRPC_FAIL_FAST"] == "use_caller"
        assert container_of(job)["command"] == [
            "disttrain",
            "task",
            "--config",
            "/etc/disttrain/config.yaml",
        ]


def test_addresses_are_the_pods_stable_dns_names_behind_the_headless_service():
    config, k8s = k8s_job(*SHAPES["4w2ps-gpu"])
    objs = job_objects(config, k8s)
    (service,) = [o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "default"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    cluster = json.loads(env_of(jobs_by_task(objs)[Task("chief", 0)])["TF_CONFIG"])["cluster"]
    for task, job in jobs_by_task(objs).items():
        pod = job["spec"]["template"]
        if task.role == "evaluator":
            assert not _selects(service, pod), "the evaluator must stay out of the cluster"
            continue
        assert _selects(service, pod)
        dns = f"{pod['spec']['hostname']}.{pod['spec']['subdomain']}.default.svc:2222"
        assert cluster[task.role][task.index] == dns
        assert pod["spec"]["subdomain"] == service["metadata"]["name"]


def _selects(service: dict, pod_template: dict) -> bool:
    labels = pod_template["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_two_jobs_share_a_namespace_without_sharing_objects_or_pods():
    first = job_objects(*k8s_job("name=alpha"))
    second = job_objects(*k8s_job("name=beta"))
    names = lambda objs: {(o["kind"], o["metadata"]["name"]) for o in objs}  # noqa: E731
    assert not names(first) & names(second)
    for service in (o for o in first if o["kind"] == "Service"):
        assert not any(
            _selects(service, j["spec"]["template"])
            for j in second
            if "spec" in j and "template" in j["spec"]
        )


def test_labels_name_the_app_instance_component_role_and_index(objects):
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "disttrain"
        assert labels["app.kubernetes.io/instance"] == "default"
        assert labels["app.kubernetes.io/component"]
    for task, job in jobs_by_task(objects).items():
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert (labels["disttrain.io/role"], labels["disttrain.io/index"]) == (
            task.role,
            str(task.index),
        )


def test_restart_policies_budget_and_grace_follow_the_failure_semantics():
    config, k8s = k8s_job(
        *SHAPES["blob-board-deadline"],
        "cluster.max_restarts=5",
        "launcher.k8s.termination_grace_seconds=45",
    )
    objs = job_objects(config, k8s)
    for task, job in jobs_by_task(objs).items():
        pod = job["spec"]["template"]["spec"]
        # A podFailurePolicy needs Never: a restart is a new pod of the same Job.
        assert pod["restartPolicy"] == "Never"
        assert pod["terminationGracePeriodSeconds"] == 45
        assert env_of(job)["DISTTRAIN_GRACE_SECONDS"] == "45"  # the task's own deadline
        rules = [
            (rule["action"], rule.get("onExitCodes", {}).get("values"), rule["onPodConditions"])
            for rule in job["spec"]["podFailurePolicy"]["rules"]
        ]
        assert rules == [
            ("FailJob", [4], []),  # a restart cannot fix it: the task's Job fails at once
            ("Ignore", [5], []),  # it stopped on SIGTERM after saving: not a failure
            ("Ignore", None, [{"type": "DisruptionTarget", "status": "True"}]),
        ]
        assert job["spec"]["backoffLimit"] == 5
        assert job["spec"]["activeDeadlineSeconds"] == 7200
        # Only the owner has a TTL: its deletion takes every other object with it.
        assert ("ttlSecondsAfterFinished" in job["spec"]) == (task.role == "chief")
    assert objs[0]["kind"] == "Job" and objs[0]["metadata"]["name"] == "default"


def test_a_task_whose_heartbeat_stops_fails_its_liveness_probe(tmp_path):
    """Every task's container names its heartbeat file, and its probe, run here as the
    kubelet runs it (this interpreter for the image's python3), passes while the file is
    fresh and fails once it is older than cluster.hung_task_seconds, or missing."""
    hung_after_30s = ["cluster.hung_task_seconds=30", "train.stall_warning_seconds=10"]
    jobs = jobs_by_task(job_objects(*k8s_job(*hung_after_30s)))
    assert len(jobs) == 5
    for task, job in jobs.items():
        probe = container_of(job)["livenessProbe"]
        *_, heartbeat, limit = probe["exec"]["command"]
        assert env_of(job)["DISTTRAIN_HEARTBEAT_FILE"] == heartbeat, task
        assert (limit, probe["initialDelaySeconds"], probe["failureThreshold"]) == ("30", 30, 1)
    command = probe["exec"]["command"]
    path = tmp_path / "heartbeat"

    def probe_passes() -> bool:
        run = [sys.executable, *command[1:-2], str(path), command[-1]]
        return subprocess.run(run, capture_output=True).returncode == 0

    assert not probe_passes()  # no heartbeat yet
    path.touch()
    assert probe_passes()
    os.utime(path, (path.stat().st_mtime - 31,) * 2)
    assert not probe_passes()


def test_no_liveness_probe_without_a_hung_task_timeout():
    for job in jobs_by_task(job_objects(*k8s_job("cluster.hung_task_seconds=0"))).values():
        assert "livenessProbe" not in container_of(job)
        assert "DISTTRAIN_HEARTBEAT_FILE" not in env_of(job)


def test_workers_get_gpus_with_the_matching_toleration_and_ps_do_not():
    jobs = jobs_by_task(job_objects(*k8s_job(*SHAPES["4w2ps-gpu"])))
    worker, ps = jobs[Task("worker", 3)], jobs[Task("ps", 1)]
    assert container_of(worker)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker[
        "spec"
    ]["template"]["spec"]["tolerations"]
    assert worker["spec"]["template"]["spec"]["nodeSelector"] == {"jobrole": "worker"}
    assert "nvidia.com/gpu" not in container_of(ps)["resources"]["limits"]
    assert ps["spec"]["template"]["spec"]["nodeSelector"] == {"jobrole": "ps"}
    assert container_of(ps)["image"] == "disttrain/ps:0.1.0"
    assert container_of(worker)["image"] == "disttrain/worker:0.1.0"


def test_storage_mounts_share_scratch_and_config_and_credentials_by_reference():
    objs = job_objects(*k8s_job(*SHAPES["blob-board-deadline"]))
    for obj in objs:
        if "template" not in obj.get("spec", {}):
            continue
        mounts = {m["mountPath"] for m in container_of(obj)["volumeMounts"]}
        assert "/mnt" in mounts
        assert ("/etc/disttrain" in mounts) == (obj["kind"] == "Job")
        env = env_of(obj)
        assert env["AZURE_STORAGE_ACCOUNT_KEY"] == {
            "secretKeyRef": {
                "name": "azure-storage",
                "key": "AZURE_STORAGE_ACCOUNT_KEY",
                "optional": True,
            }
        }
    share_job = job_objects(*k8s_job())[0]
    (share,) = [v for v in share_job["spec"]["template"]["spec"]["volumes"] if "csi" in v]
    assert share["csi"]["driver"] == "file.csi.azure.com"
    assert {"name": "azure-share", "mountPath": "/azure/tfshare"} in container_of(share_job)[
        "volumeMounts"
    ]


def test_no_secret_value_reaches_a_manifest_or_the_dry_run(monkeypatch):
    for name in ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING"):
        monkeypatch.setenv(name, f"AccountName=x;AccountKey={PLANTED_KEY}")
    config, k8s = k8s_job(*SHAPES["blob-board-deadline"])
    rendered = plan_job(config, k8s).render()
    assert PLANTED_KEY not in rendered
    cli = subprocess.run(
        [sys.executable, "-m", "disttrain", "train", "--config", "configs/azure.yaml", "--dry-run"],
        capture_output=True,
        text=True,
        env={**os.environ, "AZURE_STORAGE_ACCOUNT_KEY": PLANTED_KEY},
    )
    assert cli.returncode == 0, cli.stderr
    assert PLANTED_KEY not in cli.stdout + cli.stderr
    # The Secret that `disttrain secret create` sends holds it; that object is never printed.
    secret = storage_secret("azure-storage", "default", {"AZURE_STORAGE_ACCOUNT_KEY": PLANTED_KEY})
    assert secret["stringData"]["azurestorageaccountkey"] == PLANTED_KEY


BLOB = ["launcher.k8s.storage.azure_file_share=", "launcher.k8s.storage.secret=azure-storage"]


def test_submit_preflight_skips_with_a_note_what_only_the_pods_can_reach(monkeypatch):
    for name in LOCAL_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    identity = ["launcher.k8s.storage.secret=", "launcher.k8s.service_account=trainer"]
    notes = []
    check_cluster_run_dir(*k8s_job(), notes.append)
    check_cluster_run_dir(*k8s_job("run_dir=az://runs/a", *BLOB), notes.append)
    check_cluster_run_dir(*k8s_job("run_dir=az://runs/b", *BLOB, *identity), notes.append)
    missing = ", ".join(LOCAL_CREDENTIALS)
    assert notes == [
        "storage | preflight skipped | /azure/tfshare/runs/mnist | a path on the pods' "
        "mounted Azure Files share, not visible from this machine",
        f"storage | preflight skipped | az://runs/a | none of {missing} is set here "
        "(the pods use the Secret 'azure-storage')",
        f"storage | preflight skipped | az://runs/b | none of {missing} is set here "
        "(the pods use service account 'trainer')",
    ]


def test_submit_preflight_reaches_azure_without_importing_tensorflow(azurite):
    url = f"az://{azurite.create_container()}/runs/probe"
    code = (
        "import sys\n"
        "import launchers.helm, launchers.kubernetes\n"
        "from launchers import load_job\n"
        "from launchers.prepare import check_cluster_run_dir\n"
        f"config, k8s = load_job(None, {[*SHARE, *BLOB, f'run_dir={url}']!r}, 'k8s')\n"
        "check_cluster_run_dir(config, k8s.options['k8s'], print)\n"
        "sys.exit(3 if 'tensorflow' in sys.modules else 0)\n"
    )
    env = {**os.environ, **azurite.env()}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"storage | preflight ok | {url} | connection string" in result.stdout
    assert azurite.blob_names(url.split("/")[2]) == []  # the probe is gone


def test_the_dry_run_prints_the_planned_objects_and_ownership_only_adds_references():
    config, k8s = k8s_job(*SHAPES["2w1ps"])
    printed = [doc for doc in yaml.safe_load_all(plan_job(config, k8s).render()) if doc]
    planned = job_objects(config, k8s)
    assert printed == planned
    reference = owner_reference(planned[0], "0f6a3c1e-uid")
    owned = [owned_by(obj, reference) for obj in planned[1:]]
    assert all(o["metadata"]["ownerReferences"] == [reference] for o in owned)
    assert [
        {**o, "metadata": {k: v for k, v in o["metadata"].items() if k != "ownerReferences"}}
        for o in owned
    ] == planned[1:]
    assert "ownerReferences" not in planned[1]["metadata"], "owned_by must not change the plan"


def test_dry_run_yaml_is_plain_multi_document_yaml():
    text = to_yaml(job_objects(*k8s_job()))
    assert "&id" not in text and "*id" not in text  # no anchors/aliases
    assert "config.yaml: |" in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["cluster.workers=0", "cluster.ps=1"], "cluster.workers: got 0"),
        (["launcher.k8s.worker.gpus=-1"], "launcher.k8s.worker.gpus: got -1"),
        (["launcher.k8s.ps.image=disttrain/ps"], "launcher.k8s.ps.image: got 'disttrain/ps'"),
        (["run_dir=runs/mnist"], "run_dir: got 'runs/mnist', which a pod cannot reach"),
        (["run_dir=/azure/othershare/runs/x"], "a path under /azure/tfshare/"),
        (["run_dir=/tmp/runs/x"], "which a pod cannot reach"),
        (
            ["run_dir=az://runs/x", *NO_SHARE, "launcher.k8s.storage.secret="],
            "the pods have no Azure credentials",
        ),
        (["data.source=image_folder", "data.root=/home/me/images"], "data.root: got"),
        (["data.source=tfrecord", "data.root=./shards"], "data.root: got './shards', which a pod"),
        (
            ["data.source=tfds", "data.tfds_data_dir=/home/me/tfds"],
            "data.tfds_data_dir: got '/home/me/tfds', which a pod cannot reach",
        ),
        (
            ["train.init_from=/home/me/base.weights.h5"],
            "train.init_from: got '/home/me/base.weights.h5', which a pod cannot reach",
        ),
        (["name=Upper"], "name: got 'Upper'"),
        (["launcher.k8s.namespace=Bad_NS"], "launcher.k8s.namespace: got 'Bad_NS'"),
        (["launcher.k8s.storage.secret="], "launcher.k8s.storage.secret: empty"),
        (
            [*IDENTITY, "launcher.k8s.storage.account_name="],
            "run_dir: got 'az://runs/x', which names no storage account",
        ),
    ],
)
def test_bad_input_fails_clearly_before_anything_is_sent(overrides, message, monkeypatch):
    # No cluster is reachable at all: the error must come from the check, not from a connection.
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    with pytest.raises(ConfigError, match=re.escape(message)):
        config, launcher = load_job(None, [*SHARE, *overrides], "k8s")
        launcher.submit(launcher.plan(config))


def test_cli_reports_bad_input_with_the_key_and_exit_code_2():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "disttrain",
            "train",
            "-l",
            "k8s",
            "--set",
            "run_dir=runs/x",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "error: run_dir: got 'runs/x'" in result.stderr
    assert "Traceback" not in result.stderr


def test_verbs_without_a_cluster_say_so(monkeypatch, tmp_path):
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "none"), "KUBERNETES_SERVICE_HOST": ""}
    result = subprocess.run(
        [sys.executable, "-m", "disttrain", "status", "mnist", "-l", "k8s"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0
    assert "no Kubernetes cluster" in result.stderr


def test_launcher_options_are_declared_per_launcher():
    launcher = get_launcher("k8s", {"namespace": "ml", "context": None})
    assert isinstance(launcher, KubernetesLauncher) and launcher.k8s.namespace == "ml"
    with pytest.raises(ConfigError, match="--namespace does not apply to launcher 'local'"):
        get_launcher("local", {"namespace": "ml"})


def test_the_launcher_module_imports_without_the_kubernetes_client():
    code = (
        "import sys; import launchers.kubernetes, disttrain.cli; "
        "sys.exit(1 if 'kubernetes' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_azure_example_config_renders_the_2017_sample_cluster():
    config, launcher = load_job("configs/azure.yaml", [])
    k8s = with_namespace(launcher.options["k8s"])
    assert k8s.namespace == "default"  # no kubeconfig in the test environment
    objs = job_objects(config, k8s)
    jobs = jobs_by_task(objs)
    assert config.run_dir.startswith("/azure/")
    assert jobs[Task("worker", 0)]["spec"]["template"]["spec"]["nodeSelector"] == {
        "jobrole": "worker"
    }
    assert jobs[Task("ps", 0)]["spec"]["template"]["spec"]["nodeSelector"] == {"jobrole": "ps"}
    for version in K8S_VERSIONS:
        for obj in objs:
            validate(obj, version, strict=True)


TWO_CONTEXTS = (
    "apiVersion: v1\nkind: Config\ncurrent-context: a\n"
    "clusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\n"
    "users:\n- name: u\n  user: {token: x}\n"
    "contexts:\n- name: a\n  context: {cluster: c, user: u, namespace: ns-a}\n"
    "- name: b\n  context: {cluster: c, user: u, namespace: ns-b}\n"
)


def test_context_flag_takes_that_contexts_default_namespace(tmp_path, monkeypatch):
    from launchers.kubernetes import Cluster

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(TWO_CONTEXTS)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert Cluster("b", None).namespace == "ns-b"
    assert Cluster(None, None).namespace == "ns-a"
    assert Cluster("b", "explicit").namespace == "explicit"


@pytest.mark.parametrize("launcher", ["k8s", "helm"])
def test_train_targets_the_namespace_the_other_verbs_use(tmp_path, launcher):
    """Without launcher.k8s.namespace, train goes where status/logs/stop look: the context's."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(TWO_CONTEXTS)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def namespaces(*args: str) -> set[str]:
        command = [sys.executable, "-m", "disttrain", "train", "-l", launcher, "--dry-run"]
        result = subprocess.run(
            [*command, *[f"--set={o}" for o in SHARE], *args],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return {obj["metadata"]["namespace"] for obj in yaml.safe_load_all(result.stdout) if obj}

    assert namespaces() == {"ns-a"}
    assert namespaces("--context", "b") == {"ns-b"}
    assert namespaces("--namespace", "team-1") == {"team-1"}
    assert namespaces("--namespace", "2024-ml") == {"2024-ml"}  # RFC 1123: may start with a digit


def test_a_secret_from_a_connection_string_alone_can_mount_the_share():
    """The Azure Files CSI driver reads the account and key under its own names."""
    connection = f"DefaultEndpointsProtocol=https;accountname=acct;AccountKey={PLANTED_KEY};"
    data = storage_secret("s", "ns", {"AZURE_STORAGE_CONNECTION_STRING": connection})["stringData"]
    assert data["azurestorageaccountname"] == "acct"  # field names in any case, as Azure reads
    assert data["azurestorageaccountkey"] == PLANTED_KEY  # its trailing '=' kept
    # A name from one source never pairs with a key from another.
    mixed = {"AZURE_STORAGE_CONNECTION_STRING": connection, "AZURE_STORAGE_ACCOUNT_NAME": "b"}
    data = storage_secret("s", "ns", mixed)["stringData"]
    assert (data["azurestorageaccountname"], data["azurestorageaccountkey"]) == (
        "acct",
        PLANTED_KEY,
    )
    sas_only = {"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_SAS_TOKEN": "sv=x"}
    data = storage_secret("s", "ns", sas_only)["stringData"]
    assert "azurestorageaccountkey" not in data and data["azurestorageaccountname"] == "acct"


def test_workload_identity_pods_get_the_account_and_the_webhook_label():
    for obj in job_objects(*k8s_job(*IDENTITY, "launcher.k8s.tensorboard.enabled=true")):
        if obj["kind"] not in ("Job", "Deployment"):
            continue
        template = obj["spec"]["template"]
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        assert template["spec"]["serviceAccountName"] == "trainer"
        (container,) = template["spec"]["containers"]
        azure_env = [e for e in container["env"] if e["name"].startswith("AZURE_")]
        assert azure_env == [{"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": "mystorage"}]
    # The account may instead be in the URL.
    in_url = "run_dir=abfs://runs@acct.dfs.core.windows.net/x"
    objs = job_objects(*k8s_job(*IDENTITY, "launcher.k8s.storage.account_name=", in_url))
    assert not [e for e in container_of(objs[-1])["env"] if e["name"].startswith("AZURE_")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["launcher.k8s.storage.secret=azure-storage"],
            "account_name: got 'mystorage' with the Secret 'azure-storage'",
        ),
        (
            ["run_dir=abfs://runs@other.dfs.core.windows.net/x"],
            "in account 'other', but launcher.k8s.storage.account_name is 'mystorage'",
        ),
    ],
)
def test_an_account_name_that_could_pair_with_another_accounts_key_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        job_objects(*k8s_job(*IDENTITY, *overrides))


def test_every_kubernetes_problem_is_reported_at_once():
    config, k8s = k8s_job("name=Bad", "data.source=tfrecord", "data.root=./s", "run_dir=runs/x")
    with pytest.raises(ConfigError) as error:
        job_objects(config, k8s)
    lines = str(error.value).splitlines()
    assert lines[0] == "the config has 3 problems:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["name", "run_dir", "data.root"]


def test_image_pull_secrets_reach_every_pod_by_name():
    config, k8s = k8s_job(
        "launcher.k8s.image_pull_secrets=[acr-pull]", "launcher.k8s.tensorboard.enabled=true"
    )
    pods = [
        o["spec"]["template"]["spec"]
        for o in job_objects(config, k8s)
        if "template" in o.get("spec", {})
    ]
    assert len(pods) == 6  # chief, 2 workers, ps, evaluator, TensorBoard
    assert all(pod["imagePullSecrets"] == [{"name": "acr-pull"}] for pod in pods)


def test_a_crash_looping_task_shows_its_whole_phase_in_status():
    from datetime import datetime, timezone

    from kubernetes import client

    waiting = client.V1ContainerStateWaiting(reason="CrashLoopBackOff")
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(
            name="mnist-worker-1-abcde", creation_timestamp=datetime.now(timezone.utc)
        ),
        status=client.V1PodStatus(
            phase="Running",
            container_statuses=[
                client.V1ContainerStatus(
                    name="task",
                    image="i",
                    image_id="",
                    ready=False,
                    restart_count=3,
                    state=client.V1ContainerState(waiting=waiting),
                )
            ],
        ),
    )
    # Each restart is a new pod of the task's Job: its failures are the restarts spent.
    job = client.V1Job(status=client.V1JobStatus(failed=3), metadata=pod.metadata)
    row = _task_row("worker-1", job, pod)
    assert row["phase"] == "CrashLoopBackOff"  # was cut to "CrashLoopB"
    header, line = format_table([row]).splitlines()
    assert line.split()[:3] == ["worker-1", "CrashLoopBackOff", "3"]
    assert header.index("RESTARTS") == line.index("3")  # the column is as wide as the phase


def test_describe_names_a_pods_last_termination_reason_and_exit_code():
    from kubernetes import client

    def pod(state: client.V1ContainerState, last: client.V1ContainerState | None, restarts: int):
        labels = {"disttrain.io/role": "worker", "disttrain.io/index": "1"}
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name="mnist-worker-1-abcde", labels=labels),
            status=client.V1PodStatus(
                phase="Running",
                container_statuses=[
                    client.V1ContainerStatus(
                        name="task",
                        image="i",
                        image_id="",
                        ready=False,
                        restart_count=restarts,
                        state=state,
                        last_state=last,
                    )
                ],
            ),
        )

    waiting = client.V1ContainerState(
        waiting=client.V1ContainerStateWaiting(reason="CrashLoopBackOff")
    )
    killed = client.V1ContainerState(
        terminated=client.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")
    )
    assert _pod_summary(pod(waiting, killed, 2)) == (
        "mnist-worker-1-abcde (worker-1): CrashLoopBackOff, restarts 2, "
        "last termination: OOMKilled (exit code 137)"
    )
    running = client.V1ContainerState(running=client.V1ContainerStateRunning())
    assert _pod_summary(pod(running, None, 0)) == (
        "mnist-worker-1-abcde (worker-1): Running, restarts 0"
    )
