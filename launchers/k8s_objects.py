"""A job as Kubernetes objects: pure builders from a Config and its `launcher.k8s` options
(launchers/k8s_options.py) to plain manifest dicts.

Nothing here talks to a cluster or imports the `kubernetes` package: `launchers/kubernetes.py`
sends these objects (`job_objects`) and `--dry-run` prints them. The Helm charts render the
same objects from a values file; `objects_from_values` is that entry here, and
tests/test_helm_charts.py gives both the same values and compares the whole objects.

The objects of a job NAME in namespace NS (every name is scoped by NAME, so jobs share a
namespace):

* `ConfigMap NAME-config`: the resolved config, mounted at /etc/disttrain/config.yaml.
* `Service NAME`: headless, `publishNotReadyAddresses`, selecting the training pods; each
  pod sets `hostname: NAME-<role>-<i>` and `subdomain: NAME`, so every task has the stable
  DNS name `NAME-<role>-<i>.NAME.NS.svc` before it is even ready (peers wait for it).
* One `Job` per task: `NAME` for the chief, `NAME-worker-<i>`, `NAME-ps-<i>`,
  `NAME-evaluator-0`. The chief's Job *is* the job: it owns every other object
  (ownerReferences), its result is the job's result, `ttlSecondsAfterFinished` on it
  cleans everything up, and deleting it deletes everything.
* `NetworkPolicy NAME`: the training port (`launcher.k8s.port`) of the chief, workers and
  ps admits only the same job's training pods; nothing else reaches them (they serve no
  other port). Egress stays open: storage, DNS and the image registry must keep working.
* Optionally `Deployment` + `Service NAME-tensorboard`, and `NetworkPolicy
  NAME-tensorboard`: port 6006 from what `launcher.k8s.tensorboard.allowed_from` admits
  (by default any pod of the namespace; `kubectl port-forward` and the node always).

Each NetworkPolicy is created before the pods it guards could serve (right after the
chief's Job, which must come first as every other object's owner), and it selects pods by
`app.kubernetes.io/instance` + `component`, the labels the headless Service selects by.
A pod selected by a policy is isolated for ingress: only what some policy admits reaches
it (https://kubernetes.io/docs/concepts/services-networking/network-policies/).

Why one Job per task rather than an Indexed Job per role: each pod's TF_CONFIG is then the
literal string `disttrain.cluster.tf_config_json` gives for that task (no runtime
`$(JOB_COMPLETION_INDEX)` substitution inside JSON that a manifest reader, the charts' test
and the trainer's index regex would otherwise see differently); each task has its own
restart budget (`backoffLimit`, where an Indexed Job needs `backoffLimitPerIndex`, only GA in
Kubernetes 1.33 while we support 1.26); and a worker's restarts never count against the chief.

Failure semantics (docs/architecture.md) without an operator: a failed task's Job starts a
new pod (`restartPolicy: Never`, which a podFailurePolicy needs), with the same hostname and
subdomain, so the same DNS name; `logs --previous` reads the pod before. A worker that dies
restarts alone; the coordinator reschedules its work. A ps that dies makes the chief's
coordinator fail (TensorFlow raises on a lost ps), so the chief restarts too and resumes
from the latest published checkpoint. `backoffLimit = cluster.max_restarts` ends a task that
keeps failing; the job fails when its chief does. `FAILURE_POLICY` fails a task's Job at once
on exit code 4 (a restart cannot fix it) and does not count a pod the cluster disrupted
(drain, eviction, preemption) nor one that stopped on SIGTERM (exit 5): a new pod replaces
it, after the old one has ended (the Job controller waits when a podFailurePolicy is set).
A task that is stopped or frozen fails nothing by itself: its liveness probe fails once its
heartbeat file is older than `cluster.hung_task_seconds`, and the kubelet kills it (SIGKILL
after the grace period, as a stopped process ignores SIGTERM): a failure, counted.
"""

from __future__ import annotations

import copy
from collections.abc import Collection

import yaml

