"""Pod networking: one Linux network namespace per pod, wired to a bridge, and hosts-file DNS.

Layout:

    netns <prefix>-sw          the "switch": bridge br0, one veth end per pod, no address
    netns <prefix>-<n>         a pod: lo + eth0 with one address from 198.18.0.0/15
    link <prefix>gw (optional) the gateway: a veth from the host's network namespace into
                               br0, host side 198.18.0.1/15 (`open_gateway`)

Without the gateway nothing is created in the host's own network namespace, and traffic only
ever reaches addresses this module created, inside namespaces it created. With it, the host
is the pods' node and their way out: a service listening on 198.18.0.1 (Azurite standing in
for Azure Storage, see external.py) is reached by pods and by the host at the same address.
Only one gateway can hold 198.18.0.1 on a machine: a lock file serialises test processes
that open one (the file stays; removing it could let two processes lock different files).
Names resolve through `/etc/netns/<netns>/hosts` (which `ip netns exec` bind-mounts
over /etc/hosts), following Kubernetes DNS: `<hostname>.<subdomain>.<ns>.svc.cluster.local`
for pods selected by a headless Service named `<subdomain>`, `<svc>.<ns>.svc.cluster.local`
for Services, each with the shorter forms a pod's DNS search path would accept.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from .store import selector_matches

POD_RANGE = ipaddress.ip_network("198.18.0.0/15")
GATEWAY_ADDRESS = str(next(POD_RANGE.hosts()))  # 198.18.0.1, never given to a pod
GATEWAY_LOCK = Path("/run/lock/disttrain-testcluster-gateway.lock")
GATEWAY_LOCK_TIMEOUT = 900.0  # another test process's gateway: wait for it, then fail
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


def host_links() -> list[str]:
    """Interface names in the host's network namespace (a veth shows as `name@ifN`)."""
    listed = ip("-o", "link", "show", check=False).stdout.splitlines()
    return [line.split(":")[1].strip().split("@")[0] for line in listed if ":" in line]


