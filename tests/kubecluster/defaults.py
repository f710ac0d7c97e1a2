"""What a real API server fills in on create, for the fields our controllers and clients read."""

from __future__ import annotations

import ipaddress
import itertools

from .resources import Resource

# Service cluster IPs come from the test range too; nothing listens on them (there is no
# kube-proxy): the cluster's hosts files resolve a Service name to its pods instead.
_CLUSTER_IPS = (str(ipaddress.ip_address("198.19.255.1") + i) for i in itertools.count())
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def apply_defaults(res: Resource, obj: dict) -> None:
    setter = {
        "Pod": _pod,
        "Job": _job,
        "Service": _service,
        "Namespace": _namespace,
        "PersistentVolumeClaim": _claim,
        "Deployment": _deployment,
        "ReplicaSet": _replica_set,
    }.get(res.kind)
    if setter:
        setter(obj)


def _pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        container.setdefault("imagePullPolicy", "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")


def _pod(obj: dict) -> None:
    _pod_spec(obj.setdefault("spec", {}))
    obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}


def _job(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    if spec.get("backoffLimitPerIndex") is None:
        spec.setdefault("backoffLimit", 6)
    if not spec.get("manualSelector"):
        uid, name = obj["metadata"]["uid"], obj["metadata"]["name"]
        spec["selector"] = {"matchLabels": {JOB_UID_LABEL: uid}}
        labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})
        labels.update(
            {JOB_UID_LABEL: uid, JOB_NAME_LABEL: name, "controller-uid": uid, "job-name": name}
        )
    _pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))
    obj["status"] = {}


def _service(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if not spec.get("clusterIP"):
        spec["clusterIP"] = next(_CLUSTER_IPS)
    spec["clusterIPs"] = [spec["clusterIP"]]
    for port in spec.get("ports", []):
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port["port"])
    obj["status"] = {"loadBalancer": {}}


def _namespace(obj: dict) -> None:
    obj["spec"] = {"finalizers": ["kubernetes"]}
    obj["status"] = {"phase": "Active"}


def _claim(obj: dict) -> None:
    obj["status"] = {"phase": "Bound", "accessModes": obj.get("spec", {}).get("accessModes", [])}


def _deployment(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault(
        "strategy",
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
    )
    _pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))
    obj["status"] = {}


def _replica_set(obj: dict) -> None:
    _pod_spec(obj.setdefault("spec", {}).setdefault("template", {}).setdefault("spec", {}))
    obj["status"] = {"replicas": 0}