from disttrain.cluster import (
    CHIEF,
    EVALUATOR,
    TASK_ENV,
    ClusterShape,
    Task,
    tasks_of,
    tf_config_json,
)
from disttrain.config import Config, dump_config
from disttrain.failures import EXIT_PREEMPTED, EXIT_UNRECOVERABLE
from disttrain.heartbeat import HEARTBEAT_ENV, probe_command
from disttrain.preemption import GRACE_ENV
from launchers.chart_values import (
    BOARD_CHART,
    CHARTS,
    EVAL_CHART,
    TRAIN_CHART,
    job_from_values,
    legacy_secret_name,
)
from launchers.k8s_checks import AZURE_ROOT, check_k8s_config
from launchers.k8s_options import K8sOptions, RoleOptions

APP = "disttrain"
CONFIG_DIR = "/etc/disttrain"
CONFIG_PATH = f"{CONFIG_DIR}/config.yaml"
SCRATCH_DIR = "/mnt"
BOARD_PORT = 6006
NETWORK_POLICY_API = "networking.k8s.io/v1"
# The label the API server gives every namespace, its name: what a namespaceSelector by
# name matches (Kubernetes >= 1.21).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# The images' non-root user (docker/*.Dockerfile); the "restricted" standard needs non-root.
RUN_AS_USER = 1000
TASK_COMMAND = ["disttrain", "task", "--config", CONFIG_PATH]
EVAL_ONCE_COMMAND = ["disttrain", "eval", "--config", CONFIG_PATH, "--once"]
# Keys of the storage Secret, handed to the pods by reference (storage.py reads them).
SECRET_ENV = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
)
ACCOUNT_ENV = "AZURE_STORAGE_ACCOUNT_NAME"
# The same account and key under the names the Azure Files CSI driver reads.
CSI_SECRET_KEYS = {
    "AZURE_STORAGE_ACCOUNT_NAME": "azurestorageaccountname",
    "AZURE_STORAGE_ACCOUNT_KEY": "azurestorageaccountkey",
}
GPU_RESOURCE = "nvidia.com/gpu"
COMPONENT_LABEL = "app.kubernetes.io/component"
ROLE_LABEL = "disttrain.io/role"
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"
INDEX_LABEL = "disttrain.io/index"
# In the container's own filesystem, not /mnt: a restarted container starts without it, and
# a hostPath scratch is shared by every pod on the node (one would beat for another).
HEARTBEAT_FILE = "/tmp/disttrain-heartbeat"
# How often the kubelet runs the liveness probe; a probe is given as long to answer.
PROBE_PERIOD_SECONDS = 10
# Every task's Job (launchers/charts/_shared/_disttrain.tpl renders the same): the Job
# controller's matchPodFailurePolicy takes the first rule that matches a failed pod. The
# empty onPodConditions of an exit-code rule are for the published API schemas of 1.26 to
# 1.28, which wrongly require the field (kubectl's client-side validation uses them); the
# API server checks that only one of the two is non-empty.
FAILURE_POLICY = {
    "rules": [
        {
            "action": "FailJob",
            "onExitCodes": {"operator": "In", "values": [EXIT_UNRECOVERABLE]},
            "onPodConditions": [],
        },
        {
            "action": "Ignore",
            "onExitCodes": {"operator": "In", "values": [EXIT_PREEMPTED]},
            "onPodConditions": [],
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
}


# ---------------------------------------------------------------- names, labels, addresses


def labels(name: str, component: str, task: Task | None = None) -> dict[str, str]:
    found = {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/instance": name,
        COMPONENT_LABEL: component,
    }
    if task is not None:
        found[ROLE_LABEL] = task.role
        found[INDEX_LABEL] = str(task.index)
    return found


def pod_labels(k8s: K8sOptions, found: dict[str, str]) -> dict[str, str]:
    """A pod's labels: with a service account, the one AKS's workload identity webhook
    looks for before it gives the pod its federated token (harmless without the webhook)."""
    if k8s.service_account:
        return {**found, WORKLOAD_IDENTITY_LABEL: "true"}
    return found


def task_host(name: str, task: Task) -> str:
    return f"{name}-{task.role}-{task.index}"


def job_name(name: str, task: Task) -> str:
    """The chief's Job is named after the job itself: `kubectl get job NAME` shows its result."""
    return name if task.role == CHIEF else task_host(name, task)


def address_of(name: str, namespace: str, port: int):
    """Stable DNS of every task: `NAME-<role>-<i>.NAME.NS.svc:<port>` (hostname + subdomain)."""

    def address(role: str, index: int) -> str:
        return f"{task_host(name, Task(role, index))}.{name}.{namespace}.svc:{port}"

    return address


def _metadata(k8s: K8sOptions, name: str, labels_: dict[str, str]) -> dict:
    return {"name": name, "namespace": k8s.namespace, "labels": labels_}


# ---------------------------------------------------------------- the objects


def job_objects(config: Config, k8s: K8sOptions) -> list[dict]:
    """Every object of the job in creation order; the chief's Job (the owner) comes first."""
    check_k8s_config(config, k8s)
    return _objects(config, k8s, ClusterShape.of(config), k8s.tensorboard.enabled)


def objects_from_values(
    values: dict, namespace: str, release: str = "", charts: Collection[str] = CHARTS
) -> list[dict]:
    """What `charts` render from a values file into `namespace`: the charts' behaviour in
    Python, which tests/test_helm_charts.py compares with `helm template` on the same input.

    A thin adapter: the values are read back into a Config and `launcher.k8s` options
    (launchers/chart_values.py) and built as `job_objects` builds them; `release` names the
    job when the values do not. What only a values file can ask for is added here: the
    evaluator and TensorBoard follow the charts installed (not `eval.enabled` and
    `tensorboard.enabled`), `eval.once`, and the Secret the training chart makes from the
    2017 sample's base64 keys.
    """
    config, k8s = job_from_values(values, namespace, release)
    check_k8s_config(config, k8s)
    shape = ClusterShape(config.cluster.workers, config.cluster.ps, EVAL_CHART in charts)
    once = bool((values.get("eval") or {}).get("once"))
    objects = _objects(config, k8s, shape, BOARD_CHART in charts, eval_once=once)
    if TRAIN_CHART not in charts:  # the training chart's objects go with it (its config stays)
        kept = {"evaluator", "config"} if EVAL_CHART in charts else set()
        kept |= {"tensorboard"} if BOARD_CHART in charts else set()
        objects = [o for o in objects if o["metadata"]["labels"][COMPONENT_LABEL] in kept]
    elif secret := legacy_secret_name(values, release):
        objects.append(legacy_secret(k8s.namespace, config.name, secret, values["storage"]))
    return objects


def _objects(
    config: Config, k8s: K8sOptions, shape: ClusterShape, board: bool, eval_once: bool = False
) -> list[dict]:
    tasks = tasks_of(shape)
    chief = next(t for t in tasks if t.role == CHIEF)
    objects = [
        task_job(config, k8s, shape, chief),
        trainer_network_policy(config, k8s),
        config_map(config, k8s),
        headless_service(config, k8s),
    ]
    objects += [task_job(config, k8s, shape, t, eval_once) for t in tasks if t.role != CHIEF]
    if board:
        objects += [
            board_network_policy(config, k8s),
            board_deployment(config, k8s),
            board_service(config, k8s),
        ]
    return objects


def config_map(config: Config, k8s: K8sOptions) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(k8s, f"{config.name}-config", labels(config.name, "config")),
        "data": {"config.yaml": dump_config(config)},
    }


def headless_service(config: Config, k8s: K8sOptions) -> dict:
    port = k8s.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(k8s, config.name, labels(config.name, "trainer")),
        "spec": {
            "clusterIP": "None",
            # Peers resolve each other before they are ready: each task waits for its peers.
            "publishNotReadyAddresses": True,
            "selector": trainer_selector(config.name),
            "ports": [{"name": "grpc", "port": port, "targetPort": port}],
        },
    }


