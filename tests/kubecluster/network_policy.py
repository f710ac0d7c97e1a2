"""NetworkPolicy in the test cluster: ingress filtering per pod, with nftables in its netns.

The semantics are the API's (https://kubernetes.io/docs/concepts/services-networking/
network-policies/, and the API reference of networking.k8s.io/v1 NetworkPolicySpec:
"Traffic is allowed to a pod if there are no NetworkPolicies selecting the pod OR if the
traffic source is the pod's local node, OR if the traffic matches at least one ingress rule
across all of the NetworkPolicy objects whose podSelector matches the pod"):

* A pod is isolated for ingress when a NetworkPolicy of its namespace selects it
  (`spec.podSelector`; `{}` selects every pod) and has "Ingress" in its `policyTypes`
  (left out: "Ingress", plus "Egress" when the policy has egress rules). A pod that no
  such policy selects accepts everything.
* An isolated pod accepts a connection that at least one ingress rule of those policies
  admits: the union, never a conflict. A policy with no ingress rules admits nothing.
* A rule admits a connection when its `from` admits the source (left out or empty: any
  source) and its `ports` the destination port (left out or empty: every port).
* A `from` peer: `podSelector` alone, the matching pods of the policy's namespace;
  `namespaceSelector` alone, every pod of the matching namespaces (by their labels, which
  include `kubernetes.io/metadata.name`, as a real API server sets it); both, the
  matching pods of the matching namespaces; `ipBlock`, its `cidr` but its `except` ranges.
  Selectors take matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist).
* A port: `protocol` (TCP unless given; TCP, UDP or SCTP), `port` as a number or as the
  name of one of the selected pod's container ports of that protocol (a name it does not
  have admits nothing on it), `endPort` for a range.
* Always admitted: the pod's own traffic ("a pod cannot block access to itself"), traffic
  from the node (198.18.0.1, the host through the cluster's gateway) and the replies to
  connections the pod opened (conntrack).

Not supported, and said so: egress (the launchers restrict none; a policy with "Egress"
in its policyTypes is enforced for ingress only, and a note is printed once per policy).

How: each pod's netns gets one nftables table, `inet disttrain_netpol`, whose input chain
drops what no rule admits; a pod no policy isolates has no table. The kubelet recomputes
the tables of every running pod whenever the API's state changes (a policy, a pod, an
address: `Kubelet.refresh_dns`) and once more as a pod gets its address, before any of
its containers starts (so its own table, and its peers' tables that admit it, are in place
when it first serves or connects). A table is only rewritten when its text changes, in one nft
transaction. It lives in the pod's netns and goes away with it: nothing is left behind.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .store import selector_matches

TABLE = "disttrain_netpol"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
LIVE_PHASES = ("Pending", "Running")


@dataclass(frozen=True)
class Source:
    """An address range that may connect: `network` but its `excepts`."""

    network: str
    excepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ports:
    """Destination ports `first`..`last` of one protocol."""

    protocol: str
    first: int
    last: int


@dataclass(frozen=True)
class Admission:
    """One ingress rule as it applies to one pod. None: any source / every port."""

    sources: tuple[Source, ...] | None
    ports: tuple[Ports, ...] | None


# ---------------------------------------------------------------- the API's semantics


def policy_types(policy: dict) -> list[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def _namespace_labels(namespace: dict) -> dict[str, str]:
    name = namespace["metadata"]["name"]
    return {**(namespace["metadata"].get("labels") or {}), NAMESPACE_NAME_LABEL: name}


def _live_address(pod: dict) -> str | None:
    status = pod.get("status") or {}
    return status.get("podIP") if status.get("phase") in LIVE_PHASES else None


def peer_sources(
    peer: dict, policy_namespace: str, pods: list[dict], namespaces: list[dict]
) -> list[Source]:
    """The addresses one `from` peer admits."""
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        return [Source(block["cidr"], tuple(block.get("except") or ()))]
    if "namespaceSelector" in peer:
        chosen = {
            ns["metadata"]["name"]
            for ns in namespaces
            if selector_matches(peer["namespaceSelector"], _namespace_labels(ns))
        }
    else:
        chosen = {policy_namespace}
    pod_selector = peer.get("podSelector", {})  # left out beside a namespaceSelector: all
    return [
        Source(f"{address}/32")
        for pod in pods
        if pod["metadata"]["namespace"] in chosen
        and selector_matches(pod_selector, pod["metadata"].get("labels"))
        and (address := _live_address(pod))
    ]


def rule_ports(rule: dict, pod: dict) -> tuple[Ports, ...] | None:
    """The destination ports a rule admits on `pod`; None: every port."""
    if not rule.get("ports"):
        return None
    found = []
    for entry in rule["ports"]:
        protocol = entry.get("protocol", "TCP")
        port = entry.get("port")
        if port is None:  # every port of the protocol
            found.append(Ports(protocol, 1, 65535))
            continue
        number = port if isinstance(port, int) else _named_port(pod, port, protocol)
        if number is not None:
            found.append(Ports(protocol, number, entry.get("endPort", number)))
    return tuple(found)


def _named_port(pod: dict, name: str, protocol: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == name and port.get("protocol", "TCP") == protocol:
                return port["containerPort"]
    return None


def ingress_admissions(
    pod: dict, pods: list[dict], policies: list[dict], namespaces: list[dict]
) -> list[Admission] | None:
    """What may reach `pod`: None when no policy isolates it, else the union of the rules
    of every policy that selects it (an empty list: nothing)."""
    namespace = pod["metadata"]["namespace"]
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == namespace
        and "Ingress" in policy_types(p)
        and selector_matches(
            (p.get("spec") or {}).get("podSelector", {}), pod["metadata"].get("labels")
        )
    ]
    if not selecting:
        return None
    found = []
    for policy in selecting:
        for rule in (policy.get("spec") or {}).get("ingress") or []:
            peers = rule.get("from") or []
            sources = (
                tuple(s for peer in peers for s in peer_sources(peer, namespace, pods, namespaces))
                if peers
                else None
            )
            found.append(Admission(sources, rule_ports(rule, pod)))
    return found


# ---------------------------------------------------------------- as nftables


def ruleset(admissions: list[Admission] | None, node_address: str) -> str:
    """The nft script that makes a pod's table say `admissions` ("" for no table)."""
    if admissions is None:
        return ""
    lines = [
        "ct state established,related accept",
        'iifname "lo" accept',  # the pod's own traffic, to itself: never blocked
        f"ip saddr {node_address} accept",  # the node: always allowed
    ]
    for admission in admissions:
        for match in _matches(admission):
            if f"{match} accept" not in lines:
                lines.append(f"{match} accept")
    body = "\n".join(f"        {line}" for line in lines)
    return (
        f"table inet {TABLE} {{\n"
        "    chain ingress {\n"
        "        type filter hook input priority filter; policy drop;\n"
        f"{body}\n"
        "    }\n"
        "}\n"
    )


