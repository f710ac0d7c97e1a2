"""The command line's shape: NAME as an argument, -n as the namespace, choices, --version,
completion, and what status, list and describe show, read from a local job's state."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from processes import REPO, cli

from launchers.local import free_ports
from launchers.local_state import hold_job_name

WIDE = {"COLUMNS": "200"}
# The names of the "running" jobs written below, held as their live launcher would hold
# them (else status shows them as "launcher lost"); released when the test session ends.
HELD_NAMES = contextlib.ExitStack()  # Typer's usage errors are boxed: one line, not wrapped


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
        task = task.replace("_", "-")  # chief_0=... names chief-0
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
    if result == "running":
        HELD_NAMES.enter_context(hold_job_name(state_dir))
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
    # -n is the namespace the job's Jobs are listed in (not a job named "team-x").
    assert "list Job in namespace team-x" in result.stderr, result.stderr
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


def test_shell_completion_offers_the_local_jobs_names(tmp_path, disttrain_home):
    for name in ("exp-1", "exp-2", "other"):
        write_job_state(disttrain_home, name, tmp_path / name, chief_0=("exited 0", 0, ""))
    env = {"_DISTTRAIN_COMPLETE": "complete_bash", "COMP_WORDS": "disttrain status exp"}
    env["COMP_CWORD"] = "2"
    assert cli(env=env, check=True).stdout.split() == ["exp-1", "exp-2"]


# ------------------------------------------------------------------ status and list


def make_run_dir(tmp_path: Path, checkpoint_step: int, evals: list[dict]) -> Path:
    """A run dir written through the real helpers: a published checkpoint (LATEST) and
    the evaluator's results.jsonl."""
    from disttrain.checkpoints import publish_checkpoint
    from disttrain.storage import EVAL_RESULTS, RunDir

    staged = tmp_path / "staged" / f"ckpt-{checkpoint_step}"
    staged.mkdir(parents=True)
    (staged / "ckpt.index").write_bytes(b"index")
    run_dir = RunDir(str(tmp_path / "run"))
    publish_checkpoint(run_dir, staged, checkpoint_step, keep=3, log=lambda _: None)
    for result in evals:
        run_dir.append_line(EVAL_RESULTS, json.dumps(result, sort_keys=True))
    return tmp_path / "run"


def chief_log_with_progress(step: int, total: int) -> str:
    """The chief's output: progress lines as disttrain.progress prints them, among others."""
    from disttrain.progress import Progress

    progress = Progress(start_step=0, total_steps=total, every_seconds=1)
    progress.examples = 64 * step
    lines = [progress.line(s, 0.5, 0.75, now=progress.started + s) for s in (step // 2, step)]
    return "\n".join(["chief-0 | starting", *lines, f"checkpoint | published | ckpt-{step}"])


EVALS = [
    {"step": 50, "accuracy": 0.5, "loss": 0.9, "examples": 512},
    {"step": 100, "accuracy": 0.8125, "loss": 0.4567, "examples": 512},
]


def running_job(tmp_path: Path, home: Path) -> dict:
    run_dir = make_run_dir(tmp_path, 100, EVALS)
    return write_job_state(
        home,
        "t",
        run_dir,
        result="running",
        chief_0=("running", 0, chief_log_with_progress(120, 500)),
        worker_0=("running", 2, "worker-0 | serving\n"),
        evaluator_0=("running", 0, ""),
    )


def test_status_shows_the_last_step_rate_eta_checkpoint_and_evaluation(tmp_path, disttrain_home):
    running_job(tmp_path, disttrain_home)
    lines = cli("status", "t", check=True).stdout.splitlines()
    assert lines[0] == "job t: running"
    assert lines[1].split() == ["TASK", "STATE", "RESTARTS", "LOG"]  # no pid: no PID column
    assert lines[3].split()[:3] == ["worker-0", "running", "2"]
    # 120 steps in 120 s: 380 to go take 6:20; 64 examples per step.
    assert "progress: step 120/500 | examples/s 64.0 | eta 6:20 | checkpoint 100" in lines
    assert "last eval: step 100 | accuracy 0.8125 | loss 0.4567" in lines


def test_status_of_an_ended_job_shows_no_eta(tmp_path, disttrain_home):
    state = running_job(tmp_path, disttrain_home)
    state["result"] = "succeeded"
    (disttrain_home / "local" / "t" / "job.json").write_text(json.dumps(state))
    out = cli("status", "t", check=True).stdout
    assert "progress: step 120/500 | examples/s 64.0 | checkpoint 100" in out


def test_status_as_json_and_yaml_holds_the_same_fields(tmp_path, disttrain_home):
    import yaml

    running_job(tmp_path, disttrain_home)
    as_json = json.loads(cli("status", "t", "-o", "json", check=True).stdout)
    assert as_json["name"] == "t" and as_json["result"] == "running"
    assert [t["task"] for t in as_json["tasks"]] == ["chief-0", "worker-0", "evaluator-0"]
    assert as_json["tasks"][1]["restarts"] == 2
    assert as_json["progress"] == {
        "step": 120,
        "total_steps": 500,
        "examples_per_second": 64.0,
        "eta": "6:20",
        "checkpoint_step": 100,
        "last_eval": {"step": 100, "accuracy": 0.8125, "loss": 0.4567},
    }
    as_yaml = yaml.safe_load(cli("status", "t", "--output", "yaml", check=True).stdout)
    assert as_yaml == as_json


def test_status_of_a_job_that_has_not_trained_yet_shows_no_progress(tmp_path, disttrain_home):
    write_job_state(
        disttrain_home, "t", tmp_path / "none", result="running", chief_0=("running", 0, "")
    )
    out = cli("status", "t", check=True).stdout
    assert "progress:" not in out and "last eval:" not in out
    assert json.loads(cli("status", "t", "-o", "json", check=True).stdout)["progress"] == {
        "checkpoint_step": None,
        "last_eval": None,
    }


def test_list_without_a_launcher_lists_the_local_jobs(tmp_path, disttrain_home):
    assert cli("list", check=True).stdout.strip() == (
        f"no local jobs in {disttrain_home / 'local'}"
    )
    write_job_state(disttrain_home, "exp-b", tmp_path / "b", chief_0=("exited 0", 0, ""))
    write_job_state(
        disttrain_home, "a", tmp_path / "a", result="failed", chief_0=("stopped", 0, "")
    )
    lines = cli("list", check=True).stdout.splitlines()
    assert lines[0].split() == ["NAME", "RESULT", "TASKS", "UPDATED", "RUN", "DIR"]
    assert lines[1].split()[:3] == ["a", "failed", "1"] and lines[1].endswith(str(tmp_path / "a"))
    assert lines[2].split()[:3] == ["exp-b", "succeeded", "1"]
    jobs = json.loads(cli("list", "-o", "json", check=True).stdout)
    assert [(j["name"], j["result"], j["run_dir"]) for j in jobs] == [
        ("a", "failed", str(tmp_path / "a")),
        ("exp-b", "succeeded", str(tmp_path / "b")),
    ]


def test_columns_fit_their_longest_value_and_empty_columns_are_left_out():
    from launchers.job_status import format_table

    table = format_table(
        [
            {"task": "chief-0", "phase": "CrashLoopBackOff", "pod": None},
            {"task": "worker-10", "phase": "Running", "pod": None},
        ]
    )
    assert table.splitlines() == [
        "TASK       PHASE",
        "chief-0    CrashLoopBackOff",
        "worker-10  Running",
    ]


# ------------------------------------------------------------------ describe


def test_describe_shows_each_task_command_env_state_last_exit_and_last_log_line(
    tmp_path, disttrain_home
):
    write_job_state(
        disttrain_home,
        "t",
        tmp_path / "run",
        result="failed",
        chief_0=("stopped", 1, "chief-0 | starting\nerror: data.root is gone\n\n", 4),
        worker_0=("exited 0", 0, "worker-0 | serving\n", 0),
        ps_0=("stopped", 0, ""),
    )
    out = cli("describe", "t", check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "job t: failed"
    assert lines[1] == f"run dir: {tmp_path / 'run'}"
    assert lines[2].startswith("launcher: pid ") and lines[2].endswith("(gone)")
    chief = lines[lines.index("[chief-0]") : lines.index("[worker-0]")]
    assert chief[1] == "  state: stopped, restarts 1, last exit code 4"
    assert chief[2] == '  env: TF_CONFIG={"task": {"type": "chief"}}'
    assert chief[3] == f"  command: {sys.executable} -m disttrain task --config c.yaml"
    assert chief[-1] == "  last log line: error: data.root is gone"
    worker = lines[lines.index("[worker-0]") : lines.index("[ps-0]")]
    assert worker[1] == "  state: exited 0, restarts 0, last exit code 0"
    assert lines[-1] == "  last log line: -"  # ps-0 printed nothing
    assert "last exit code -" in lines[lines.index("[ps-0]") + 1]


def test_describe_of_an_unknown_job_names_the_known_ones(tmp_path, disttrain_home):
    write_job_state(disttrain_home, "t", tmp_path / "run", chief_0=("exited 0", 0, ""))
    result = cli("describe", "nosuch")
    assert result.returncode == 1
    assert "no local job named 'nosuch'" in result.stderr and "known jobs: t" in result.stderr


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    """`disttrain ARGS` with exactly `env` (no TF_CPP_MIN_LOG_LEVEL inherited by accident)."""
    command = [sys.executable, "-m", "disttrain", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)


def test_verbose_and_quiet_set_the_level_the_tasks_inherit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["DISTTRAIN_HOME"] = str(tmp_path)
    verbose = run_cli("-v", "train", "--dry-run", env=env)
    assert "  TF_CPP_MIN_LOG_LEVEL=0" in verbose.stdout  # TensorFlow's own logs reach the log
    assert "  TF_CPP_MIN_LOG_LEVEL=2" in run_cli("train", "--dry-run", env=env).stdout
    both = run_cli("-v", "-q", "train", "--dry-run", env=env)
    assert (both.returncode, both.stderr) == (2, "error: -v and -q: choose one\n")


@pytest.mark.integration
def test_quiet_keeps_the_tasks_info_lines_off_the_console_not_out_of_their_logs(
    tmp_path, builtin_data
):
    settings = [
        f"run_dir={tmp_path / 'run'}",
        f"data.root={builtin_data}",
        "train.steps=20",
        "cluster.workers=0",
        "cluster.ps=0",
        "eval.enabled=false",
        "train.log_every_seconds=0.1",
    ]
    args = [arg for setting in settings for arg in ("--set", setting)]
    env = {**os.environ, "DISTTRAIN_HOME": str(tmp_path / "home")}
    quiet = run_cli("-q", "train", *args, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "train | step:" not in quiet.stdout and "checkpoints     :" in quiet.stdout
    chief_log = (tmp_path / "home" / "local" / "default" / "logs" / "chief-0.log").read_text()
    assert "train | step:" in chief_log  # status and the job line read them there
