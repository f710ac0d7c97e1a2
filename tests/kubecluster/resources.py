"""The resource types the test API server serves, and the discovery documents built from them.

One table drives routing, discovery (`/api`, `/apis`, `/apis/<group>/<version>`) and the
`kind` written into stored objects, so adding a type is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KUBERNETES_VERSION = "1.37"
GIT_VERSION = "v1.37.0-disttrain-testcluster"


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = field(default=())

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """`plural.group`, how the store names a type (and how kubectl spells it)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


CATEGORY_ALL = {"Pod", "Service", "Deployment", "ReplicaSet", "StatefulSet", "Job"}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

RESOURCES = [
    Resource("", "v1", "Namespace", "namespaces", False, ("status",), ("ns",)),
    Resource("", "v1", "Node", "nodes", False, ("status",), ("no",)),
    Resource("", "v1", "Pod", "pods", True, ("status", "log", "eviction"), ("po",)),
    Resource("", "v1", "Service", "services", True, ("status",), ("svc",)),
    Resource("", "v1", "Endpoints", "endpoints", True, (), ("ep",)),
    Resource("", "v1", "ConfigMap", "configmaps", True, (), ("cm",)),
    Resource("", "v1", "Secret", "secrets", True, ()),
    Resource("", "v1", "ServiceAccount", "serviceaccounts", True, (), ("sa",)),
    Resource(
        "", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("status",), ("pvc",)
    ),
    Resource("", "v1", "PersistentVolume", "persistentvolumes", False, ("status",), ("pv",)),
    Resource("", "v1", "Event", "events", True, (), ("ev",)),
    Resource("apps", "v1", "Deployment", "deployments", True, ("status", "scale"), ("deploy",)),
    Resource("apps", "v1", "ReplicaSet", "replicasets", True, ("status", "scale"), ("rs",)),
    Resource("apps", "v1", "StatefulSet", "statefulsets", True, ("status", "scale"), ("sts",)),
    Resource("batch", "v1", "Job", "jobs", True, ("status",)),
    Resource("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True, ("status",)),
    Resource("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    Resource("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings"),
    Resource("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    Resource("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False),
    Resource("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True, (), ("netpol",)),
]

BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}


def resource_of(api_version: str, kind: str) -> Resource:
    return BY_KIND[(api_version, kind)]


def version_info() -> dict:
    major, minor = KUBERNETES_VERSION.split(".")
    return {
        "major": major,
        "minor": minor,
        "gitVersion": GIT_VERSION,
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in groups.setdefault(r.group, []):
            groups[r.group].append(r.version)
    return groups


def _group_document(name: str, versions: list[str]) -> dict:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def api_versions(server_address: str) -> dict:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group_list() -> dict:
    groups = [_group_document(name, versions) for name, versions in _groups().items()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(name: str) -> dict | None:
    versions = _groups().get(name)
    return _group_document(name, versions) if versions else None


def api_resource_list(group: str, version: str) -> dict | None:
    served = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    if not served:
        return None
    entries = []
    for r in served:
        entries.append(
            {
                "name": r.plural,
                "singularName": r.kind.lower(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": VERBS,
                "shortNames": list(r.short_names),
                "categories": ["all"] if r.kind in CATEGORY_ALL else [],
            }
        )
        for sub in r.subresources:
            verbs = {"log": ["get"], "eviction": ["create"]}.get(sub, ["get", "patch", "update"])
            kind = {"log": "Pod", "scale": "Scale", "eviction": "Eviction"}.get(sub, r.kind)
            entry = {
                "name": f"{r.plural}/{sub}",
                "singularName": "",
                "kind": kind,
                "namespaced": r.namespaced,
                "verbs": verbs,
            }
            if sub == "eviction":  # served under the core path, typed policy/v1
                entry.update(group="policy", version="v1")
            entries.append(entry)
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }
