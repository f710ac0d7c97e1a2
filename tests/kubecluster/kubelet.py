"""The kubelet: runs every pod's containers as real processes, each pod on its own network host.

For a pod it: schedules it onto the one node, gives it a network namespace and address
(network.py), lays out its volumes as folders, resolves its environment (literals,
ConfigMap/Secret refs, the downward API), runs init containers then containers through
podinit.py, applies the restart policy on exit (with a short back-off), keeps one log file
per container instance (for `logs --previous`), and reports everything in the pod's status.
A deleted pod gets SIGTERM, then SIGKILL after its grace period; then, as a kubelet since
Kubernetes 1.27 does, its last status (a terminal phase, each container's exit code) is
written, and it is removed unless a finalizer still holds it (the Job controller's).

The container image is recorded, not pulled: the command runs from the project's
environment (its `.venv/bin` first on PATH), so `disttrain task ...` is the real thing.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .network import PodNetwork
from .network_policy import PolicyEnforcer
from .resources import BY_KIND
from .store import ApiError, Store, now, run_control_loop

PODS = BY_KIND[("v1", "Pod")]
SERVICES = BY_KIND[("v1", "Service")]
NAMESPACES = BY_KIND[("v1", "Namespace")]
NETWORK_POLICIES = BY_KIND[("networking.k8s.io/v1", "NetworkPolicy")]
CONFIGMAPS = BY_KIND[("v1", "ConfigMap")]
SECRETS = BY_KIND[("v1", "Secret")]
CLAIMS = BY_KIND[("v1", "PersistentVolumeClaim")]
VOLUMES = BY_KIND[("v1", "PersistentVolume")]
NODE_NAME = "testcluster-node"
NODE_LABELS = {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"}
NODE_IP = "198.18.0.1"  # reported as hostIP; the host holds it once a gateway is opened
PODINIT = Path(__file__).with_name("podinit.py")
VENV_BIN = Path(sys.executable).parent
# The checkout these tests belong to, first on every container's PYTHONPATH, as an image
# built from it would hold its code: the venv's editable install may point at another one.
CHECKOUT = Path(__file__).resolve().parents[2]
# Real kubelets back off 10 s doubling to 5 min; tests cannot wait that long.
RESTART_BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0)


class ConfigError(Exception):
    """A container cannot start yet (CreateContainerConfigError): a missing ref."""


@dataclass
class Instance:
    """One run of one container: its process and its log file."""

    number: int
    log: Path
    process: subprocess.Popen | None = None
    started_at: str = ""
    finished_at: str = ""
    exit_code: int | None = None


@dataclass
class ContainerRun:
    spec: dict
    instances: list[Instance] = field(default_factory=list)
    restart_at: float | None = None  # when the back-off ends
    waiting: tuple[str, str] = ("ContainerCreating", "")

    @property
    def current(self) -> Instance | None:
        return self.instances[-1] if self.instances else None


class PodRunner:
    """Runs one pod to its end (or until stopped); owns its netns, folders and processes."""

    def __init__(self, kubelet: Kubelet, pod: dict):
        self.kubelet, self.store = kubelet, kubelet.store
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.folder = kubelet.root / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.netns, self.ip = "", ""
        self.stopping = threading.Event()
        self.grace = 30.0
        self.lock = threading.Lock()
        self.containers: dict[str, ContainerRun] = {}
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)

    # -- lifecycle
    def start(self) -> None:
        self.thread.start()

    def stop(self, grace: float) -> None:
        self.grace = grace
        self.stopping.set()

    def _run(self) -> None:
        try:
            pod = self.store.get(PODS, self.namespace, self.name)
            self.netns, self.ip = self.kubelet.network.attach()
            self.kubelet.refresh_dns()
            self._set_status(
                phase="Pending",
                podIP=self.ip,
                podIPs=[{"ip": self.ip}],
                hostIP=NODE_IP,
                hostIPs=[{"ip": NODE_IP}],
                startTime=now(),
                conditions=self._conditions(pod, initialized=False, ready=False),
            )
            # Before any container starts, the NetworkPolicy rules know its address: its
            # own ingress rules, and its peers' rules that admit it.
            self.kubelet.refresh_dns(force=True)
            phase = self._run_pod(pod)
        except ApiError:
            phase = None  # the pod is gone
        except Exception:
            traceback.print_exc()  # a bug in the test kubelet: loud, and the pod fails
            phase = "Failed"
        finally:
            self._kill_all()
            if self.netns:
                self.kubelet.network.detach(self.netns)
        if self.stopping.is_set() and self.containers:  # deleted: how did it end?
            phase = self._record_exits()
        if phase:
            self._set_status(
                containerStatuses=[_container_status(r) for r in self.containers.values()],
                phase=phase,
                conditions=self._conditions(pod, initialized=True, ready=False, done=True),
            )
        self.kubelet.finished(self)

    def _run_pod(self, pod: dict) -> str | None:
        spec = pod["spec"]
        policy = spec.get("restartPolicy", "Always")
        for init in spec.get("initContainers", []):
            if not self._run_to_completion(pod, init, policy):
                return "Failed" if policy == "Never" else None
        if self.stopping.is_set():
            return None
        self.containers = {c["name"]: ContainerRun(c) for c in spec["containers"]}
        while not self.stopping.is_set():
            for run in self.containers.values():
                self._tend(pod, run, policy)
            self._publish(pod, initialized=True)
            finished = [
                r
                for r in self.containers.values()
                if r.restart_at is None and r.current and r.current.exit_code is not None
            ]
            if len(finished) == len(self.containers):
                codes = [r.current.exit_code for r in finished]
                return "Succeeded" if all(code == 0 for code in codes) else "Failed"
            self.stopping.wait(0.1)
        return None

    def _run_to_completion(self, pod: dict, container: dict, policy: str) -> bool:
        run = ContainerRun(container)
        self.containers = {container["name"]: run}
        while not self.stopping.is_set():
            self._tend(pod, run, "OnFailure" if policy == "Always" else policy)
            self._publish(pod, initialized=False, init_run=run)
            if run.current and run.current.exit_code is not None and run.restart_at is None:
                return run.current.exit_code == 0
            self.stopping.wait(0.1)
        return False

    def _tend(self, pod: dict, run: ContainerRun, policy: str) -> None:
        """Start, reap or restart one container, as its state and the restart policy say."""
        current = run.current
        if current and current.process and current.exit_code is None:
            code = current.process.poll()
            if code is None:
                return
            current.exit_code = code if code >= 0 else 128 - code
            current.finished_at = now()
            restart = policy == "Always" or (policy == "OnFailure" and current.exit_code != 0)
            if restart:
                delay = RESTART_BACKOFF_SECONDS[
                    min(len(run.instances) - 1, len(RESTART_BACKOFF_SECONDS) - 1)
                ]
                run.restart_at = time.monotonic() + delay
            return
        if current is None or (run.restart_at is not None and time.monotonic() >= run.restart_at):
            run.restart_at = None
            self._start_container(pod, run)

    def _start_container(self, pod: dict, run: ContainerRun) -> None:
        container = run.spec
        instance = Instance(
            len(run.instances),
            self.folder / "logs" / container["name"] / f"{len(run.instances)}.log",
        )
        instance.log.parent.mkdir(parents=True, exist_ok=True)
        try:
            pod = self.store.get(PODS, self.namespace, self.name)  # current podIP etc.
            env = self._environment(pod, container)
            mounts = self._mounts(pod, container)
        except ConfigError as error:
            run.waiting = ("CreateContainerConfigError", str(error))
            run.restart_at = time.monotonic() + 1.0
            return
        self.kubelet.refresh_dns(force=True)  # the hosts file is complete before the start
        init_spec = {
            "hostname": pod["spec"].get("hostname") or self.name,
            "mounts": mounts,
            "env": env,
            "command": _command_of(container),
            "workingDir": self._working_dir(container),
        }
        spec_file = self.folder / f"{container['name']}-{instance.number}.json"
        spec_file.write_text(json.dumps(init_spec))
        with open(instance.log, "wb") as log:
            instance.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, str(PODINIT), str(spec_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        instance.started_at = now()
        with self.lock:
            run.instances.append(instance)

    def _record_exits(self) -> str:
        """The exit codes of containers stopped by a deletion; the pod's terminal phase."""
        for run in self.containers.values():
            current = run.current
            if current and current.process and current.exit_code is None:
                code = current.process.wait()
                current.exit_code = code if code >= 0 else 128 - code
                current.finished_at = now()
            run.restart_at = None
        codes = [r.current.exit_code for r in self.containers.values() if r.current]
        return "Succeeded" if codes and all(code == 0 for code in codes) else "Failed"

    def _kill_all(self) -> None:
        with self.lock:
            live = [
                r.current.process
                for r in self.containers.values()
                if r.current and r.current.process and r.current.process.poll() is None
            ]
        for process in live:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)
            process.wait()

    # -- status
    def _publish(self, pod: dict, initialized: bool, init_run: ContainerRun | None = None) -> None:
        statuses = [_container_status(r) for r in self.containers.values()]
        all_running = all(s["state"].get("running") for s in statuses) and not init_run
        key = "initContainerStatuses" if init_run else "containerStatuses"
        status = {
            key: statuses,
            "phase": "Running" if initialized else "Pending",
            "conditions": self._conditions(pod, initialized, all_running),
        }
        if init_run is None:
            status["initContainerStatuses"] = None
        self._set_status(**status)

    def _conditions(self, pod: dict, initialized: bool, ready: bool, done: bool = False) -> list:
        def condition(kind: str, value: bool, reason: str | None = None) -> dict:
            entry = {
                "type": kind,
                "status": "True" if value else "False",
                "lastTransitionTime": now(),
            }
            if reason and not value:
                entry["reason"] = reason
            return entry

        reason = "PodCompleted" if done else "ContainersNotReady"
        return [
            condition("PodReadyToStartContainers", not done),
            condition("Initialized", initialized, "ContainersNotInitialized"),
            condition("Ready", ready, reason),
            condition("ContainersReady", ready, reason),
            condition("PodScheduled", True),
        ]

    def _set_status(self, **fields: object) -> None:
        def change(obj: dict) -> None:
            status = obj.setdefault("status", {})
            old = {c["type"]: c for c in status.get("conditions", [])}
            for key, value in fields.items():
                if value is None:
                    status.pop(key, None)
                elif key == "conditions":  # others' conditions (DisruptionTarget) stay
                    ours = {c["type"] for c in value}
                    status[key] = [
                        old[c["type"]]
                        if c["type"] in old and old[c["type"]]["status"] == c["status"]
                        else c
                        for c in value
                    ] + [c for kind, c in old.items() if kind not in ours]
                else:
                    status[key] = value

        try:
            self.store.mutate(PODS, self.namespace, self.name, change, "status")
        except ApiError:
            self.stopping.set()  # the pod object is gone: stop its containers

    # -- what a container sees
    def _environment(self, pod: dict, container: dict) -> dict[str, str]:
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self._home()),
            "HOSTNAME": pod["spec"].get("hostname") or self.name,
            "PYTHONPATH": str(CHECKOUT),
            # What the project's Dockerfiles set for a python entry point.
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
        }
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, res in (("configMapRef", CONFIGMAPS), ("secretRef", SECRETS)):
                if kind in source:
                    data = self._data_of(res, source[kind]["name"], source[kind].get("optional"))
                    env.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env", []):
            value = self._env_value(pod, item)
            if value is not None:
                env[item["name"]] = _expand(value, env)
        return env

    def _env_value(self, pod: dict, item: dict) -> str | None:
        if "valueFrom" not in item:
            return item.get("value", "")
        ref = item["valueFrom"]
        for kind, res in (("configMapKeyRef", CONFIGMAPS), ("secretKeyRef", SECRETS)):
            if kind in ref:
                data = self._data_of(res, ref[kind]["name"], ref[kind].get("optional"))
                if ref[kind]["key"] not in data:
                    if ref[kind].get("optional"):
                        return None
                    raise ConfigError(
                        f"couldn't find key {ref[kind]['key']} in {res.kind} "
                        f"{self.namespace}/{ref[kind]['name']}"
                    )
                return data[ref[kind]["key"]]
        if "fieldRef" in ref:
            return _field_of(pod, ref["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in ref:
            resource = ref["resourceFieldRef"]["resource"]
            group, name = resource.split(".", 1)
            return str(
                _container_named(pod, ref["resourceFieldRef"].get("containerName"))
                .get("resources", {})
                .get(group, {})
                .get(name, "0")
            )
        return ""

    def _data_of(self, res: object, name: str, optional: bool | None) -> dict[str, str]:
        obj = self.store.find(res, self.namespace, name)  # type: ignore[arg-type]
        if obj is None:
            if optional:
                return {}
            raise ConfigError(f'{res.kind.lower()} "{name}" not found')  # type: ignore[attr-defined]
        if res is SECRETS:
            data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
            return {**data, **(obj.get("stringData") or {})}
        return dict(obj.get("data") or {})

    def _home(self) -> Path:
        home = self.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        return home

    def _working_dir(self, container: dict) -> str:
        wanted = container.get("workingDir")
        return wanted if wanted and Path(wanted).is_dir() else str(self._home())

    def _mounts(self, pod: dict, container: dict) -> list[dict]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts = []
        for mount in container.get("volumeMounts", []):
            source = self._volume_folder(volumes[mount["name"]])
            if mount.get("subPath"):
                source = source / mount["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
            target = Path(mount["mountPath"])
            self.kubelet.mount_point(target, is_file=source.is_file())
            mounts.append(
                {
                    "source": str(source),
                    "target": str(target),
                    "readOnly": bool(mount.get("readOnly")),
                }
            )
        return mounts

    def _volume_folder(self, volume: dict) -> Path:
        name = volume["name"]
        own = self.folder / "volumes" / name
        if "emptyDir" in volume:
            own.mkdir(parents=True, exist_ok=True)
            return own
        for kind, res in (("configMap", CONFIGMAPS), ("secret", SECRETS)):
            if kind in volume:
                ref = volume[kind]
                data = self._data_of(
                    res, ref.get("name") or ref.get("secretName"), ref.get("optional")
                )
                _write_files(own, data, ref.get("items"))
                return own
        if "csi" in volume:
            return self.kubelet.share(
                (volume["csi"].get("volumeAttributes") or {}).get("shareName")
                or f"csi-{self.namespace}-{name}"
            )
        if "azureFile" in volume:
            return self.kubelet.share(volume["azureFile"]["shareName"])
        if "persistentVolumeClaim" in volume:
            return self._claim_folder(volume["persistentVolumeClaim"]["claimName"])
        if "hostPath" in volume:
            return self.kubelet.host_path(volume["hostPath"]["path"])
        raise ConfigError(
            f"volume {name!r}: type {sorted(set(volume) - {'name'})} is not "
            "supported by the test kubelet"
        )

    def _claim_folder(self, claim_name: str) -> Path:
        claim = self.store.find(CLAIMS, self.namespace, claim_name)
        if claim is None:
            raise ConfigError(f'persistentvolumeclaim "{claim_name}" not found')
        volume_name = claim.get("spec", {}).get("volumeName")
        volume = self.store.find(VOLUMES, "", volume_name) if volume_name else None
        if volume:
            spec = volume.get("spec", {})
            share = ((spec.get("csi") or {}).get("volumeAttributes") or {}).get("shareName") or (
                spec.get("azureFile") or {}
            ).get("shareName")
            if share:
                return self.kubelet.share(share)
        return self.kubelet.share(f"pvc-{self.namespace}-{claim_name}")


def _write_files(folder: Path, data: dict[str, str], items: list | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    chosen = (
        [(i["key"], i.get("path", i["key"])) for i in items] if items else [(k, k) for k in data]
    )
    for key, path in chosen:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data.get(key, ""))


def _command_of(container: dict) -> list[str]:
    command = [*container.get("command", []), *container.get("args", [])]
    if not container.get("command"):
        raise ConfigError(
            f"container {container['name']!r} has no command: the test kubelet "
            "cannot use an image's entrypoint"
        )
    return command


def _expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) references to earlier variables, as Kubernetes expands them ($$ escapes)."""
    out, i = "", 0
    while i < len(value):
        if value.startswith("$$", i):
            out, i = out + "$", i + 2
        elif value.startswith("$(", i) and ")" in value[i:]:
            end = value.index(")", i)
            name = value[i + 2 : end]
            out += env.get(name, f"$({name})")
            i = end + 1
        else:
            out, i = out + value[i], i + 1
    return out


def _field_of(pod: dict, path: str) -> str:
    meta = pod["metadata"]
    for kind in ("labels", "annotations"):
        if path.startswith(f"metadata.{kind}['"):
            return (meta.get(kind) or {}).get(path.split("'")[1], "")
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": pod.get("status", {}).get("podIP", ""),
        "status.hostIP": NODE_IP,
    }
    if path not in simple:
        raise ConfigError(f"fieldRef {path!r} is not supported")
    return simple[path]


def _container_named(pod: dict, name: str | None) -> dict:
    containers = pod["spec"]["containers"]
    return next((c for c in containers if c["name"] == name), containers[0])


def _container_status(run: ContainerRun) -> dict:
    current = run.current
    status = {
        "name": run.spec["name"],
        "image": run.spec.get("image", ""),
        "imageID": "",
        "restartCount": max(0, len(run.instances) - 1),
        "ready": False,
        "started": False,
        "lastState": {},
    }
    if len(run.instances) > 1:
        status["lastState"] = {"terminated": _terminated(run.instances[-2])}
    if current is None or (run.restart_at is not None and current.exit_code is not None):
        reason, message = (
            ("CrashLoopBackOff", "back-off restarting failed container")
            if (current)
            else run.waiting
        )
        status["state"] = {"waiting": {"reason": reason, "message": message}}
        if current:
            status["lastState"] = {"terminated": _terminated(current)}
    elif current.exit_code is None:
        status.update(ready=True, started=True, containerID=f"testcluster://{current.process.pid}")
        status["state"] = {"running": {"startedAt": current.started_at}}
    else:
        status["state"] = {"terminated": _terminated(current)}
        status["containerID"] = f"testcluster://{current.process.pid}"
    return status


def _terminated(instance: Instance) -> dict:
    code = instance.exit_code or 0
    return {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": instance.started_at,
        "finishedAt": instance.finished_at,
        "containerID": f"testcluster://{instance.process.pid if instance.process else 0}",
    }


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def unschedulable_reason(pod: dict) -> str | None:
    """Why the one node (labels NODE_LABELS, no GPU) cannot take this pod, or None."""
    spec = pod["spec"]
    wanted = spec.get("nodeSelector") or {}
    if any(NODE_LABELS.get(key) != value for key, value in wanted.items()):
        return f"1 node(s) didn't match Pod's node affinity/selector ({wanted})"
    for container in spec.get("containers", []):
        limits = (container.get("resources") or {}).get("limits") or {}
        if str(limits.get("nvidia.com/gpu", "0")) not in ("0", ""):
            return "1 Insufficient nvidia.com/gpu"
    return None


class Kubelet:
    """Schedules pods onto the one node and keeps one PodRunner per running pod."""

    def __init__(self, store: Store, root: Path, network: PodNetwork):
        self.store, self.root, self.network = store, root, network
        self.runners: dict[str, PodRunner] = {}  # by pod uid
        self.done: set[str] = set()
        self.created_mount_points: list[Path] = []
        self.lock = threading.RLock()
        self.thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
        self.dns_revision = -1
        self.closing = False
        self.dns_lock = threading.Lock()
        self.policies = PolicyEnforcer(NODE_IP, network.run_nft)

    def start(self) -> None:
        self.thread.start()

    # -- folders shared by pods
    def share(self, name: str) -> Path:
        folder = self.root / "shares" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def host_path(self, path: str) -> Path:
        folder = self.root / "hostpaths" / path.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def mount_point(self, target: Path, is_file: bool) -> None:
        """Make sure `target` exists on the host to mount over; remember what we created."""
        with self.lock:
            if target.exists():
                return
            missing = [p for p in [target, *target.parents] if not p.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch() if is_file else target.mkdir()
            self.created_mount_points.extend(missing)  # deepest first

    # -- the loop
    def _loop(self) -> None:
        run_control_loop(self.store, self.sync)

    def sync(self) -> None:
        pods, _ = self.store.list(PODS)
        for pod in pods:
            meta, uid = pod["metadata"], pod["metadata"]["uid"]
            if not pod["spec"].get("nodeName"):
                self._schedule(pod)
            runner = self.runners.get(uid)
            if meta.get("deletionTimestamp"):
                if runner:
                    runner.stop(float(meta.get("deletionGracePeriodSeconds", 30)))
                elif uid not in self.runners:
                    self._remove(pod)
            elif (
                runner is None
                and uid not in self.done
                and pod["status"].get("phase") in ("Pending", None)
            ):
                self._start(pod)
        live = {p["metadata"]["uid"] for p in pods}
        with self.lock:
            for uid, runner in list(self.runners.items()):
                if uid not in live:
                    runner.stop(0)
        self.refresh_dns()

    def _schedule(self, pod: dict) -> None:
        """Bind to the node, or leave Pending (Unschedulable) as a real scheduler would."""
        reason = unschedulable_reason(pod)
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if reason:
            condition = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": f"0/1 nodes are available: {reason}",
            }
            if condition not in pod["status"].get("conditions", []):
                self.store.mutate(
                    PODS,
                    namespace,
                    name,
                    lambda o: o["status"].update(conditions=[condition]),
                    "status",
                )
            return

        def bind(obj: dict) -> None:
            obj["spec"]["nodeName"] = NODE_NAME

        self.store.mutate(PODS, namespace, name, bind)

    def _start(self, pod: dict) -> None:
        runner = PodRunner(self, pod)
        with self.lock:
            if self.closing:
                return
            self.runners[pod["metadata"]["uid"]] = runner
        runner.folder.mkdir(parents=True, exist_ok=True)
        runner.start()

    def _remove(self, pod: dict) -> None:
        """Remove a deleted pod whose containers have stopped, unless a finalizer holds it
        (it is then terminal: Failed, if it never ran, as the pod GC marks such pods)."""
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        try:
            if not pod["metadata"].get("finalizers"):
                self.store.remove(PODS, namespace, name)
            elif pod["status"].get("phase") not in ("Succeeded", "Failed"):
                self.store.mutate(
                    PODS, namespace, name, lambda o: o["status"].update(phase="Failed"), "status"
                )
        except ApiError:
            pass

    def finished(self, runner: PodRunner) -> None:
        with self.lock:
            self.done.add(runner.uid)
        pod = self.store.find(PODS, runner.namespace, runner.name)
        if pod and pod["metadata"].get("deletionTimestamp"):
            self._remove(pod)
        with self.lock:
            self.runners.pop(runner.uid, None)
        self.store.wake()

    def refresh_dns(self, force: bool = False) -> None:
        """Rewrite every pod's hosts file from the current pods and Services, and its
        ingress rules from the NetworkPolicies (network_policy.py)."""
        with self.dns_lock:  # one writer at a time: the files are rewritten in place
            with self.store.lock:
                revision = self.store.revision
                if revision == self.dns_revision and not force:
                    return
                self.dns_revision = revision
                pods, _ = self.store.list(PODS)
                services, _ = self.store.list(SERVICES)
                policies, _ = self.store.list(NETWORK_POLICIES)
                namespaces, _ = self.store.list(NAMESPACES)
            with self.lock:
                runners = list(self.runners.values())
            by_uid = {p["metadata"]["uid"]: p for p in pods}
            for runner in runners:
                if runner.netns and runner.uid in by_uid:
                    self.network.write_dns(runner.netns, by_uid[runner.uid], pods, services)
            netns_of = {r.uid: r.netns for r in runners if r.netns}
            self.policies.enforce(netns_of, pods, policies, namespaces)

    # -- for the API server and tests
    def log_source(self, pod: dict, container: str, previous: bool):
        runner = self.runners.get(pod["metadata"]["uid"])
        folder = (runner.folder if runner else self._folder_of(pod)) / "logs" / container
        logs = sorted(folder.glob("*.log"), key=lambda p: int(p.stem)) if folder.exists() else []
        name = pod["metadata"]["name"]
        if previous:
            if len(logs) < 2:
                raise ApiError(
                    400,
                    "BadRequest",
                    f'previous terminated container "{container}" in pod "{name}" not found',
                )
            return str(logs[-2]), lambda: False
        if not logs:
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
            )
        newest = logs[-1]

        def running() -> bool:
            live = self.runners.get(pod["metadata"]["uid"])
            run = live.containers.get(container) if live else None
            return bool(
                run and run.current and run.current.log == newest and run.current.exit_code is None
            )

        return str(newest), running

    def _folder_of(self, pod: dict) -> Path:
        meta = pod["metadata"]
        return self.root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"

    def process_of(self, namespace: str, pod_name: str, container: str | None = None):
        """The live process of a pod's container (tests kill it to simulate a crash)."""
        for runner in list(self.runners.values()):
            if (runner.namespace, runner.name) == (namespace, pod_name):
                runs = list(runner.containers.values())
                run = runner.containers.get(container) if container else (runs or [None])[0]
                if run and run.current and run.current.exit_code is None:
                    return run.current.process
        return None

    def shutdown(self) -> None:
        """Stop every pod (SIGTERM, then SIGKILL after 2 s) and start no new one."""
        with self.lock:
            self.closing = True
            runners = list(self.runners.values())
        for runner in runners:
            runner.stop(2.0)
        for runner in runners:
            runner.thread.join(timeout=15)
        for path in self.created_mount_points:
            try:
                path.unlink() if path.is_file() else path.rmdir()
            except OSError:
                pass