def remove_stale_gateways(family: str) -> None:
    """Delete gateway links `<family><pid>...gw` left by a test process that no longer runs.

    Deleting a stale switch namespace usually takes its gateway with it (deleting one end of
    a veth deletes both); this covers the host end surviving it.
    """
    for name in host_links():
        match = re.fullmatch(rf"{re.escape(family)}(\d+)c\d+gw", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            ip("link", "del", name, check=False)


class PodNetwork:
    def __init__(self, prefix: str, family: str):
        """`prefix` names everything this network creates; it is `family<pid>-...`."""
        self.prefix, self.family = prefix, family
        self.switch = f"{prefix}-sw"
        self.hosts = iter(POD_RANGE.hosts())
        next(self.hosts)  # .0.1 is the gateway's (open_gateway), never a pod's
        self.gateway: str | None = None  # the host end's name once opened
        self.gateway_lock: int | None = None
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

    def run_nft(self, netns: str, script: str) -> bool:
        """Run an nft script inside a pod's namespace; False if that namespace is gone
        (network_policy.py keeps the pods' ingress tables with it)."""
        with self.lock:
            if netns not in self.namespaces:
                return False
            result = subprocess.run(
                ["ip", "netns", "exec", netns, "nft", "-f", "-"],
                input=script,
                capture_output=True,
                text=True,
            )
        if result.returncode != 0:
            raise RuntimeError(f"nft in {netns} failed: {result.stderr}\n{script}")
        return True

    def write_dns(self, netns: str, viewer: dict, pods: list[dict], services: list[dict]) -> None:
        """The pod's hosts and resolv.conf, if its namespace still exists."""
        with self.lock:
            if netns not in self.namespaces or not (NETNS_DIR / netns).is_dir():
                return
            folder = NETNS_DIR / netns
            write_in_place(folder / "hosts", hosts_file(viewer, pods, services))
            write_in_place(folder / "resolv.conf", resolv_conf(viewer["metadata"]["namespace"]))

    def open_gateway(self) -> str:
        """Wire the host into the bridge as 198.18.0.1/15 (idempotent); returns the address.

        Pods then reach a host service that listens on that address, as pods reach the
        world through their node; the host reaches it there too.
        """
        if self.gateway:
            return GATEWAY_ADDRESS
        self.gateway_lock = _hold_gateway_lock()
        remove_stale_gateways(self.family)  # a killed holder's link still has the address
        host_end = self.prefix.replace("-", "") + "gw"  # dtk<pid>c<n>gw: <= 15 characters
        try:
            holder = _link_holding(GATEWAY_ADDRESS)
            if holder:
                raise RuntimeError(
                    f"cannot open the test cluster's gateway: {GATEWAY_ADDRESS} is already "
                    f"on host link {holder!r}, which is not a stale test-cluster gateway"
                )
            ip("link", "add", host_end, "type", "veth", "peer", "name", "gw", "netns", self.switch)
            self.gateway = host_end
            ip("-n", self.switch, "link", "set", "gw", "master", "br0", "up")
            ip("addr", "add", f"{GATEWAY_ADDRESS}/{POD_RANGE.prefixlen}", "dev", host_end)
            ip("link", "set", host_end, "up")
        except BaseException:
            self.close_gateway()
            raise
        return GATEWAY_ADDRESS

    def close_gateway(self) -> None:
        if self.gateway:
            ip("link", "del", self.gateway, check=False)  # also deletes its peer in br0
            self.gateway = None
        if self.gateway_lock is not None:
            os.close(self.gateway_lock)  # closing the descriptor releases the lock
            self.gateway_lock = None

    def close(self) -> None:
        self.close_gateway()
        for netns in list(reversed(self.namespaces)):
            self.detach(netns)
        if self.created_netns_dir and NETNS_DIR.exists() and not any(NETNS_DIR.iterdir()):
            NETNS_DIR.rmdir()


def _hold_gateway_lock() -> int:
    """An exclusive lock on GATEWAY_LOCK, held until its descriptor is closed.

    The kernel releases it when the holder exits, however it exits: a killed test process
    never blocks the next one.
    """
    GATEWAY_LOCK.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(GATEWAY_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + GATEWAY_LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
                os.close(descriptor)
                raise RuntimeError(
                    f"cannot open the test cluster's gateway: {GATEWAY_LOCK} is held by "
                    f"process {holder or '?'} for over {GATEWAY_LOCK_TIMEOUT:.0f} s"
                ) from None
            time.sleep(1.0)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, str(os.getpid()).encode(), 0)
    return descriptor


def _link_holding(address: str) -> str | None:
    """The host link that has `address`, if any."""
    listed = ip("-o", "-4", "addr", "show", check=False).stdout.splitlines()
    for line in listed:
        fields = line.split()
        if len(fields) > 3 and fields[3].split("/")[0] == address:
            return fields[1]
    return None


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
    # As the EndpointSlice controller (k8s.io/endpointslice, podToEndpoint): a terminal pod
    # leaves DNS; a terminating one stays "ready" only under publishNotReadyAddresses.
    live = [
        p
        for p in pods
        if p.get("status", {}).get("podIP") and p["status"].get("phase") in ("Pending", "Running")
    ]
    for svc in services:
        svc_ns, spec = svc["metadata"]["namespace"], svc.get("spec", {})
        publish_all = spec.get("publishNotReadyAddresses", False)
        selected = [
            p
            for p in live
            if p["metadata"]["namespace"] == svc_ns
            and spec.get("selector")
            and selector_matches({"matchLabels": spec["selector"]}, p["metadata"].get("labels"))
            and (publish_all or (_ready(p) and not p["metadata"].get("deletionTimestamp")))
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
    if shutil.which("nft") is None:
        return "the test cluster needs `nft` (nftables) to enforce NetworkPolicy: make netns-tools"
    return None
