"""The command line's shape: NAME as an argument, -n as the namespace, choices, --version,
completion, and what status, list and describe show, read from a local job's state."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from processes import cli

from launchers.local import free_ports

WIDE = {"COLUMNS": "200"}  # Typer's usage errors are boxed: one line, not wrapped


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_job_state(home: Path, name: str, run_dir: Path, result: str = "succeeded", **tasks):
    """A local job's job.json as launchers.local.Supervisor._save_state writes it, and its
    task logs. `tasks`: task name -> (state, restarts, log text[, last exit code])."""
    state_dir = home / "local" / name
    (state_dir / "logs").mkdir(parents=True)
    saved = {}
    for task, (state, restarts, log, *last_exit) in tasks.items():
        log_path = state_dir / "logs" / f"{task}.log"
        log_path.write_text(log)
        saved[task] = {
            "pid": None,
            "state": state,
            "restarts": restarts,
            "log": str(log_path),
            "command": [sys.executable, "-m", "disttrain", "task", "--config", "c.yaml"],
            "env": {"TF_CONFIG": json.dumps({"task": {"type": task.split("-")[0]}})},
            **({"last_exit": last_exit[0]} if last_exit else {}),
        }
    state = {
        "name": name,
        "launcher_pid": dead_pid(),
        "result": result,
        "reason": "",
        "run_dir": str(run_dir),
        "tasks": saved,
    }
    (state_dir / "job.json").write_text(json.dumps(state, indent=2))
    return state


def unreachable_kubeconfig(tmp_path: Path) -> tuple[dict, int]:
    (port,) = free_ports(1)  # nothing listens there
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\n"
        f"clusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\n"
        "users:\n- name: u\n  user: {token: x}\n"
        "contexts:\n- name: dev\n  context: {cluster: c, user: u, namespace: ml-team}\n"
    )
    return {"KUBECONFIG": str(path)}, port


# ------------------------------------------------------------------ the verbs' syntax


def test_dash_n_is_the_namespace_and_the_job_name_an_argument(tmp_path):
    env, _ = unreachable_kubeconfig(tmp_path)
    result = cli("status", "-l", "k8s", "-n", "team-x", env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    # The job is the default name, looked up in the namespace -n gave (not a job "team-x").
    assert "read Job default in namespace team-x" in result.stderr, result.stderr
    result = cli("stop", "mnist", "-l", "k8s", "-n", "team-x", env=env, timeout=120)
    assert "Job" in result.stderr and "in namespace team-x" in result.stderr, result.stderr
    result = cli("logs", "mnist", "chief", "-l", "k8s", "-n", "team-x", env=env, timeout=120)
    assert "pods of job mnist in namespace team-x" in result.stderr, result.stderr


def test_dash_n_with_the_local_launcher_is_refused_as_a_namespace(disttrain_home):
    result = cli("status", "-n", "ml-team")
    assert result.returncode == 2
    assert "--namespace does not apply to launcher 'local'" in result.stderr


def test_name_is_a_deprecated_alias_of_the_name_argument(tmp_path, disttrain_home):
    write_job_state(disttrain_home, "t", tmp_path / "run", chief_0=("exited 0", 0, ""))
    result = cli("stop", "--name", "t", check=True)
    assert result.stdout.strip() == "job t: nothing was running"
    assert "--name is deprecated" in result.stderr
    both = cli("status", "u", "--name", "t")
    assert both.returncode == 2 and "got 'u' and --name 't'" in both.stderr


def test_help_shows_the_installed_launchers_and_the_fixed_choices():
    assert "<helm|k8s|local>" in cli("status", "--help", env=WIDE, check=True).stdout
    assert "<helm|k8s|local>" in cli("train", "--help", env=WIDE, check=True).stdout
    assert "<chief|worker|ps|evaluator>" in cli("logs", "--help", env=WIDE, check=True).stdout
    assert "<skip|fail>" in cli("data", "convert", "--help", env=WIDE, check=True).stdout


def test_a_bad_choice_is_refused_with_the_choices():
    result = cli("data", "convert", "in", "out", "--on-bad-file", "ignore", env=WIDE)
    assert result.returncode == 2
    assert "'ignore' is not one of 'skip', 'fail'" in result.stderr


def test_version_prints_the_installed_package_version():
    result = cli("--version", check=True)
    assert result.stdout.strip() == f"disttrain {version('disttrain')}"


def test_shell_completion_offers_the_launchers_and_roles():
    def complete(line: str) -> list[str]:
        env = {"_DISTTRAIN_COMPLETE": "complete_bash", "COMP_WORDS": line}
        env["COMP_CWORD"] = str(len(line.split()) - (0 if line.endswith(" ") else 1))
        return cli(env=env, check=True).stdout.split()

    assert complete("disttrain status -l ") == ["helm", "k8s", "local"]
    assert complete("disttrain logs t ") == ["chief", "worker", "ps", "evaluator"]
    assert "--install-completion" in cli("--help", env=WIDE, check=True).stdout
