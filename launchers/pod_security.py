"""The Kubernetes "restricted" Pod Security Standard, checked on manifests before they are sent.

A namespace labelled `pod-security.kubernetes.io/enforce: restricted` rejects pods that
break these rules; checking them here turns a rejected submission into a clear message,
and lets the tests prove every rendered pod complies. The controls follow the standard's
definition (kubernetes.io/docs/concepts/security/pod-security-standards, baseline + restricted).
"""

from __future__ import annotations

ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
}


def pod_spec_of(obj: dict) -> dict | None:
    """The pod spec inside a Pod, Job, Deployment, StatefulSet, ... (None for other kinds)."""
    if obj.get("kind") == "Pod":
        return obj.get("spec")
    return (obj.get("spec") or {}).get("template", {}).get("spec")


def restricted_violations(obj: dict) -> list[str]:
    """Every way the object's pod breaks the restricted standard; empty when it complies."""
    pod = pod_spec_of(obj)
    if pod is None:
        return []
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    found = [f"{where}: {problem}" for problem in _pod_violations(pod)]
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        found += [
            f"{where} container {container['name']}: {problem}"
            for problem in _container_violations(container, pod.get("securityContext") or {})
        ]
    return found


def _pod_violations(pod: dict) -> list[str]:
    found = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"{field} must not be true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} uses {', '.join(sorted(kinds))}")
    context = pod.get("securityContext") or {}
    if context.get("runAsUser") == 0:
        found.append("securityContext.runAsUser must not be 0")
    for sysctl in context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']} is not allowed")
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp not in (None, "RuntimeDefault", "Localhost"):
        found.append("securityContext.seccompProfile.type must be RuntimeDefault or Localhost")
    return found


def _container_violations(container: dict, pod_context: dict) -> list[str]:
    context = container.get("securityContext") or {}
    found = []
    if context.get("privileged"):
        found.append("privileged must not be true")
    if context.get("allowPrivilegeEscalation") is not False:
        found.append("securityContext.allowPrivilegeEscalation must be false")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in capabilities.get("drop", []):
        found.append("securityContext.capabilities.drop must include ALL")
    added = set(capabilities.get("add", [])) - ALLOWED_ADDED_CAPABILITIES
    if added:
        found.append(f"capabilities {', '.join(sorted(added))} must not be added")
    if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
        found.append("runAsNonRoot must be true (in the pod or the container)")
    if context.get("runAsUser") == 0:
        found.append("securityContext.runAsUser must not be 0")
    seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        found.append("seccompProfile.type must be RuntimeDefault or Localhost")
    if any(port.get("hostPort") for port in container.get("ports", [])):
        found.append("hostPort must not be used")
    proc_mount = context.get("procMount")
    if proc_mount not in (None, "Default"):
        found.append("procMount must be Default")
    return found
