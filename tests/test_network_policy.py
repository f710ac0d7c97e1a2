"""The test cluster's NetworkPolicy rules (tests/kubecluster/network_policy.py): policies and
pods in, the sources and ports each pod admits out, and the nftables text that says so.

No cluster and no root: the rule builder alone, fed the launcher's own policies and pods
labelled as the launcher labels them. The cluster enforcing them is
tests/test_e2e_network_policy.py.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from kubecluster.network_policy import (
    Admission,
    Ports,
    Source,
    ingress_admissions,
    ruleset,
    script,
)

from launchers import load_job
from launchers.k8s_objects import job_objects
from launchers.kubernetes import plan_job

NODE = "198.18.0.1"


def launcher_objects(name: str, namespace: str, *overrides: str) -> list[dict]:
    config, launcher = load_job(
        None,
        [
            f"name={name}",
            "run_dir=/azure/tfshare/runs/x",
            "launcher.name=k8s",
            f"launcher.k8s.namespace={namespace}",
            "launcher.k8s.storage.azure_file_share=tfshare",
            "launcher.k8s.storage.secret=azure-storage",
            *overrides,
        ],
    )
    return job_objects(config, launcher.options["k8s"])


def policies_of(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def pod(name: str, namespace: str, labels: dict, address: str, ports: tuple = ()) -> dict:
    """A running pod as the API server stores it."""
    container = {"name": "main", "ports": [dict(p) for p in ports]}
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": name, "labels": labels},
        "spec": {"containers": [container]},
        "status": {"phase": "Running", "podIP": address},
    }


def pods_of_job(objects: list[dict], namespace: str, first_address: int) -> list[dict]:
    """One running pod per Job and Deployment of the launcher's objects, with their labels."""
    found = []
    for number, obj in enumerate(o for o in objects if o["kind"] in ("Job", "Deployment")):
        template = obj["spec"]["template"]
        (container,) = template["spec"]["containers"]
        found.append(
            pod(
                obj["metadata"]["name"],
                namespace,
                template["metadata"]["labels"],
                f"198.18.1.{first_address + number}",
                tuple(container.get("ports", [])),
            )
        )
    return found


NAMESPACES = [
    {"metadata": {"name": "ml"}},
    {"metadata": {"name": "other", "labels": {"team": "b"}}},
]


def by_name(pods: list[dict]) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in pods}


def test_the_training_port_admits_only_the_same_jobs_training_pods():
    mine = launcher_objects("alpha", "ml", "cluster.workers=2", "cluster.ps=1")
    theirs = launcher_objects("beta", "ml", "cluster.workers=1", "cluster.ps=1")
    elsewhere = launcher_objects("alpha", "other", "cluster.workers=1", "cluster.ps=1")
    pods = [
        *pods_of_job(mine, "ml", 10),
        *pods_of_job(theirs, "ml", 30),
        *pods_of_job(elsewhere, "other", 50),
    ]
    policies = policies_of(mine) + policies_of(theirs) + policies_of(elsewhere)
    named = by_name([p for p in pods if p["metadata"]["namespace"] == "ml"])
    training = ("alpha", "alpha-worker-0", "alpha-worker-1", "alpha-ps-0")
    (admission,) = ingress_admissions(named["alpha-ps-0"], pods, policies, NAMESPACES)
    assert admission.ports == (Ports("TCP", 2222, 2222),)
    # The job's chief, workers and ps; not its evaluator, not beta's pods, and not the pods
    # of a job of the same name in another namespace.
    assert set(admission.sources) == {Source(f"{named[n]['status']['podIP']}/32") for n in training}
    # The evaluator serves no port and no policy selects it: it stays open.
    assert ingress_admissions(named["alpha-evaluator-0"], pods, policies, NAMESPACES) is None


def test_tensorboard_admits_what_allowed_from_says_and_nothing_when_all_is_off():
    board = [
        "launcher.k8s.tensorboard.enabled=true",
        "launcher.k8s.tensorboard.allowed_from.namespaces=[other]",
        "launcher.k8s.tensorboard.allowed_from.cidrs=[10.20.0.0/16]",
    ]
    objects = launcher_objects("alpha", "ml", *board)
    pods = pods_of_job(objects, "ml", 10) + [
        pod("stranger", "other", {"x": "y"}, "198.18.2.1"),
        pod("third", "third", {}, "198.18.2.2"),
    ]
    named = by_name(pods)
    (admission,) = ingress_admissions(
        named["alpha-tensorboard"], pods, policies_of(objects), NAMESPACES
    )
    in_ml = {
        Source(f"{p['status']['podIP']}/32") for p in pods if p["metadata"]["namespace"] == "ml"
    }
    assert set(admission.sources) == in_ml | {Source("198.18.2.1/32"), Source("10.20.0.0/16")}
    assert admission.ports == (Ports("TCP", 6006, 6006),)

    closed = launcher_objects(
        "alpha",
        "ml",
        "launcher.k8s.tensorboard.enabled=true",
        "launcher.k8s.tensorboard.allowed_from.same_namespace=false",
    )
    (policy,) = [p for p in policies_of(closed) if p["metadata"]["name"] == "alpha-tensorboard"]
    assert policy["spec"]["ingress"] == []  # a rule without `from` would admit everyone
    assert ingress_admissions(named["alpha-tensorboard"], pods, [policy], NAMESPACES) == []


