"""The built wheel, installed outside the checkout: it trains, and it submits without TensorFlow.

The wheel is built from a copy of what a build reads (pyproject.toml, README.md and the two
packages; an in-tree build would write build/ and *.egg-info into the checkout) with
`pip wheel --no-deps --no-build-isolation`: `.venv`'s setuptools, no download.

Each install is a fresh `python -m venv` in a temporary folder, not the checkout. Its
dependencies come from `.venv` without a download and without anything else `.venv` holds:
the wheel's Requires-Dist for the chosen extras is followed through every installed
distribution's own Requires-Dist (markers evaluated, as pip would), and only the files of
the distributions reached are symlinked into one folder that a `.pth` line puts on the new
venv's path. pip then installs the wheel with `--no-index` and checks its dependencies
(no `--no-deps`): a requirement the linked set does not satisfy fails the install. Without
the `train` extra, tensorflow, numpy and PIL are simply not there (asserted).
Commands run with the venv's own `disttrain` script, from a folder outside the checkout,
without PYTHONPATH, so the installed wheel (its packaged default config, its charts) is
what runs.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from disttrain.model_names import BUILTIN_MODELS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
# What setuptools reads to build the wheel (pyproject.toml names README.md as the readme).
BUILD_INPUTS = ("pyproject.toml", "README.md", "disttrain", "launchers")
HELM = ROOT / ".tools" / "bin" / "helm"
TRAINING_DISTRIBUTIONS = {"tensorflow-cpu", "tensorflow-datasets", "tensorboard", "numpy", "pillow"}
# A job on the pods' mounted share, as the k8s launcher requires (configs/azure.yaml's).
ON_A_SHARE = [
    "--set",
    "run_dir=/azure/tfshare/runs/x",
    "--set",
    "launcher.k8s.storage.azure_file_share=tfshare",
    "--set",
    "launcher.k8s.storage.secret=azure-storage",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    build = ["wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(source)]
    run([sys.executable, "-m", "pip", *build])
    (built,) = out.glob("disttrain-*.whl")
    return built


@pytest.fixture(scope="module")
def trainer(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel and its train extra: its bin folder."""
    return install(wheel, ["train"], tmp_path_factory.mktemp("trainer-venv"))


