"""The `launcher.k8s` section: where and how a job's pods run, for the k8s and helm launchers.

The trainer never reads it: tasks see only the trainer's config. Each field's default is
here, and so are the rules the API server would enforce (launchers/kube_syntax.py), so a
typo fails at load with the key that holds it, not as a 422 from the cluster.

The Helm charts read the same settings from their values file (camelCase keys,
launchers/chart_values.py), and their values.schema.json is generated from these classes:
a rule that is a `kube_syntax.Syntax` is also the schema's check (`make charts`,
launchers/chart_schema.py). A field added here becomes a required key of that schema, so
the charts refuse every values file until values.yaml gives its default; and the charts'
test renders the same values through the charts and through launchers/k8s_objects.py and
compares the objects.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from disttrain.config import Rule
from launchers import kube_syntax
from launchers.kube_syntax import Syntax

WORKER_IMAGE = "disttrain/worker:0.1.0"  # GPU TensorFlow + the whole trainer
PS_IMAGE = "disttrain/ps:0.1.0"  # CPU-only TensorFlow, no data tooling: smaller
ROLES = ("chief", "worker", "ps", "evaluator", "tensorboard")
SHARE_NAME = Syntax("[-a-z0-9]*")  # also the 2017 sample's storage.sharename


# `[registry[:port]/]path/name:tag`, `...:tag@sha256:<hex>` or `...@sha256:<hex>`: never an
# implicit `latest`, and no whitespace anywhere.
PINNED_IMAGE = Syntax(
    r"(\S+/)?[^\s/:@]+(:\w[\w.-]{0,127}(@sha256:[0-9a-f]{64})?|@sha256:[0-9a-f]{64})"
)


@dataclass
class Toleration:
    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    # With effect NoExecute: how long the pod stays on a node that gets the taint; None: ever.
    toleration_seconds: int | None = None

    def manifest(self) -> dict:
        """The toleration as a Pod spells it: empty value and effect, and no seconds, left out."""
        found: dict = {"key": self.key, "operator": self.operator}
        if self.value:
            found["value"] = self.value
        if self.effect:
            found["effect"] = self.effect
        if self.toleration_seconds is not None:
            found["tolerationSeconds"] = self.toleration_seconds
        return found


@dataclass
class RoleOptions:
    """How the pods of one role run (the 2017 sample used nodeSelector `jobrole: ps|worker`)."""

    image: str = WORKER_IMAGE
    cpu: str = "1"  # requested; Kubernetes quantities ("500m", "2")
    memory: str = "2Gi"  # requested and the limit
    gpus: int = 0  # nvidia.com/gpu; > 0 also tolerates the nvidia.com/gpu taint
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)

    RULES: ClassVar[dict[str, Rule]] = {
        "image": (
            PINNED_IMAGE,
            "an image reference with a tag or digest, e.g. disttrain/worker:0.1.0",
        ),
        "cpu": (kube_syntax.QUANTITY, kube_syntax.QUANTITY_ACCEPTED),
        "memory": (kube_syntax.QUANTITY, kube_syntax.QUANTITY_ACCEPTED),
        "gpus": (Syntax(minimum=0), "an integer >= 0 (nvidia.com/gpu per pod)"),
        "node_selector": (kube_syntax.are_labels, kube_syntax.LABELS_ACCEPTED),
        "tolerations": (kube_syntax.are_tolerations, kube_syntax.TOLERATIONS_ACCEPTED),
    }


@dataclass
class PsOptions(RoleOptions):
    image: str = PS_IMAGE


def is_cidr(text: str) -> bool:
    """An address range as a NetworkPolicy's ipBlock takes it: `address/prefix`."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


@dataclass
class AllowedFrom:
    """Who may connect to TensorBoard's port, as its NetworkPolicy admits them. The node
    always may (Kubernetes exempts node traffic from every policy), and so does
    `kubectl port-forward`, which reaches the port from inside the pod, where no policy
    applies. Everything false and empty: port-forward alone."""

    same_namespace: bool = True  # any pod of the job's namespace (`podSelector: {}`)
    namespaces: list[str] = field(default_factory=list)  # pods of these namespaces, by name
    # Address ranges, e.g. an ingress controller's or a VPN's (NetworkPolicy `ipBlock`).
    cidrs: list[str] = field(default_factory=list)

    RULES: ClassVar[dict[str, Rule]] = {
        "namespaces": (
            lambda names: all(kube_syntax.is_namespace(name) for name in names),
            f"namespace names, each {kube_syntax.NAMESPACE_ACCEPTED}",
        ),
        "cidrs": (
            lambda ranges: all(is_cidr(text) for text in ranges),
            "address ranges as address/prefix, e.g. 10.20.0.0/16 or 2001:db8::/64",
        ),
    }