def _matches(admission: Admission) -> Iterable[str]:
    """One nft match per (source, ports) pair the admission allows."""
    sources = [None] if admission.sources is None else list(admission.sources)
    ports = [None] if admission.ports is None else list(admission.ports)
    for source in sources:
        for port in ports:
            parts = [_source_match(source), _port_match(port)]
            yield " ".join(part for part in parts if part)


def _source_match(source: Source | None) -> str:
    if source is None:
        return ""
    network = ipaddress.ip_network(source.network, strict=False)
    family = "ip" if network.version == 4 else "ip6"
    match = f"{family} saddr {network}"
    if source.excepts:
        excepted = ", ".join(str(ipaddress.ip_network(e, strict=False)) for e in source.excepts)
        match += f" {family} saddr != {{ {excepted} }}"
    return match


def _port_match(ports: Ports | None) -> str:
    if ports is None:
        return ""
    span = str(ports.first) if ports.first == ports.last else f"{ports.first}-{ports.last}"
    return f"meta l4proto {ports.protocol.lower()} th dport {span}"


def script(text: str) -> str:
    """Replace the pod's table by `text` in one transaction (creating it first makes the
    delete safe when there is none)."""
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n{text}"


# ---------------------------------------------------------------- applied to the pods


class PolicyEnforcer:
    """Keeps each running pod's table what the policies say; `run_nft(netns, script)`
    applies a script inside a pod's netns (False: the netns is gone)."""

    def __init__(self, node_address: str, run_nft: Callable[[str, str], bool]):
        self.node_address, self.run_nft = node_address, run_nft
        self.applied: dict[str, str] = {}  # netns -> its table's text ("" for none)
        self.noted: set[tuple[str, str]] = set()

    def enforce(
        self,
        netns_of: dict[str, str],
        pods: list[dict],
        policies: list[dict],
        namespaces: list[dict],
    ) -> None:
        """`netns_of`: pod uid -> netns, for the pods running now."""
        self._note_unsupported(policies)
        by_uid = {p["metadata"]["uid"]: p for p in pods}
        for uid, netns in netns_of.items():
            if uid not in by_uid:
                continue
            admissions = ingress_admissions(by_uid[uid], pods, policies, namespaces)
            wanted = ruleset(admissions, self.node_address)
            if self.applied.get(netns, "") != wanted and self.run_nft(netns, script(wanted)):
                self.applied[netns] = wanted
        for netns in set(self.applied) - set(netns_of.values()):
            del self.applied[netns]  # its pod ended: the table went with the netns

    def _note_unsupported(self, policies: list[dict]) -> None:
        for policy in policies:
            key = (policy["metadata"]["namespace"], policy["metadata"]["name"])
            if "Egress" in policy_types(policy) and key not in self.noted:
                self.noted.add(key)
                print(
                    f"test cluster: NetworkPolicy {key[0]}/{key[1]}: egress is not enforced "
                    "here (ingress is)",
                    file=sys.stderr,
                )