@pytest.fixture(scope="module")
def submitter(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel and the extras a laptop that submits to a cluster takes."""
    return install(wheel, ["k8s", "azure"], tmp_path_factory.mktemp("submitter-venv"))


@pytest.fixture(scope="module")
def bare(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel and no extra at all: the local launcher's dry run only."""
    return install(wheel, [], tmp_path_factory.mktemp("bare-venv"))


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A folder outside the checkout to run commands in, with its own HOME and DISTTRAIN_HOME."""
    (tmp_path / "work").mkdir()
    (tmp_path / "user").mkdir()
    return tmp_path


def test_wheel_holds_the_default_config_and_the_charts_and_no_tensorflow_requirement(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        packaged = archive.read("disttrain/default.yaml")
    assert packaged == (ROOT / "configs" / "default.yaml").read_bytes()
    assert "launchers/charts/distrib-tensorflow/Chart.yaml" in names
    required = [Requirement(r) for r in wheel_requirements(wheel)]
    base = {canonicalize_name(r.name) for r in required if r.marker is None}
    train = {canonicalize_name(r.name) for r in required if r.marker == Marker('extra == "train"')}
    assert TRAINING_DISTRIBUTIONS <= train and not TRAINING_DISTRIBUTIONS & base, base


def test_installed_wheel_registers_its_models_as_entry_points(bare, workdir):
    """The built-in models come from the wheel's own `disttrain.models` entry points, not from
    the stand-in mapping an older editable install needs."""
    code = (
        "import json; from disttrain import model_names as m; "
        "print(json.dumps([m._registers_its_own(), m.registered_models()]))"
    )
    printed = run_in(bare, workdir, "python", "-c", code).stdout
    assert json.loads(printed) == [True, BUILTIN_MODELS]


def test_installed_wheel_trains_with_the_packaged_default_config_from_any_folder(trainer, workdir):
    data = workdir / "data"
    result = disttrain(
        trainer,
        workdir,
        "train",
        *sets(
            "train.steps=20",
            "checkpoint.every_steps=10",
            "cluster.workers=0",
            "cluster.ps=0",
            "eval.enabled=false",
            f"data.root={data}",
        ),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = workdir / "work" / "runs" / "default"  # the default config's run_dir, from cwd
    latest = json.loads((run_dir / "checkpoints" / "LATEST").read_text())
    assert latest["step"] == 20
    assert (run_dir / "checkpoints" / "ckpt-20" / "MANIFEST.json").is_file()
    assert (run_dir / "DONE").is_file()
    assert f"checkpoints     : {run_dir / 'checkpoints'}" in result.stdout
    status = disttrain(trainer, workdir, "status")
    assert status.returncode == 0 and "job default: succeeded" in status.stdout, status.stdout


def test_installed_wheel_renders_a_kubernetes_job(trainer, workdir):
    # --namespace: no kubeconfig is read, so the train extra alone is enough.
    result = disttrain(
        trainer, workdir, "train", "-l", "k8s", "--dry-run", "--namespace", "ml", *ON_A_SHARE
    )
    assert result.returncode == 0, result.stderr
    assert_renders_the_default_job(result.stdout, namespace="ml")


def test_submitter_venv_has_no_tensorflow_numpy_or_pillow(submitter, workdir):
    for module in ("tensorflow", "numpy", "PIL", "tensorflow_datasets", "keras"):
        found = run_in(submitter, workdir, "python", "-c", f"import {module}", check=False)
        assert found.returncode == 1, f"{module} is importable in the submitter venv"
        assert f"No module named '{module}'" in found.stderr
    where = run_in(
        submitter, workdir, "python", "-c", "import disttrain; print(disttrain.__file__)"
    )
    assert Path(where.stdout.strip()).is_relative_to(submitter.parent)


def test_submitter_runs_help_and_the_dry_runs_without_tensorflow(submitter, workdir):
    help_ = disttrain(submitter, workdir, "--help")
    assert help_.returncode == 0 and "train" in help_.stdout, help_.stderr
    # No kubeconfig here: the namespace is kubectl's default, read with the kubernetes client.
    k8s = disttrain(submitter, workdir, "train", "-l", "k8s", "--dry-run", *ON_A_SHARE)
    assert k8s.returncode == 0, k8s.stderr
    assert_renders_the_default_job(k8s.stdout, namespace="default")
    local = disttrain(submitter, workdir, "train", "-l", "local", "--dry-run")
    assert local.returncode == 0, local.stderr
    assert local.stdout.startswith("# job default: 5 local processes")
    assert "TF_CONFIG=" in local.stdout and "-m disttrain task --config" in local.stdout


@pytest.mark.skipif(not HELM.exists(), reason="no .tools/bin/helm (make tools installs it)")
def test_submitter_renders_the_helm_charts_without_tensorflow(submitter, workdir):
    env = {"DISTTRAIN_HELM": str(HELM)}
    args = ["train", "-l", "helm", "--dry-run", "--namespace", "ml", *ON_A_SHARE]
    result = disttrain(submitter, workdir, *args, env=env)
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert {"Job", "Service", "ConfigMap"} <= kinds


def test_submitter_verbs_answer_without_tensorflow(submitter, workdir):
    for verb in ("status", "stop", "logs", "describe"):
        result = disttrain(submitter, workdir, verb)
        assert result.returncode == 1, result.stderr
        assert result.stderr == (
            f"error: no local job named 'default' (state folder "
            f"{workdir / 'home' / 'local' / 'default'}); known jobs: none\n"
        )
    listed = disttrain(submitter, workdir, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == f"no local jobs in {workdir / 'home' / 'local'}\n"
    version = disttrain(submitter, workdir, "--version")
    assert version.stdout == f"disttrain {metadata.version('disttrain')}\n", version.stderr
    # The kubernetes client loads; there is no cluster to send the Secret to.
    secret = disttrain(
        submitter,
        workdir,
        "secret",
        "create",
        env={"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "a2V5"},
    )
    assert secret.returncode == 1, secret.stderr
    assert secret.stderr.startswith("error: no Kubernetes cluster: no kubeconfig")


def test_local_training_without_tensorflow_fails_in_one_line_before_starting_anything(
    submitter, workdir
):
    result = disttrain(submitter, workdir, "train", "-l", "local")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: launcher local (it trains on this machine, unlike ")
    assert "install disttrain[train]" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (workdir / "work" / "runs").exists()  # no run dir, no job state
    assert not (workdir / "home").exists()


def test_without_the_kubernetes_client_the_cluster_launchers_say_what_to_install(bare, workdir):
    assert disttrain(bare, workdir, "train", "--dry-run").returncode == 0
    for command in (["train", "-l", "k8s", "--dry-run", *ON_A_SHARE], ["status", "-l", "k8s"]):
        result = disttrain(bare, workdir, *command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(
            "error: the k8s and helm launchers: kubernetes not installed here"
        ), command
        assert "install disttrain[k8s]" in result.stderr and result.stderr.count("\n") == 1


def assert_renders_the_default_job(manifests: str, namespace: str) -> None:
    objects = [doc for doc in yaml.safe_load_all(manifests) if doc]
    jobs = {o["metadata"]["name"] for o in objects if o["kind"] == "Job"}
    assert {"default", "default-worker-0", "default-worker-1", "default-ps-0"} <= jobs, jobs
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}


def sets(*key_values: str) -> list[str]:
    return [arg for key_value in key_values for arg in ("--set", key_value)]


def disttrain(venv_bin: Path, workdir: Path, *args: str, **options) -> subprocess.CompletedProcess:
    return run_in(venv_bin, workdir, "disttrain", *args, check=False, **options)


def run_in(
    venv_bin: Path,
    workdir: Path,
    program: str,
    *args: str,
    env: dict | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """`program` of the venv, run in workdir/work: no PYTHONPATH (the checkout is not on the
    path), a private HOME and DISTTRAIN_HOME, and no kubeconfig."""
    clean = outside_the_checkout()
    clean.update(
        HOME=str(workdir / "user"),
        DISTTRAIN_HOME=str(workdir / "home"),
        KUBECONFIG=str(workdir / "no-kubeconfig"),
        **(env or {}),
    )
    command = [str(venv_bin / program), *args]
    result = subprocess.run(
        command, cwd=workdir / "work", env=clean, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def outside_the_checkout() -> dict[str, str]:
    """This environment without PYTHONPATH (which puts the checkout on the path), a venv of
    its own or Azure credentials."""
    dropped = ("PYTHON", "VIRTUAL_ENV", "AZURE_STORAGE_")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


def run(command: list) -> subprocess.CompletedProcess:
    env = {**outside_the_checkout(), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=env, timeout=300
    )
    if result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def install(wheel: Path, extras: list[str], venv: Path) -> Path:
    """A fresh venv at `venv` holding the wheel with `extras`, dependencies linked from .venv."""
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    )
    deps = venv / "deps"
    needed = installed_closure(wheel_requirements(wheel), set(extras))
    link_distributions(needed, Path(sysconfig.get_path("purelib")), deps)
    (site / "dependencies-from-dot-venv.pth").write_text(f"{deps}\n")
    # pip from .venv, running the new venv's interpreter (which has no pip of its own).
    requirement = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-index",
            "--quiet",
            requirement,
        ]
    )
    return venv / "bin"


def wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name)).get_all("Requires-Dist") or []


def installed_closure(requirements: list[str], extras: set[str]) -> set[str]:
    """The installed distributions `requirements` (taken with `extras`) reach, transitively."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        requirement, chosen = todo.pop()
        marker = requirement.marker
        if marker and not any(marker.evaluate({"extra": e}) for e in chosen | {""}):
            continue
        name = canonicalize_name(requirement.name)
        assert name != "disttrain", "a self-referencing extra: pass its extras instead"
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        dist = metadata.distribution(name)  # PackageNotFoundError: .venv lacks it
        todo += [(Requirement(r), set(requirement.extras)) for r in dist.requires or []]
    return {name for name, _ in seen}


def link_distributions(names: set[str], site: Path, into: Path) -> None:
    """Symlink into `into` the files that the distributions `names` installed in `site`: a
    whole folder where only they own files in it, else file by file (azure/, __pycache__/)."""
    owners: dict[tuple[str, ...], set[str]] = defaultdict(set)
    children: dict[tuple[str, ...], set[tuple[str, ...]]] = defaultdict(set)
    for dist in metadata.distributions(path=[str(site)]):
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            if file.parts[0] == "..":  # scripts, outside site-packages
                continue
            for depth in range(1, len(file.parts) + 1):
                owners[file.parts[:depth]].add(name)
                children[file.parts[: depth - 1]].add(file.parts[:depth])
    missing = names - {n for top in children[()] for n in owners[top]}
    assert not missing, f"not installed in {site}: {sorted(missing)}"

    def link(part: tuple[str, ...]) -> None:
        if owners[part] <= names:
            into.joinpath(*part).symlink_to(site.joinpath(*part))
            return
        into.joinpath(*part).mkdir()
        for child in children[part]:
            if owners[child] & names:
                link(child)

    into.mkdir()
    for top in children[()]:
        if owners[top] & names:
            link(top)


def test_the_verbs_that_run_tensorflow_here_say_what_to_install_without_it(submitter, workdir):
    verbs = {
        "disttrain eval": ["eval", "--run-dir", "runs/x", "--once"],
        "disttrain board": ["board", "--run-dir", "runs/x"],
        "disttrain predict": ["predict", "--run-dir", "runs/x", "x.jpg"],
        "disttrain data convert": ["data", "convert", "src", "out"],
        "disttrain task": ["task", "--config", "config.yaml"],
    }
    for verb, args in verbs.items():
        result = disttrain(submitter, workdir, *args)
        assert result.returncode == 2, (verb, result.stderr)
        assert result.stderr.startswith(f"error: {verb}: "), result.stderr
        assert "install disttrain[train]" in result.stderr and result.stderr.count("\n") == 1