def trainer_selector(name: str) -> dict[str, str]:
    """The job's training pods (chief, workers, ps): what its headless Service selects."""
    return {"app.kubernetes.io/instance": name, COMPONENT_LABEL: "trainer"}


def trainer_network_policy(config: Config, k8s: K8sOptions) -> dict:
    """Only the job's own training pods reach its training port: another job's pods, in
    this namespace or another, cannot join or feed its ps and workers."""
    pods = {"matchLabels": trainer_selector(config.name)}
    port = {"protocol": "TCP", "port": k8s.port}
    return {
        "apiVersion": NETWORK_POLICY_API,
        "kind": "NetworkPolicy",
        "metadata": _metadata(k8s, config.name, labels(config.name, "trainer")),
        "spec": {
            "podSelector": pods,
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": copy.deepcopy(pods)}], "ports": [port]}],
        },
    }


def board_network_policy(config: Config, k8s: K8sOptions) -> dict:
    """TensorBoard's port from `tensorboard.allowed_from`; with nothing allowed, no rule
    at all (an ingress rule without `from` would admit everyone)."""
    allowed = k8s.tensorboard.allowed_from
    peers: list[dict] = [{"podSelector": {}}] if allowed.same_namespace else []
    peers += [
        {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}
        for namespace in allowed.namespaces
    ]
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in allowed.cidrs]
    rules = [{"from": peers, "ports": [{"protocol": "TCP", "port": BOARD_PORT}]}] if peers else []
    board_labels = labels(config.name, "tensorboard")
    return {
        "apiVersion": NETWORK_POLICY_API,
        "kind": "NetworkPolicy",
        "metadata": _metadata(k8s, f"{config.name}-tensorboard", board_labels),
        "spec": {
            "podSelector": {"matchLabels": dict(board_labels)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def task_job(
    config: Config, k8s: K8sOptions, shape: ClusterShape, task: Task, eval_once: bool = False
) -> dict:
    """The Job of one task; `eval_once` (the eval chart's `eval.once`): an evaluator that
    evaluates the latest checkpoint once and exits."""
    component = "evaluator" if task.role == EVALUATOR else "trainer"
    task_labels = labels(config.name, component, task)
    tf_config = tf_config_json(shape, address_of(config.name, k8s.namespace, k8s.port), task)
    env = [{"name": "TF_CONFIG", "value": tf_config}]
    env += [{"name": key, "value": value} for key, value in TASK_ENV.items()]
    env.append({"name": GRACE_ENV, "value": str(k8s.termination_grace_seconds)})
    command = EVAL_ONCE_COMMAND if task.role == EVALUATOR and eval_once else TASK_COMMAND
    hung_task_seconds = config.cluster.hung_task_seconds if command == TASK_COMMAND else 0
    if hung_task_seconds:
        env.append({"name": HEARTBEAT_ENV, "value": HEARTBEAT_FILE})
    container = _container(k8s, k8s.role(task.role), command, env)
    if hung_task_seconds:
        container["livenessProbe"] = liveness_probe(hung_task_seconds)
    if task.role != EVALUATOR:
        container["ports"] = [{"name": "grpc", "containerPort": k8s.port}]
    pod = _pod_spec(config, k8s, k8s.role(task.role), container, "Never")
    pod["hostname"] = task_host(config.name, task)
    pod["subdomain"] = config.name
    spec = {
        "backoffLimit": config.cluster.max_restarts,
        "podFailurePolicy": copy.deepcopy(FAILURE_POLICY),
        "template": {"metadata": {"labels": pod_labels(k8s, task_labels)}, "spec": pod},
    }
    if k8s.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = k8s.active_deadline_seconds
    if task.role == CHIEF and k8s.ttl_seconds_after_finished >= 0:
        spec["ttlSecondsAfterFinished"] = k8s.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(k8s, job_name(config.name, task), task_labels),
        "spec": spec,
    }


def liveness_probe(hung_task_seconds: int) -> dict:
    """Restart the container once its heartbeat is older than `hung_task_seconds`: a task
    stopped or frozen (disttrain/heartbeat.py). The first probe waits that long too, and
    the task beats from its first second."""
    return {
        "exec": {"command": probe_command(HEARTBEAT_FILE, hung_task_seconds)},
        "initialDelaySeconds": hung_task_seconds,
        "periodSeconds": PROBE_PERIOD_SECONDS,
        "timeoutSeconds": PROBE_PERIOD_SECONDS,
        "failureThreshold": 1,
    }


def board_deployment(config: Config, k8s: K8sOptions) -> dict:
    board = k8s.tensorboard
    # Every address: the Service and port-forwards reach the pod on its own IP.
    command = ["disttrain", "board", "--run-dir", config.run_dir, "--host", "0.0.0.0"]
    command += ["--port", str(BOARD_PORT)]
    container = _container(k8s, board, command, [], with_config=False)
    container["ports"] = [{"name": "http", "containerPort": BOARD_PORT}]
    board_labels = labels(config.name, "tensorboard")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(k8s, f"{config.name}-tensorboard", board_labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": board_labels},
            "template": {
                "metadata": {"labels": pod_labels(k8s, board_labels)},
                "spec": _pod_spec(config, k8s, board, container, "Always", with_config=False),
            },
        },
    }


def board_service(config: Config, k8s: K8sOptions) -> dict:
    board_labels = labels(config.name, "tensorboard")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(k8s, f"{config.name}-tensorboard", board_labels),
        "spec": {
            "selector": board_labels,
            "ports": [{"name": "http", "port": BOARD_PORT, "targetPort": BOARD_PORT}],
        },
    }