def test_the_dry_run_shows_the_policies_before_any_pod_but_the_chiefs():
    config, launcher = load_job(
        None,
        [
            "name=alpha",
            "run_dir=/azure/tfshare/runs/x",
            "launcher.name=k8s",
            "launcher.k8s.namespace=ml",
            "launcher.k8s.storage.azure_file_share=tfshare",
            "launcher.k8s.storage.secret=azure-storage",
            "launcher.k8s.tensorboard.enabled=true",
        ],
    )
    printed = [
        d for d in yaml.safe_load_all(plan_job(config, launcher.options["k8s"]).render()) if d
    ]
    kinds = [(d["kind"], d["metadata"]["name"]) for d in printed]
    # The chief's Job first (every other object's owner), then the training pods' policy;
    # TensorBoard's policy before its Deployment.
    assert kinds[:2] == [("Job", "alpha"), ("NetworkPolicy", "alpha")]
    board = kinds.index(("NetworkPolicy", "alpha-tensorboard"))
    assert board < kinds.index(("Deployment", "alpha-tensorboard"))
    assert printed[board]["spec"]["ingress"] == [
        {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 6006}]}
    ]


def test_bad_allowed_from_values_are_refused_with_their_key():
    from disttrain.config import ConfigError

    with pytest.raises(ConfigError) as error:
        launcher_objects(
            "alpha",
            "ml",
            "launcher.k8s.tensorboard.allowed_from.cidrs=[10.0.0.0/33]",
            "launcher.k8s.tensorboard.allowed_from.namespaces=[Bad_NS]",
        )
    assert "launcher.k8s.tensorboard.allowed_from.cidrs: got ['10.0.0.0/33']" in str(error.value)
    assert "launcher.k8s.tensorboard.allowed_from.namespaces: got ['Bad_NS']" in str(error.value)


def test_api_semantics_union_selectors_named_ports_and_ip_blocks():
    target = pod(
        "db",
        "ml",
        {"role": "db"},
        "198.18.3.1",
        ({"name": "sql", "containerPort": 5432, "protocol": "TCP"},),
    )
    client = pod("api", "ml", {"role": "api", "tier": "front"}, "198.18.3.2")
    batch = pod("batch", "ml", {"role": "batch"}, "198.18.3.3")
    remote = pod("remote", "other", {"role": "api"}, "198.18.3.4")
    done = {**pod("gone", "ml", {"role": "api"}, "198.18.3.5"), "status": {"phase": "Succeeded"}}
    pods = [target, client, batch, remote, done]

    def policy(name: str, spec: dict, namespace: str = "ml") -> dict:
        return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}

    select_db = {"matchLabels": {"role": "db"}}
    policies = [
        # Named port; matchExpressions; a pod that ended is no source.
        policy(
            "api",
            {
                "podSelector": select_db,
                "ingress": [
                    {
                        "from": [
                            {
                                "podSelector": {
                                    "matchExpressions": [
                                        {"key": "role", "operator": "In", "values": ["api"]}
                                    ]
                                }
                            }
                        ],
                        "ports": [{"port": "sql"}, {"port": "nosuchport"}],
                    }
                ],
            },
        ),
        # Both selectors in one peer: the matching pods of the matching namespaces (AND).
        policy(
            "team-b",
            {
                "podSelector": select_db,
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"team": "b"}},
                                "podSelector": {"matchLabels": {"role": "api"}},
                            },
                            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                        ],
                        "ports": [{"protocol": "UDP", "port": 9000, "endPort": 9010}],
                    }
                ],
            },
        ),
        # Another namespace's policy never selects a pod of this one; an egress-only
        # policy isolates nothing for ingress.
        policy("elsewhere", {"podSelector": {}, "ingress": []}, namespace="other"),
        policy("egress", {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}),
    ]
    admissions = ingress_admissions(target, pods, policies, NAMESPACES)
    assert admissions == [
        Admission((Source("198.18.3.2/32"),), (Ports("TCP", 5432, 5432),)),
        Admission(
            (Source("198.18.3.4/32"), Source("10.0.0.0/8", ("10.1.0.0/16",))),
            (Ports("UDP", 9000, 9010),),
        ),
    ]
    # No ingress policy selects the batch pod; a policy with no rules admits nothing.
    assert ingress_admissions(batch, pods, policies, NAMESPACES) is None
    assert ingress_admissions(remote, pods, policies, NAMESPACES) == []
    # A rule without `from` or `ports` admits every source on every port.
    open_rule = [policy("open", {"podSelector": {}, "ingress": [{}]})]
    assert ingress_admissions(batch, pods, open_rule, NAMESPACES) == [Admission(None, None)]

    text = ruleset(admissions, NODE)
    assert "policy drop;" in text and f"ip saddr {NODE} accept" in text
    assert "ip saddr 198.18.3.2/32 meta l4proto tcp th dport 5432 accept" in text
    assert (
        "ip saddr 10.0.0.0/8 ip saddr != { 10.1.0.0/16 } meta l4proto udp th dport 9000-9010 "
        "accept" in text
    )
    assert ruleset(None, NODE) == ""


def test_nft_accepts_the_rulesets_it_is_given():
    """`nft --check` parses what the enforcer would load (no table is created)."""
    try:
        version = subprocess.run(["nft", "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("nft is not installed (make netns-tools)")
    assert version.returncode == 0
    admissions = [
        Admission((Source("198.18.3.2/32"),), (Ports("TCP", 2222, 2222),)),
        Admission((Source("10.0.0.0/8", ("10.1.0.0/16",)),), (Ports("UDP", 9000, 9010),)),
        Admission(None, (Ports("SCTP", 7, 7),)),
        Admission(None, None),
    ]
    for text in (ruleset(admissions, NODE), ruleset([], NODE), ""):
        checked = subprocess.run(
            ["nft", "--check", "-f", "-"], input=script(text), capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr + script(text)
