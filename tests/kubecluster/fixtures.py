"""pytest fixtures for the test cluster. A test module imports what it uses:

    from kubecluster.fixtures import kube_cluster, kube_namespace  # noqa: F401

`kube_cluster` is one cluster per module (an API server is cheap; pods are not shared);
`kube_namespace` gives each test its own namespace and deletes it (and so every object and
pod in it) afterwards; `outside_azurite` is Azurite outside the cluster, reached through the
cluster's gateway (external.py). The cluster is closed even when a test fails.
"""

from __future__ import annotations

import itertools

import pytest

from . import TOOLS_BIN, KubeCluster, unavailable_reason
from .garbage import NAMESPACES, delete

_numbers = itertools.count()


@pytest.fixture(scope="module")
def kube_cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    missing = [tool for tool in ("kubectl", "helm") if not (TOOLS_BIN / tool).exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing in {TOOLS_BIN}: run `make tools`")
    cluster = KubeCluster(tmp_path_factory.mktemp("kubecluster"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster) -> str:
    name = f"t{next(_numbers)}"
    kube_cluster.create_namespace(name)
    yield name
    delete(kube_cluster.store, NAMESPACES, "", name)
    kube_cluster.wait_for(
        f"namespace {name} to be deleted",
        lambda: kube_cluster.get("Namespace", "", name) is None,
        timeout=60,
    )


@pytest.fixture(scope="module")
def share_data(kube_cluster: KubeCluster) -> None:
    """The built-in dataset on the cluster's Azure Files share, once per module."""
    from .disttrain_jobs import put_dataset_on_share

    put_dataset_on_share(kube_cluster)


@pytest.fixture
def k8s(kube_cluster: KubeCluster, kube_namespace: str, share_data: None, tmp_path):
    """A namespace holding the storage Secret, and the CLI environment that reaches it."""
    from .disttrain_jobs import create_storage_secret

    create_storage_secret(kube_cluster, kube_namespace)
    env = {**kube_cluster.env, "DISTTRAIN_HOME": str(tmp_path / "home")}
    return kube_cluster, kube_namespace, env


@pytest.fixture
def pod_network(kube_cluster: KubeCluster) -> str:
    """This process reaches pod IPs (through the gateway) for the test; the gateway's address."""
    was_open = bool(kube_cluster.network.gateway)
    yield kube_cluster.open_gateway()
    if not was_open:  # another fixture's gateway (outside_azurite) stays
        kube_cluster.network.close_gateway()


@pytest.fixture(scope="module")
def outside_azurite(kube_cluster: KubeCluster, tmp_path_factory):
    """Azurite outside the cluster: pods and this process reach it at 198.18.0.1 (external.py)."""
    from .external import azurite_outside

    with azurite_outside(kube_cluster, tmp_path_factory.mktemp("outside")) as emulator:
        yield emulator
