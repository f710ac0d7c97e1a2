"""Network partitions on the test cluster: nftables rules in one pod's network namespace.

A partition drops packets silently, in both directions, as a pulled cable or a broken route
does: no RST, no ICMP, so TCP on either side learns nothing but silence, and every call in
flight waits for its deadline (if it has one) or for the network to come back. The rules
live in a table of their own (`TABLE`) in the pod's netns (network.py's `<prefix>-<n>`), so
nothing else on the machine is touched: `partitioned` heals the partition when its block
ends, however it ends, and a pod that is replaced meanwhile takes its netns, and the rules,
with it.

    with partitioned(cluster, namespace, worker_pod, peers=[ps_ip]):   # worker <-/-> ps
        ...
    with partitioned(cluster, namespace, chief_pod):                   # chief <-/-> everyone
        ...
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

TABLE = "disttrain_partition"


def netns_of(cluster, namespace: str, pod_name: str) -> str:
    """The network namespace the kubelet gave a running pod (network.py names it)."""
    for runner in list(cluster.kubelet.runners.values()):
        if (runner.namespace, runner.name) == (namespace, pod_name) and runner.netns:
            return runner.netns
    raise LookupError(f"pod {namespace}/{pod_name} has no network namespace (not running?)")


def ruleset(peers: list[str] | None) -> str:
    """An nft script: drop what comes from or goes to `peers` (IPv4 addresses), or, with
    None, everything but loopback."""
    if peers is None:
        match_in, match_out = 'iifname != "lo"', 'oifname != "lo"'
    else:
        addresses = ", ".join(peers)
        match_in, match_out = f"ip saddr {{ {addresses} }}", f"ip daddr {{ {addresses} }}"
    return (
        f"table inet {TABLE} {{\n"
        f"  chain input {{ type filter hook input priority -10; policy accept; "
        f"{match_in} counter drop; }}\n"
        f"  chain output {{ type filter hook output priority -10; policy accept; "
        f"{match_out} counter drop; }}\n"
        "}\n"
    )


def nft(netns: str, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
    )


def cut(netns: str, peers: list[str] | None = None) -> None:
    result = nft(netns, "-f", "-", script=ruleset(peers))
    if result.returncode != 0:
        raise RuntimeError(f"nft in {netns}: {result.stderr.strip()}")


def heal(netns: str) -> None:
    """Remove the partition's table; a namespace already gone (its pod ended) has none."""
    result = nft(netns, "delete", "table", "inet", TABLE)
    if result.returncode != 0 and netns_exists(netns) and has_table(netns):
        raise RuntimeError(f"could not heal the partition in {netns}: {result.stderr.strip()}")


def has_table(netns: str) -> bool:
    return nft(netns, "list", "table", "inet", TABLE).returncode == 0


def dropped(netns: str) -> int:
    """Packets the partition has dropped so far (both directions), 0 once healed."""
    listed = nft(netns, "list", "table", "inet", TABLE).stdout
    return sum(int(word) for word in _counts(listed))


def _counts(listed: str) -> list[str]:
    words = listed.split()
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "packets"]


def netns_exists(netns: str) -> bool:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split()[0] == netns for line in listed.splitlines() if line.strip())


@contextmanager
def partitioned(
    cluster, namespace: str, pod_name: str, peers: list[str] | None = None
) -> Iterator[str]:
    """Cut pod `pod_name` off from `peers` (pod IPs), or from everyone with None, for the
    block; yields its netns. Healed on the way out, also when the block raised."""
    netns = netns_of(cluster, namespace, pod_name)
    cut(netns, peers)
    try:
        yield netns
    finally:
        heal(netns)