# ---------------------------------------------------------------- pods


def _container(
    k8s: K8sOptions,
    role: RoleOptions,
    command: list[str],
    env: list[dict],
    with_config: bool = True,
) -> dict:
    env = [*env, {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH_DIR}/cache"}]
    env += storage_env(k8s)
    return {
        "name": "main",
        "image": role.image,
        "command": list(command),
        "env": env,
        "resources": resources(role),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": volume_mounts(k8s, with_config),
    }


def resources(role: RoleOptions) -> dict:
    requests = {"cpu": role.cpu, "memory": role.memory}
    limits = {"memory": role.memory}
    if role.gpus:
        limits[GPU_RESOURCE] = str(role.gpus)
    return {"requests": requests, "limits": limits}


def tolerations(role: RoleOptions) -> list[dict]:
    found = [toleration.manifest() for toleration in role.tolerations]
    if role.gpus:  # GPU node pools carry this taint so that only GPU pods land there
        found.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return found


def _pod_spec(
    config: Config,
    k8s: K8sOptions,
    role: RoleOptions,
    container: dict,
    restart: str,
    with_config: bool = True,
) -> dict:
    spec = {
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": k8s.termination_grace_seconds,
        "automountServiceAccountToken": bool(k8s.service_account),
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes(config, k8s, with_config),
    }
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    if k8s.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in k8s.image_pull_secrets]
    if role.node_selector:
        spec["nodeSelector"] = dict(role.node_selector)
    if tolerations(role):
        spec["tolerations"] = tolerations(role)
    return spec


