"""The Helm launcher: the job as releases of the charts in launchers/charts/.

The charts keep the 2017 sample's names and workflow: `distrib-tensorflow` (chief, workers,
ps), `eval-tensorflow` (the evaluator) and `tensorboard`, all driven by one values file.
The plan is the values file (`values_from_config`, launchers/chart_values.py) and one
command per chart: submit runs `helm upgrade --install` with them, and `--dry-run` runs
`helm template` with the same values and flags, so it prints what submit installs. The
charts share one helper, values.yaml and values.schema.json (launchers/charts/_shared,
linked into each chart). Releases are NAME,
NAME-eval and NAME-tensorboard; the objects inside are named from `values.name` (= NAME),
exactly as the Kubernetes launcher names them, which is why status, logs and list work
the same way (labels select the job) and only submit/stop differ.

The `helm` binary is launcher.helm.binary, else `$DISTTRAIN_HELM`, else `.tools/bin/helm`
(scripts/install-tools.sh), else `helm` on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from disttrain.config import Config, ConfigError
from launchers import LauncherError, Plan
from launchers.chart_values import (
    BOARD_CHART,
    EVAL_CHART,
    RELEASE_SUFFIX,
    TRAIN_CHART,
    values_from_config,
)
from launchers.k8s_objects import job_objects
from launchers.k8s_options import K8sOptions
from launchers.kubeconfig import with_namespace
from launchers.kubernetes import Cluster, KubernetesLauncher, unrestricted_warnings
from launchers.prepare import check_cluster_run_dir

CHARTS_DIR = Path(__file__).resolve().parent / "charts"


@dataclass
class HelmOptions:
    """The `launcher.helm` section; where pods run comes from `launcher.k8s`, as for k8s."""

    # The helm binary; empty: $DISTTRAIN_HELM, else .tools/bin/helm, else helm on PATH.
    binary: str = ""


def helm_binary(options: HelmOptions | None = None) -> str:
    candidates = [
        options.binary if options else "",
        os.environ.get("DISTTRAIN_HELM", ""),
        str(Path(__file__).resolve().parent.parent / ".tools" / "bin" / "helm"),
        shutil.which("helm") or "",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if options and options.binary:
        raise ConfigError(
            f"launcher.helm.binary: got {options.binary!r}, which is not an executable file"
        )
    raise ConfigError(
        "helm: not found; run scripts/install-tools.sh (installs .tools/bin/helm), "
        "put helm on PATH or set DISTTRAIN_HELM"
    )


def releases(config: Config, k8s: K8sOptions) -> list[tuple[str, str]]:
    """(release, chart) in install order: training first, then evaluator, then TensorBoard."""
    charts = [TRAIN_CHART]
    charts += [EVAL_CHART] if config.eval.enabled else []
    charts += [BOARD_CHART] if k8s.tensorboard.enabled else []
    return [(config.name + RELEASE_SUFFIX[chart], chart) for chart in charts]


@dataclass
class HelmPlan(Plan):
    """The values file and the releases it installs; `render` is `helm template` of exactly
    those, with the flags submit's `helm upgrade --install` gets."""

    config: Config = field(default_factory=Config)
    k8s: K8sOptions = field(default_factory=K8sOptions)
    helm: HelmOptions = field(default_factory=HelmOptions)
    values: dict = field(default_factory=dict)
    releases: list[tuple[str, str]] = field(default_factory=list)

    def commands(self, verb: str, values_path: str) -> list[list[str]]:
        """One helm command per release: verb "template" (dry run) or "upgrade" (submit)."""
        target = [*helm_target(self.k8s.namespace, self.k8s.context), "--values", values_path]
        install = ["upgrade", "--install"] if verb == "upgrade" else [verb]
        binary = helm_binary(self.helm)
        return [
            [binary, *install, release, str(CHARTS_DIR / chart), *target]
            for release, chart in self.releases
        ]

    def render(self) -> str:
        header = f"# helm template of {', '.join(r for r, _ in self.releases)}\n"
        with tempfile.TemporaryDirectory(prefix="disttrain-helm-") as folder:
            commands = self.commands("template", write_values(self.values, Path(folder)))
            return header + "".join(_run(command) for command in commands)