@dataclass
class BoardOptions(RoleOptions):
    enabled: bool = False
    image: str = PS_IMAGE  # TensorBoard needs no GPU and no data tooling
    memory: str = "1Gi"
    allowed_from: AllowedFrom = field(default_factory=AllowedFrom)


@dataclass
class StorageOptions:
    # Secret holding AZURE_STORAGE_* keys (`disttrain secret create` makes it from the local
    # environment); pods get the values by reference, never through a manifest.
    secret: str = ""
    # The storage account of an az:// location, as AZURE_STORAGE_ACCOUNT_NAME in the pods:
    # needed when they authenticate with workload identity (service_account) and no Secret.
    account_name: str = ""
    # Azure Files share mounted at /azure/<share> (file.csi.azure.com, inline with `secret`,
    # or through an existing PersistentVolumeClaim when azure_file_claim is set).
    azure_file_share: str = ""
    azure_file_claim: str = ""
    # Scratch at /mnt for staging data: an emptyDir (optional size limit), or a folder of the
    # node (the sample's ephemeral SSD) when host_path is set; hostPath breaks the
    # "restricted" Pod Security Standard, so it is opt-in.
    scratch_size_limit: str = ""
    scratch_host_path: str = ""

    RULES: ClassVar[dict[str, Rule]] = {
        "account_name": (
            Syntax(r"([a-z0-9]{3,24})?"),
            "an Azure storage account name: 3 to 24 lower-case letters and digits",
        ),
        "azure_file_share": (
            SHARE_NAME,
            "empty or an Azure Files share name: lower-case letters, digits and '-'",
        ),
        "scratch_size_limit": (
            Syntax(f"({kube_syntax.QUANTITY_PATTERN})?"),
            f"empty (no limit) or {kube_syntax.QUANTITY_ACCEPTED}",
        ),
        "scratch_host_path": (Syntax("(/.*)?"), "empty or an absolute path on the node"),
    }


@dataclass
class K8sOptions:
    # Empty: as kubectl does, the kubeconfig context's namespace, else "default".
    namespace: str = field(default="", metadata={"flag": "namespace"})
    # The kubeconfig context; empty: the current one (or in-cluster).
    context: str = field(default="", metadata={"flag": "context"})
    service_account: str = ""
    # Secrets of type kubernetes.io/dockerconfigjson for a private registry (none is needed
    # for an ACR attached to the AKS cluster).
    image_pull_secrets: list[str] = field(default_factory=list)
    port: int = 2222
    chief: RoleOptions = field(default_factory=RoleOptions)
    worker: RoleOptions = field(default_factory=RoleOptions)
    # A section given in YAML is built from its class defaults: the ps default lives there.
    ps: PsOptions = field(default_factory=PsOptions)
    evaluator: RoleOptions = field(default_factory=RoleOptions)
    tensorboard: BoardOptions = field(default_factory=BoardOptions)
    storage: StorageOptions = field(default_factory=StorageOptions)
    active_deadline_seconds: int = 0  # 0: no deadline
    ttl_seconds_after_finished: int = -1  # -1: keep the finished job's objects
    # Every pod's terminationGracePeriodSeconds, between SIGTERM and SIGKILL: the chief
    # publishes its last checkpoint within `train.preemption_checkpoint` of it.
    termination_grace_seconds: int = 30

    RULES: ClassVar[dict[str, Rule]] = {
        "namespace": (
            lambda v: v == "" or kube_syntax.is_namespace(v),
            f"empty (kubectl's: the context's namespace) or {kube_syntax.NAMESPACE_ACCEPTED}",
        ),
        "service_account": (
            Syntax(f"({kube_syntax.DNS_SUBDOMAIN_PATTERN})?", max_length=253),
            "empty or a ServiceAccount name (lower-case letters, digits, '-' and '.')",
        ),
        "port": (Syntax(minimum=1, maximum=65535), "a port from 1 to 65535"),
        "active_deadline_seconds": (Syntax(minimum=0), "an integer >= 0 (0: none)"),
        "ttl_seconds_after_finished": (Syntax(minimum=-1), "an integer >= -1 (-1: keep)"),
        "termination_grace_seconds": (Syntax(minimum=1), "an integer >= 1 (seconds)"),
        "image_pull_secrets": (
            kube_syntax.OBJECT_NAMES,
            "Secret names (lower-case letters, digits, '-' and '.')",
        ),
    }

    def role(self, name: str) -> RoleOptions:
        """The options of one role: chief, worker, ps, evaluator or tensorboard."""
        return getattr(self, name)
