"""Which cluster and namespace a command means, read from the kubeconfig as kubectl does.

`--context` or the current context picks the cluster; the namespace is `--namespace` or
launcher.k8s.namespace, else the context's, else the pod's own when running in a cluster,
else "default" — for `train` and its dry run as for every other verb, so `stop` finds what
`train` made. Only files are read here; the `kubernetes` package is imported when called.
A missing context, a broken file or no cluster at all is a LauncherError that says which.
"""

from __future__ import annotations

import os
from dataclasses import replace

import yaml

from disttrain.extras import K8S_MODULES, require
from launchers import LauncherError
from launchers.k8s_options import K8sOptions


def load_cluster_config(context: str | None) -> str:
    """Load the kubeconfig (or the in-cluster account); return its default namespace."""
    require("k8s", K8S_MODULES, "the k8s and helm launchers")
    from kubernetes import config as kube_config

    if not _kubeconfig_exists() and not context:
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            raise LauncherError(
                "no Kubernetes cluster: no kubeconfig (KUBECONFIG or ~/.kube/config) "
                "and not running inside a cluster"
            ) from None
        return _in_cluster_namespace()
    namespace = default_namespace(context)  # a missing context or a bad file is named here
    try:
        kube_config.load_kube_config(_kubeconfig_path(), context=context or None)
    except _kubeconfig_errors() as exc:
        raise LauncherError(f"kubeconfig {_kubeconfig_path()}: {exc}") from None
    return namespace


def default_namespace(context: str | None) -> str:
    """kubectl's default: the context's namespace (the current context's when `context` is
    empty), else the pod's own in a cluster, else "default". Reads files only."""
    require("k8s", K8S_MODULES, "the k8s and helm launchers")
    from kubernetes import config as kube_config

    if not _kubeconfig_exists():
        if context:
            raise LauncherError(
                f"kubeconfig context {context!r}: there is no kubeconfig "
                f"({_kubeconfig_path()}; KUBECONFIG sets another)"
            )
        return _in_cluster_namespace()
    try:
        contexts, active = kube_config.list_kube_config_contexts(_kubeconfig_path())
    except _kubeconfig_errors() as exc:
        raise LauncherError(f"kubeconfig {_kubeconfig_path()} cannot be used: {exc}") from None
    if context:
        active = next((c for c in contexts or [] if c.get("name") == context), None)
        if active is None:
            raise LauncherError(f"kubeconfig context {context!r} does not exist{_contexts_named()}")
    return ((active or {}).get("context") or {}).get("namespace") or "default"


def with_namespace(k8s: K8sOptions) -> K8sOptions:
    """`k8s` with its namespace filled in when it is empty (kubectl's default)."""
    if k8s.namespace:
        return k8s
    return replace(k8s, namespace=default_namespace(k8s.context or None))


def _kubeconfig_path() -> str:
    """KUBECONFIG as it is now (the client reads it once, when it is first imported)."""
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def _kubeconfig_exists() -> bool:
    """Whether any file KUBECONFIG lists (or ~/.kube/config) is there."""
    return any(os.path.exists(path) for path in _kubeconfig_path().split(os.pathsep) if path)


def _contexts_named() -> str:
    from kubernetes import config as kube_config

    try:
        contexts, _ = kube_config.list_kube_config_contexts(_kubeconfig_path())
    except _kubeconfig_errors():
        return ""
    return "; contexts in the kubeconfig: " + ", ".join(c["name"] for c in contexts)


def _kubeconfig_errors() -> tuple[type[BaseException], ...]:
    from kubernetes.config import ConfigException

    return (ConfigException, OSError, TypeError, ValueError, AttributeError, yaml.YAMLError)


def _in_cluster_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    return open(path).read().strip() if os.path.exists(path) else "default"
