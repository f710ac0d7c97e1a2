"""The Helm launcher: the job as releases of the charts in launchers/charts/.

The charts keep the 2017 sample's names and workflow: `distrib-tensorflow` (chief, workers,
ps), `eval-tensorflow` (the evaluator) and `tensorboard`, all driven by one values file.
This launcher writes that values file from the resolved config (`values_from_config`) and
runs `helm upgrade --install` once per chart; `--dry-run` runs `helm template` with the
same values file and commands, so it prints what submit installs. Releases are NAME,
NAME-eval and NAME-tensorboard; the objects inside are named from `values.name` (= NAME),
exactly as the Kubernetes launcher names them, which is why status, logs and list work
the same way (labels select the job) and only submit/stop differ.

The `helm` binary is `$DISTTRAIN_HELM`, else `.tools/bin/helm` (scripts/install-tools.sh),
else `helm` on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from disttrain.config import Config, ConfigError, K8sRoleConfig, config_to_dict
from launchers import LauncherError
from launchers.k8s_checks import check_k8s_config
from launchers.k8s_objects import user_tolerations
from launchers.kubeconfig import with_namespace
from launchers.kubernetes import KubernetesLauncher
from launchers.prepare import check_cluster_run_dir

CHARTS_DIR = Path(__file__).resolve().parent / "charts"
TRAIN_CHART, EVAL_CHART, BOARD_CHART = "distrib-tensorflow", "eval-tensorflow", "tensorboard"
ROLES = ("chief", "worker", "ps", "evaluator", "tensorboard")


def helm_binary() -> str:
    candidates = [
        os.environ.get("DISTTRAIN_HELM", ""),
        str(Path(__file__).resolve().parent.parent / ".tools" / "bin" / "helm"),
        shutil.which("helm") or "",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "helm: not found; run scripts/install-tools.sh (installs .tools/bin/helm), "
        "put helm on PATH or set DISTTRAIN_HELM"
    )


def values_from_config(config: Config) -> dict:
    """The charts' values for this config: the file a user would write by hand."""
    k8s = config.launcher.k8s
    storage = k8s.storage
    return {
        "name": config.name,
        "runDir": config.run_dir,
        "cluster": {
            "workers": config.cluster.workers,
            "ps": config.cluster.ps,
            "port": k8s.port,
            "maxRestarts": config.cluster.max_restarts,
        },
        **{role: _role_values(getattr(k8s, role)) for role in ROLES},
        "eval": {"once": False},
        "serviceAccount": k8s.service_account,
        "imagePullSecrets": list(k8s.image_pull_secrets),
        "activeDeadlineSeconds": k8s.active_deadline_seconds,
        "ttlSecondsAfterFinished": k8s.ttl_seconds_after_finished,
        "storage": {
            "secret": storage.secret,
            "accountName": storage.account_name,
            "azureFileShare": storage.azure_file_share,
            "azureFileClaim": storage.azure_file_claim,
            "scratchSizeLimit": storage.scratch_size_limit,
            "scratchHostPath": storage.scratch_host_path,
        },
        "config": config_to_dict(config),
    }


def _role_values(role: K8sRoleConfig) -> dict:
    return {
        "image": role.image,
        "cpu": role.cpu,
        "memory": role.memory,
        "gpus": role.gpus,
        "nodeSelector": dict(role.node_selector),
        "tolerations": user_tolerations(role),
    }


def releases(config: Config) -> list[tuple[str, str]]:
    """(release, chart) in install order: training first, then evaluator, then TensorBoard."""
    found = [(config.name, TRAIN_CHART)]
    if config.eval.enabled:
        found.append((f"{config.name}-eval", EVAL_CHART))
    if config.launcher.k8s.tensorboard.enabled:
        found.append((f"{config.name}-tensorboard", BOARD_CHART))
    return found


def helm_commands(config: Config, values_path: str, verb: str) -> list[list[str]]:
    """The helm command per release; verb is "template" (dry run) or "upgrade" (submit)."""
    k8s = config.launcher.k8s
    target = ["--namespace", k8s.namespace, "--values", values_path]
    commands = []
    for release, chart in releases(config):
        chart_dir = str(CHARTS_DIR / chart)
        if verb == "template":
            commands.append([helm_binary(), "template", release, chart_dir, *target])
        else:
            context = ["--kube-context", k8s.context] if k8s.context else []
            install = ["upgrade", "--install", release, chart_dir, *target, *context]
            commands.append([helm_binary(), *install])
    return commands


