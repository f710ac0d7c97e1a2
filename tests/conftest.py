"""Shared fixtures: an isolated disttrain home and the built-in dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

# Azurite fixtures (azurite, azurite_env, own_azurite) for every test module.
from azurite import azurite, azurite_env, own_azurite  # noqa: F401

# The test cluster (tests/kubecluster): kube_cluster (one per module), kube_namespace, and
# outside_azurite (Azurite behind the cluster's gateway, reached by pods and tests alike),
# pod_network (this process reaches pod IPs).
from kubecluster.fixtures import (  # noqa: F401
    k8s,
    kube_cluster,
    kube_namespace,
    outside_azurite,
    pod_network,
    share_data,
)


@pytest.fixture(scope="session")
def builtin_data(tmp_path_factory) -> Path:
    """The built-in dataset, generated once per test session (no network, ~2 s)."""
    from disttrain.data.builtin import ensure_builtin_dataset

    return ensure_builtin_dataset(tmp_path_factory.mktemp("data") / "builtin")


@pytest.fixture
def disttrain_home(tmp_path, monkeypatch) -> Path:
    """A private DISTTRAIN_HOME, so local job state never touches the user's."""
    home = tmp_path / "home"
    monkeypatch.setenv("DISTTRAIN_HOME", str(home))
    return home


@pytest.fixture
def brief_storage_retries(monkeypatch) -> None:
    """Storage retries that run out in about a second instead of ~30 s, for a test whose
    outage must outlast them (it checks what an outage leaves, not how often it retries):
    no Azure SDK retries, disttrain's own attempts kept, with short backoff. Only this
    process: a job's subprocesses keep the real bounds."""
    from disttrain import storage

    monkeypatch.setattr(storage, "SDK_RETRIES", 0)
    monkeypatch.setattr(storage, "RETRY_FIRST_DELAY_SECONDS", 0.05)
