"""A small Kubernetes-compatible cluster on this machine, for testing the launchers for real.

    with KubeCluster(tmp_path) as cluster:
        cluster.kubectl("apply", "-f", "job.yaml")
        ...

* an API server on 127.0.0.1 (apiserver.py) that the `kubernetes` Python client, `kubectl`
  and `helm` talk to through a kubeconfig (`cluster.kubeconfig`, `cluster.env`);
* controllers: Job (jobs.py), Deployment/ReplicaSet (deployments.py), the garbage collector
  (garbage.py);
* a kubelet (kubelet.py) that runs each pod's containers as real processes, each pod in its
  own network namespace with its own address from 198.18.0.0/15 and Kubernetes DNS names
  (network.py);
* optionally a gateway from the host into the pod network at 198.18.0.1
  (`open_gateway`), so that a service outside the cluster, such as Azurite standing in for
  Azure Storage (external.py), is reached by pods and by the host at one address.

Everything it creates (network namespaces, the gateway link, hosts files, mount points,
processes) is removed by `close()`, which the context manager and the pytest fixtures
(fixtures.py) always call.
Needs root and `ip`; `unavailable_reason()` says why not otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from .apiserver import ApiServer
from .defaults import apply_defaults
from .deployments import DeploymentController
from .garbage import GarbageCollector
from .jobs import JobController
from .kubelet import NODE_LABELS, NODE_NAME, Kubelet
from .network import (
    PodNetwork,
    remove_stale_gateways,
    remove_stale_namespaces,
    running_as_root_with_ip,
)
from .resources import BY_KIND
from .store import Store

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".tools" / "bin"
NETNS_FAMILY = "dtk"  # network namespaces are named dtk<pid>-<n>


def unavailable_reason() -> str | None:
    return running_as_root_with_ip()


class KubeCluster:
    _count = 0

    def __init__(self, root: Path, namespaces: tuple[str, ...] = ("default",)):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        KubeCluster._count += 1
        remove_stale_namespaces(NETNS_FAMILY)
        remove_stale_gateways(NETNS_FAMILY)
        self.store = Store(apply_defaults)
        self.network = PodNetwork(
            f"{NETNS_FAMILY}{os.getpid()}-c{KubeCluster._count}", NETNS_FAMILY
        )
        self.kubelet = Kubelet(self.store, self.root, self.network)
        self.api = ApiServer(self.store, self.kubelet.log_source)
        self.jobs = JobController(
            self.store, lambda ns, pod: self.api.create(BY_KIND[("v1", "Pod")], ns, pod)
        )
        self.deployments = DeploymentController(self.store, self.api.create)
        self.garbage = GarbageCollector(self.store)
        self.kubeconfig = self.root / "kubeconfig"
        self._bootstrap(namespaces)

    def _bootstrap(self, namespaces: tuple[str, ...]) -> None:
        self.store.create(
            BY_KIND[("v1", "Node")],
            "",
            {"metadata": {"name": NODE_NAME, "labels": NODE_LABELS}},
        )
        for name in ("kube-system", *namespaces):
            self.create_namespace(name)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "testcluster", "cluster": {"server": self.api.url}}],
            "users": [{"name": "tester", "user": {"token": "testcluster"}}],
            "contexts": [
                {
                    "name": "testcluster",
                    "context": {"cluster": "testcluster", "user": "tester", "namespace": "default"},
                }
            ],
            "current-context": "testcluster",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        for part in (self.api, self.garbage, self.jobs, self.deployments, self.kubelet):
            part.start()

    def create_namespace(self, name: str) -> None:
        self.store.create(BY_KIND[("v1", "Namespace")], "", {"metadata": {"name": name}})
        self.store.create(
            BY_KIND[("v1", "ServiceAccount")], name, {"metadata": {"name": "default"}}
        )

    # -- for tests
    @property
    def env(self) -> dict[str, str]:
        """Environment for clients: the kubeconfig, and helm/kubectl first on PATH."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.root / "helm"),
            "HELM_CONFIG_HOME": str(self.root / "helm"),
            "HELM_DATA_HOME": str(self.root / "helm"),
            "PATH": f"{TOOLS_BIN}:{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return self._tool("kubectl", args, input, check, timeout)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        return self._tool("helm", args, None, check, timeout)

    def _tool(
        self, tool: str, args: tuple[str, ...], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(TOOLS_BIN / tool), *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def evict(self, namespace: str, pod: str) -> None:
        """Evict a pod through the API server's eviction API, with the kubernetes client,
        as `kubectl drain` does for each pod: it gets DisruptionTarget, then SIGTERM."""
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(str(self.kubeconfig)))
        eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=namespace))
        api.create_namespaced_pod_eviction(pod, namespace, eviction)

    def open_gateway(self) -> str:
        """Wire this machine into the pod network; the address pods reach it at."""
        return self.network.open_gateway()

    def share(self, name: str) -> Path:
        """The local folder behind an Azure Files share / CSI volume / PVC named `name`."""
        return self.kubelet.share(name)

    def get(self, kind: str, namespace: str, name: str, api_version: str = "v1") -> dict | None:
        return self.store.find(BY_KIND[(api_version, kind)], namespace, name)

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        labels: str | None = None,
        api_version: str = "v1",
    ) -> list[dict]:
        return self.store.list(BY_KIND[(api_version, kind)], namespace, labels)[0]

    def wait_for(
        self,
        what: str,
        predicate: Callable[[], object],
        timeout: float = 120,
        diagnose: Callable[[], str] | None = None,
    ) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        detail = diagnose() if diagnose else self.describe()
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")

    def describe(self) -> str:
        """A summary of pods and jobs, for failure messages."""
        lines = []
        for pod in self.list("Pod"):
            statuses = pod["status"].get("containerStatuses", [])
            states = [(c["name"], list(c["state"])[0], c["restartCount"]) for c in statuses]
            lines.append(
                f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']} "
                f"{pod['status'].get('phase')} {pod['status'].get('podIP')} {states}"
            )
            lines += [f"    | {line}" for line in self._log_tail(pod)]
        for job in self.list("Job", api_version="batch/v1"):
            lines.append(f"job {job['metadata']['name']} {job.get('status')}")
        return "\n".join(lines)

    def _log_tail(self, pod: dict, lines: int = 8) -> list[str]:
        container = pod["spec"]["containers"][0]["name"]
        try:
            path, _ = self.kubelet.log_source(pod, container, previous=False)
        except Exception:  # noqa: BLE001 (a diagnostic must never hide the real failure)
            return []
        return Path(path).read_text(errors="replace").splitlines()[-lines:]

    def process_of(self, namespace: str, pod_name: str, container: str | None = None):
        return self.kubelet.process_of(namespace, pod_name, container)

    # -- teardown
    def close(self) -> None:
        self.store.close()
        self.kubelet.shutdown()
        self.api.stop()
        self.network.close()

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kubectl_available() -> bool:
    return (TOOLS_BIN / "kubectl").exists() and shutil.which("ip") is not None