def render(config: Config) -> str:
    """`helm template` of every release of the job: the dry run, and the parity tests' input."""
    check_k8s_config(config)
    with tempfile.TemporaryDirectory(prefix="disttrain-helm-") as folder:
        values_path = write_values(config, Path(folder))
        return "".join(_run(command) for command in helm_commands(config, values_path, "template"))


def write_values(config: Config, folder: Path) -> str:
    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(values_from_config(config), sort_keys=False))
    return str(path)


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise LauncherError(f"{' '.join(command[1:3])} failed: {result.stderr.strip()}")
    return result.stdout


class HelmLauncher(KubernetesLauncher):
    """Submit and stop through Helm; status, logs and list read the objects like `k8s`."""

    name = "helm"

    def dry_run(self, config: Config) -> str:
        config = with_namespace(config, self.context)
        header = f"# helm template of {', '.join(r for r, _ in releases(config))}\n"
        return header + render(config)

    def submit(self, config: Config, wait: bool = False, follow: bool = False) -> int:
        config = with_namespace(config, self.context)
        check_k8s_config(config)  # nothing is installed on bad input
        check_cluster_run_dir(config, print)
        cluster = self._cluster_of(config)
        # An upgrade of a finished release would leave its Jobs finished (or fail on an
        # immutable field): refuse, as the k8s launcher does, and name the way out.
        cluster.refuse_if_present(config.name)
        with tempfile.TemporaryDirectory(prefix="disttrain-helm-") as folder:
            _install_releases(config, write_values(config, Path(folder)))
        if not (wait or follow):
            return 0
        if follow:
            cluster.follow_chief(config.name)
        return cluster.wait_for_result(config.name)

    def status(self, name: str) -> str:
        command = [helm_binary(), "status", name, *self._target()]
        release = _run(command).strip().splitlines()
        summary = [line for line in release if line.startswith(("STATUS:", "REVISION:"))]
        return "\n".join([f"release {name}: " + ", ".join(summary), super().status(name)])

    def stop(self, name: str) -> str:
        return _uninstall(name, [name, f"{name}-eval", f"{name}-tensorboard"], self._target())

    def _target(self) -> list[str]:
        return helm_target(self.namespace, self.context)


def _install_releases(config: Config, values_path: str) -> None:
    """Install the job's releases in order. If one fails, every release tried is uninstalled
    (a failed install is recorded too): no half-installed job, no chief training alone."""
    target = helm_target(config.launcher.k8s.namespace, config.launcher.k8s.context)
    existing = [r for r, _ in releases(config) if _release_exists(r, target)]
    if existing:  # the chief's Job may be gone (its TTL) while the releases stay
        raise LauncherError(
            f"release {existing[0]} of job {config.name!r} already exists; "
            f"`disttrain stop -l helm -n {config.name}` first, or choose another name"
        )
    tried = []
    try:
        for (release, _), command in zip(
            releases(config), helm_commands(config, values_path, "upgrade")
        ):
            tried.append(release)
            print(_run(command).strip().splitlines()[0])
    except BaseException:
        try:
            print(f"rolling back: {_uninstall(config.name, tried, target)}", file=sys.stderr)
        except LauncherError as rollback:  # the install's own error matters more: raised below
            print(f"rolling back failed: {rollback}", file=sys.stderr)
        raise


def helm_target(namespace: str | None, context: str | None) -> list[str]:
    """helm's flags for a namespace and kubeconfig context; none given, helm's defaults."""
    found = ["--namespace", namespace] if namespace else []
    return found + (["--kube-context", context] if context else [])


def _release_exists(release: str, target: list[str]) -> bool:
    command = [helm_binary(), "status", release, *target]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 and "not found" not in result.stderr:
        raise LauncherError(f"helm status {release} failed: {result.stderr.strip()}")
    return result.returncode == 0


def _uninstall(job: str, releases_: list[str], target: list[str]) -> str:
    """Uninstall those of `releases_` that exist; say which."""
    removed = []
    for release in releases_:
        command = [helm_binary(), "uninstall", release, *target]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            removed.append(release)
        elif "not found" not in result.stderr:
            raise LauncherError(f"helm uninstall {release} failed: {result.stderr.strip()}")
    if not removed:
        return f"job {job}: no release found"
    return f"job {job}: uninstalled {', '.join(removed)}"
