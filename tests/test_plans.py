"""Plan, then execute: what a launcher's dry run prints is what its submit starts, and a
launcher from another package plans through the same interface with its own options."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from processes import REPO, cli, install_plugin

from launchers import load_job

ECHO_PACKAGE = REPO / "tests" / "plugins" / "echo_launcher"


@pytest.fixture(scope="module")
def echo_installed(tmp_path_factory) -> dict[str, str]:
    """The echo launcher installed by pip into a folder of its own: the environment that
    puts it on the path, as an installed third-party package would be."""
    target = install_plugin(ECHO_PACKAGE, tmp_path_factory.mktemp("site"))
    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def test_a_third_party_launcher_plans_with_its_own_options_section(echo_installed, tmp_path):
    dry = cli(
        "train",
        "-l",
        "echo",
        "--dry-run",
        "--set",
        "launcher.echo.greeting=hi",
        env=echo_installed,
        check=True,
    )
    assert dry.stdout.strip() == "hi default: 1500 steps"
    out = tmp_path / "echoed.txt"
    cli(
        "train",
        "-l",
        "echo",
        "--set",
        f"launcher.echo.out={out}",
        "--set",
        "train.steps=7",
        env=echo_installed,
        check=True,
    )
    assert out.read_text() == "hello default: 7 steps"
    assert cli("status", "-l", "echo", env=echo_installed, check=True).stdout.strip() == (
        "job default: echoed"
    )


def test_a_third_party_launchers_options_are_validated_like_the_trainers(echo_installed):
    bad = cli(
        "train",
        "-l",
        "echo",
        "--dry-run",
        "--set",
        "launcher.echo.greeting=",
        "--set",
        "launcher.echo.greting=x",
        "--set",
        "train.steps=0",
        env=echo_installed,
    )
    assert bad.returncode == 2
    lines = bad.stderr.splitlines()
    assert lines[0] == "error: the config has 3 problems:"
    assert (
        "  unknown config key 'launcher.echo.greting'; keys accepted in launcher.echo: "
        "greeting, out" in lines
    )
    assert "  launcher.echo.greeting: got ''; accepted: a non-empty greeting" in lines
    # Without the package, its section is unknown and the sections installed are named.
    unknown = cli("train", "--dry-run", "--set", "launcher.echo.greeting=hi")
    assert unknown.returncode == 2
    assert "unknown config key 'launcher.echo'" in unknown.stderr
    assert "name, helm, k8s, local" in unknown.stderr


def test_the_helm_dry_run_warns_like_the_k8s_one():
    scratch = ["--set", "launcher.k8s.storage.scratch_host_path=/mnt/ssd"]
    warnings = {}
    for launcher in ("k8s", "helm"):
        result = cli(
            "train",
            "-l",
            launcher,
            "-c",
            "configs/azure.yaml",
            "--dry-run",
            *scratch,
            env={"KUBECONFIG": "/nonexistent"},
            check=True,
        )
        warnings[launcher] = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert warnings["k8s"] and warnings["helm"] == warnings["k8s"]
    assert all("hostPath" in line for line in warnings["k8s"])


def render_tasks(rendered: str) -> dict[str, dict]:
    """The local dry run's text, back to {task: {"env": ..., "command": ...}}."""
    tasks: dict[str, dict] = {}
    for line in rendered.splitlines()[1:]:
        if line.startswith("["):
            current = tasks.setdefault(line.strip("[]"), {"env": {}, "cpus": ""})
        elif line.startswith("  cpus: "):
            current["cpus"] = line.removeprefix("  cpus: ")
        elif "=" in line.split()[0]:
            key, _, value = line.strip().partition("=")
            current["env"][key] = value
        else:
            current["command"] = line.split()
    return tasks


@pytest.mark.integration
def test_the_local_dry_run_is_exactly_what_submit_starts(disttrain_home, builtin_data, tmp_path):
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        f"data.root={builtin_data}",
        "train.steps=20",
        "cluster.workers=1",
        "cluster.ps=1",
        "eval.enabled=false",
        "name=planned",
        # One core: TensorFlow's inter-op pool must still get two threads (task.py).
        f"launcher.local.cpus.worker={min(os.sched_getaffinity(0))}",
    ]
    config, launcher = load_job(None, overrides, "local")
    plan = launcher.plan(config)
    printed = render_tasks(plan.render())
    assert launcher.submit(plan) == 0
    started = json.loads((disttrain_home / "local" / "planned" / "job.json").read_text())
    assert sorted(printed) == sorted(started["tasks"]) == ["chief-0", "ps-0", "worker-0"]
    for task, shown in printed.items():
        assert started["tasks"][task]["env"] == shown["env"], task
        assert started["tasks"][task]["command"] == shown["command"], task
        assert started["tasks"][task]["cpus"] == shown["cpus"], task
    assert printed["worker-0"]["cpus"] == str(min(os.sched_getaffinity(0)))
    assert printed["chief-0"]["cpus"] == ""  # not pinned
    # What the processes themselves read: each server logs the address its TF_CONFIG gave it.
    cluster = json.loads(printed["chief-0"]["env"]["TF_CONFIG"])["cluster"]
    for task, (role, index) in {"ps-0": ("ps", 0), "worker-0": ("worker", 0)}.items():
        log = Path(started["tasks"][task]["log"]).read_text()
        assert f"{task} | serving | {cluster[role][index]}" in log, log[-2000:]


def test_a_broken_launcher_package_is_named_and_breaks_no_other_launcher(tmp_path):
    """An installed distribution whose entry point names a module that is not there."""
    dist_info = tmp_path / "broken_launcher-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-launcher\n")
    (dist_info / "entry_points.txt").write_text(
        "[disttrain.launchers]\nbroken = no_such_module:Launcher\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    assert cli("train", "--dry-run", env=env).returncode == 0
    broken = cli("train", "-l", "broken", "--dry-run", env=env)
    assert broken.returncode == 1
    assert broken.stderr == (
        "error: launcher broken (from broken-launcher) cannot be loaded: "
        "ModuleNotFoundError: No module named 'no_such_module'\n"
    )
