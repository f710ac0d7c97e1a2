"""Pod networking: one Linux network namespace per pod, wired to a bridge, and hosts-file DNS.

Layout (nothing is created in the host's own network namespace):

    netns <prefix>-sw          the "switch": bridge br0, one veth end per pod, no address
    netns <prefix>-<n>         a pod: lo + eth0 with one address from 198.18.0.0/15

Traffic therefore only ever reaches addresses this module created, inside namespaces it
created. Names resolve through `/etc/netns/<netns>/hosts` (which `ip netns exec` bind-mounts
over /etc/hosts), following Kubernetes DNS: `<hostname>.<subdomain>.<ns>.svc.cluster.local`
for pods selected by a headless Service named `<subdomain>`, `<svc>.<ns>.svc.cluster.local`
for Services, each with the shorter forms a pod's DNS search path would accept.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import threading
from pathlib import Path

from .store import selector_matches

POD_RANGE = ipaddress.ip_network("198.18.0.0/15")
NETNS_DIR = Path("/etc/netns")
CLUSTER_DOMAIN = "cluster.local"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_names() -> list[str]:
    listed = ip("netns", "list", check=False).stdout.splitlines()
    return [line.split()[0] for line in listed if line.strip()]


def remove_stale_namespaces(family: str) -> None:
    """Delete namespaces `<family><pid>-...` left by a test process that no longer runs."""
    leftovers = set(netns_names())
    if NETNS_DIR.exists():
        leftovers |= {folder.name for folder in NETNS_DIR.iterdir()}
    for name in sorted(leftovers):
        if not name.startswith(family):
            continue
        pid = name[len(family) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            ip("netns", "del", name, check=False)
            shutil.rmtree(NETNS_DIR / name, ignore_errors=True)


class PodNetwork:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.hosts = iter(POD_RANGE.hosts())
        next(self.hosts)  # .0.1 stays unused, like a gateway address
        self.counter = 0
        self.created_netns_dir = not NETNS_DIR.exists()
        self.namespaces: list[str] = []
        self.lock = threading.Lock()
        ip("netns", "add", self.switch)
        self.namespaces.append(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")

    def attach(self) -> tuple[str, str]:
        """A new pod namespace wired to the bridge: (netns name, pod IP)."""
        self.counter += 1
        netns, port = f"{self.prefix}-{self.counter}", f"p{self.counter}"
        address = str(next(self.hosts))
        ip("netns", "add", netns)
        self.namespaces.append(netns)
        ip(
            "-n",
            self.switch,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
        )
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", netns, "addr", "add", f"{address}/{POD_RANGE.prefixlen}", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        # Both files must exist before a container starts: `ip netns exec` bind-mounts only
        # the files present then, and later rewrites keep these very inodes.
        (NETNS_DIR / netns).mkdir(parents=True, exist_ok=True)
        for name in ("hosts", "resolv.conf"):
            (NETNS_DIR / netns / name).touch()
        return netns, address

    def detach(self, netns: str) -> None:
        with self.lock:  # no hosts file is being (re)written into the folder meanwhile
            if netns in self.namespaces:
                self.namespaces.remove(netns)
            ip("netns", "del", netns, check=False)  # also deletes its veth pair
            shutil.rmtree(NETNS_DIR / netns, ignore_errors=True)

    def write_dns(self, netns: str, viewer: dict, pods: list[dict], services: list[dict]) -> None:
        """The pod's hosts and resolv.conf, if its namespace still exists."""
        with self.lock:
            if netns not in self.namespaces or not (NETNS_DIR / netns).is_dir():
                return
            folder = NETNS_DIR / netns
            write_in_place(folder / "hosts", hosts_file(viewer, pods, services))
            write_in_place(folder / "resolv.conf", resolv_conf(viewer["metadata"]["namespace"]))

    def close(self) -> None:
        for netns in list(reversed(self.namespaces)):
            self.detach(netns)
        if self.created_netns_dir and NETNS_DIR.exists() and not any(NETNS_DIR.iterdir()):
            NETNS_DIR.rmdir()


def write_in_place(path: Path, content: str) -> None:
    """Rewrite a file keeping its inode: `ip netns exec` bind-mounted this very inode."""
    if path.exists() and path.read_text() == content:
        return
    with open(path, "a+") as handle:
        handle.seek(0)
        handle.truncate()
        handle.write(content)


def _names(base: str, namespace: str, same_namespace: bool) -> list[str]:
    names = [
        f"{base}.{namespace}.svc.{CLUSTER_DOMAIN}",
        f"{base}.{namespace}.svc",
        f"{base}.{namespace}",
    ]
    return names + [base] if same_namespace else names


def _ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def hosts_file(viewer: dict, pods: list[dict], services: list[dict]) -> str:
    """The /etc/hosts a pod sees: itself, localhost, then cluster DNS for Services and pods."""
    namespace = viewer["metadata"]["namespace"]
    own_ip = viewer["status"].get("podIP")
    own_name = viewer["spec"].get("hostname") or viewer["metadata"]["name"]
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    live = [
        p
        for p in pods
        if p.get("status", {}).get("podIP")
        and p["status"].get("phase") in ("Pending", "Running")
        and not p["metadata"].get("deletionTimestamp")
    ]  # terminating pods leave DNS
    for svc in services:
        svc_ns, spec = svc["metadata"]["namespace"], svc.get("spec", {})
        publish_all = spec.get("publishNotReadyAddresses", False)
        selected = [
            p
            for p in live
            if p["metadata"]["namespace"] == svc_ns
            and spec.get("selector")
            and selector_matches({"matchLabels": spec["selector"]}, p["metadata"].get("labels"))
            and (publish_all or _ready(p))
        ]
        same = svc_ns == namespace
        svc_names = " ".join(_names(svc["metadata"]["name"], svc_ns, same))
        # No kube-proxy: a ClusterIP name resolves to its first pod (ports must then match).
        targets = selected if spec.get("clusterIP") == "None" else selected[:1]
        lines += [f"{p['status']['podIP']}\t{svc_names}" for p in targets]
        if spec.get("clusterIP") == "None":
            for p in selected:
                if p["spec"].get("subdomain") == svc["metadata"]["name"] and p["spec"].get(
                    "hostname"
                ):
                    host = f"{p['spec']['hostname']}.{svc['metadata']['name']}"
                    lines.append(f"{p['status']['podIP']}\t" + " ".join(_names(host, svc_ns, same)))
    if own_ip:
        lines.insert(2, f"{own_ip}\t{own_name}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    # Nothing listens on the pod's own 127.0.0.1:53, so unknown names fail at once and
    # no query leaves the pod's namespace.
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\nnameserver 127.0.0.1\noptions ndots:5\n"


def running_as_root_with_ip() -> str | None:
    """Why the cluster cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the test cluster needs root (network namespaces, bind mounts)"
    if shutil.which("ip") is None:
        return "the test cluster needs `ip` (iproute2) to create network namespaces"
    return None