def storage_env(k8s: K8sOptions) -> list[dict]:
    """Credentials by reference only: the Secret's values never enter a manifest."""
    storage = k8s.storage
    found = []
    if storage.account_name:  # a name, not a credential: a plain value
        found.append({"name": ACCOUNT_ENV, "value": storage.account_name})
    if storage.secret:
        found += [
            {
                "name": key,
                "valueFrom": {
                    "secretKeyRef": {"name": storage.secret, "key": key, "optional": True}
                },
            }
            for key in SECRET_ENV
        ]
    return found


def volumes(config: Config, k8s: K8sOptions, with_config: bool = True) -> list[dict]:
    storage = k8s.storage
    found = (
        [{"name": "config", "configMap": {"name": f"{config.name}-config"}}] if with_config else []
    )
    if storage.scratch_host_path:
        found.append(
            {
                "name": "scratch",
                "hostPath": {"path": storage.scratch_host_path, "type": "DirectoryOrCreate"},
            }
        )
    else:
        empty_dir = {"sizeLimit": storage.scratch_size_limit} if storage.scratch_size_limit else {}
        found.append({"name": "scratch", "emptyDir": empty_dir})
    if storage.azure_file_claim:
        claim = {"claimName": storage.azure_file_claim}
        found.append({"name": "azure-share", "persistentVolumeClaim": claim})
    elif storage.azure_file_share:
        found.append({"name": "azure-share", "csi": azure_file_csi(k8s)})
    return found