def plan_job(config: Config, k8s: K8sOptions, helm: HelmOptions) -> HelmPlan:
    """The values and releases of the job. Validated as the k8s launcher validates (the same
    objects, built in Python), which also gives the same warnings."""
    k8s = with_namespace(k8s)
    warnings = unrestricted_warnings(job_objects(config, k8s))
    values = values_from_config(config, k8s)
    return HelmPlan(config.name, warnings, config, k8s, helm, values, releases(config, k8s))


def write_values(values: dict, folder: Path) -> str:
    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return str(path)


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise LauncherError(f"{' '.join(command[1:3])} failed: {result.stderr.strip()}")
    return result.stdout


class HelmLauncher(KubernetesLauncher):
    """Submit and stop through Helm; status, logs and list read the objects like `k8s`."""

    name = "helm"
    sections = {"k8s": K8sOptions, "helm": HelmOptions}

    def plan(self, config: Config) -> HelmPlan:
        return plan_job(config, self.k8s, self.options["helm"])

    def submit(self, plan: Plan, wait: bool = False, follow: bool = False) -> int:
        assert isinstance(plan, HelmPlan)
        check_cluster_run_dir(plan.config, plan.k8s, print)
        cluster = Cluster(plan.k8s.context, plan.k8s.namespace)
        # An upgrade of a finished release would leave its Jobs finished (or fail on an
        # immutable field): refuse, as the k8s launcher does, and name the way out.
        cluster.refuse_if_present(plan.name, "helm")
        with tempfile.TemporaryDirectory(prefix="disttrain-helm-") as folder:
            _install_releases(plan, write_values(plan.values, Path(folder)))
        if not (wait or follow):
            return 0
        if follow:
            cluster.follow_chief(plan.name)
        return cluster.wait_for_result(plan.name)

    def status(self, name: str) -> str:
        command = [helm_binary(self.options["helm"]), "status", name, *self._target()]
        release = _run(command).strip().splitlines()
        summary = [line for line in release if line.startswith(("STATUS:", "REVISION:"))]
        return "\n".join([f"release {name}: " + ", ".join(summary), super().status(name)])

    def stop(self, name: str) -> str:
        releases_ = [name + suffix for suffix in RELEASE_SUFFIX.values()]
        return _uninstall(name, releases_, self._target(), helm_binary(self.options["helm"]))

    def _target(self) -> list[str]:
        return helm_target(self.k8s.namespace, self.k8s.context)


def _install_releases(plan: HelmPlan, values_path: str) -> None:
    """Install the job's releases in order. If one fails, every release tried is uninstalled
    (a failed install is recorded too): no half-installed job, no chief training alone."""
    target = helm_target(plan.k8s.namespace, plan.k8s.context)
    binary = helm_binary(plan.helm)
    existing = [r for r, _ in plan.releases if _release_exists(r, target, binary)]
    if existing:  # the chief's Job may be gone (its TTL) while the releases stay
        raise LauncherError(
            f"release {existing[0]} of job {plan.name!r} already exists; "
            f"`disttrain stop {plan.name} -l helm` first, or choose another name"
        )
    tried = []
    try:
        for (release, _), command in zip(plan.releases, plan.commands("upgrade", values_path)):
            tried.append(release)
            print(_run(command).strip().splitlines()[0])
    except BaseException:
        try:
            rollback = _uninstall(plan.name, tried, target, binary)
            print(f"rolling back: {rollback}", file=sys.stderr)
        except LauncherError as failed:  # the install's own error matters more: raised below
            print(f"rolling back failed: {failed}", file=sys.stderr)
        raise


def helm_target(namespace: str | None, context: str | None) -> list[str]:
    """helm's flags for a namespace and kubeconfig context; none given, helm's defaults."""
    found = ["--namespace", namespace] if namespace else []
    return found + (["--kube-context", context] if context else [])


def _release_exists(release: str, target: list[str], binary: str) -> bool:
    command = [binary, "status", release, *target]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 and "not found" not in result.stderr:
        raise LauncherError(f"helm status {release} failed: {result.stderr.strip()}")
    return result.returncode == 0


def _uninstall(job: str, releases_: list[str], target: list[str], binary: str) -> str:
    """Uninstall those of `releases_` that exist; say which."""
    removed = []
    for release in releases_:
        command = [binary, "uninstall", release, *target]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            removed.append(release)
        elif "not found" not in result.stderr:
            raise LauncherError(f"helm uninstall {release} failed: {result.stderr.strip()}")
    if not removed:
        return f"job {job}: no release found"
    return f"job {job}: uninstalled {', '.join(removed)}"