def azure_file_csi(k8s: K8sOptions) -> dict:
    storage = k8s.storage
    uid = RUN_AS_USER
    return {
        "driver": "file.csi.azure.com",
        "volumeAttributes": {
            "secretName": storage.secret,
            "shareName": storage.azure_file_share,
            # SMB has no POSIX owners: present the share as owned by the pods' user.
            "mountOptions": f"dir_mode=0770,file_mode=0660,uid={uid},gid={uid},mfsymlinks,"
            "cache=strict,nosharesock",
        },
    }


def volume_mounts(k8s: K8sOptions, with_config: bool = True) -> list[dict]:
    storage = k8s.storage
    found = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}] if with_config else []
    found.append({"name": "scratch", "mountPath": SCRATCH_DIR})
    if storage.azure_file_share:
        found.append(
            {"name": "azure-share", "mountPath": f"{AZURE_ROOT}/{storage.azure_file_share}"}
        )
    return found


# ---------------------------------------------------------------- ownership, secrets, YAML


def owner_reference(owner: dict, uid: str) -> dict:
    """A reference to the created owner (its uid exists only once the API server made it)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": uid,
    }


def owned_by(obj: dict, reference: dict) -> dict:
    owned = copy.deepcopy(obj)
    owned["metadata"]["ownerReferences"] = [reference]
    return owned


def storage_secret(name: str, namespace: str, values: dict[str, str]) -> dict:
    """The storage Secret from environment values; sent to the API, never printed."""
    data = {key: value for key, value in values.items() if key in SECRET_ENV and value}
    # The CSI driver's name and key come from one source, never a name from one and a key
    # from another: the variables when they hold both, else the connection string.
    account = {key: data[key] for key in CSI_SECRET_KEYS if key in data}
    if len(account) < len(CSI_SECRET_KEYS):
        account = _account_in(data.get("AZURE_STORAGE_CONNECTION_STRING", "")) or account
    for env_key, csi_key in CSI_SECRET_KEYS.items():
        if account.get(env_key):
            data[csi_key] = account[env_key]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "storage"},
        },
        "type": "Opaque",
        "stringData": data,
    }


def legacy_secret(namespace: str, name: str, secret: str, storage: dict) -> dict:
    """The Secret the training chart makes from a 2017-sample values file's base64 account
    and key (`storage.accountbase64/keybase64`), under the env and the CSI driver's names."""
    account, key = storage.get("accountbase64", ""), storage.get("keybase64", "")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret, "namespace": namespace, "labels": labels(name, "storage")},
        "type": "Opaque",
        "data": {
            CSI_SECRET_KEYS[ACCOUNT_ENV]: account,
            CSI_SECRET_KEYS["AZURE_STORAGE_ACCOUNT_KEY"]: key,
            ACCOUNT_ENV: account,
            "AZURE_STORAGE_ACCOUNT_KEY": key,
        },
    }


def _account_in(connection_string: str) -> dict[str, str]:
    """The account name and key inside a connection string (the CSI driver needs them
    apart); a key is base64 and may end in '='."""
    pairs = (part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    fields = {name.strip().lower(): value.strip() for name, value in pairs}  # Azure's: any case
    names = {"accountname": "AZURE_STORAGE_ACCOUNT_NAME", "accountkey": "AZURE_STORAGE_ACCOUNT_KEY"}
    return {env_key: fields[field] for field, env_key in names.items() if fields.get(field)}


class _ManifestDumper(yaml.SafeDumper):
    """Plain YAML for `kubectl apply -f -`: no anchors, multi-line strings as blocks."""

    def ignore_aliases(self, data) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, text: str):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def to_yaml(objects: list[dict]) -> str:
    return yaml.dump_all(objects, Dumper=_ManifestDumper, sort_keys=False, width=1000)
