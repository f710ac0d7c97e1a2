"""One job name, one job: the local launcher's lock, its job.json from the first moment,
PIDs trusted only with their start time, a lost launcher, and the resource check.

No TensorFlow: the launcher runs a plan whose tasks are small Python processes (a plan is
data; `submit` starts whatever commands it holds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from processes import REPO, cli

from disttrain.config import Config, ConfigError
from launchers.local import LocalLauncher, LocalOptions, plan_job
from launchers.local_resources import TASK_MEMORY_BYTES
from launchers.local_state import hold_job_name, is_running, start_time_of

GIB = 1024**3

# A launcher running a plan of sleeping tasks. argv: name, run dir, seconds each task
# takes to start, and the tasks that outlive a killed launcher (no PR_SET_PDEATHSIG, as
# where prctl does not exist).
FAKE_LAUNCHER = r"""
import subprocess, sys, time
from dataclasses import replace
import launchers.local as local
from disttrain.cluster import Task
from disttrain.config import Config

name, run_dir, start_delay, survivors = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]

class SlowPopen(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        time.sleep(start_delay)
        super().__init__(*args, **kwargs)

local.subprocess.Popen = SlowPopen
local.check_training_installed = lambda: None
local.check_inputs = lambda config, say, take_over: None
local.prepare_run_dir = lambda config, say, take_over: None
config = replace(Config(), name=name, run_dir=run_dir)
state_dir = local.default_state_dir() / name
tasks = []
for task in (Task("worker", 0), Task("worker", 1), Task("chief", 0)):
    clear = "ctypes.CDLL('libc.so.6').prctl(1, 0); " if task.name in survivors else ""
    code = f"import ctypes, time; {clear}print('{task.name} up', flush=True); time.sleep(120)"
    log = str(state_dir / "logs" / f"{task.name}.log")
    tasks.append(local.TaskPlan(task, [sys.executable, "-c", code], {}, log))
plan = local.LocalPlan(name, [], config, str(state_dir), str(state_dir / "config.yaml"), tasks)
sys.exit(local.LocalLauncher().submit(plan))
"""


def start_launcher(
    name: str, run_dir: Path, log: Path, start_delay: float = 0.0, survivors: tuple = ()
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", FAKE_LAUNCHER, name, str(run_dir), str(start_delay), *survivors],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )


def job_json(home: Path, name: str) -> dict | None:
    try:
        return json.loads((home / "local" / name / "job.json").read_text())
    except (OSError, ValueError):
        return None


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_tasks(home: Path, name: str, count: int):
    state = job_json(home, name)
    pids = [i["pid"] for i in (state or {}).get("tasks", {}).values() if i.get("pid")]
    return state if len(pids) >= count else None


@pytest.fixture
def cleanup():
    """Kills, at the end, the process groups of the launchers and tasks a test started."""
    groups: list[int] = []
    yield groups
    for pid in groups:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def sleeper() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )


# ------------------------------------------------------------------ PIDs and start times


def test_a_pid_is_running_only_with_its_recorded_start_time():
    me = os.getpid()
    assert is_running(me, start_time_of(me))
    assert not is_running(me, start_time_of(me) + 1)  # the pid, reused by another process
    assert not is_running(me, None)  # no start time recorded: not trusted


def test_a_recorded_pid_whose_start_time_differs_is_neither_running_nor_stopped(
    tmp_path, disttrain_home, cleanup
):
    stranger = sleeper()  # took the pid the job recorded for its worker
    cleanup.append(stranger.pid)
    state_dir = disttrain_home / "local" / "t"
    (state_dir / "logs").mkdir(parents=True)
    info = {"state": "running", "restarts": 0, "log": str(state_dir / "logs" / "w.log")}
    worker = {**info, "pid": stranger.pid, "start_time": start_time_of(stranger.pid) - 5}
    state = {
        "name": "t",
        "launcher_pid": stranger.pid,
        "launcher_start_time": start_time_of(stranger.pid) - 5,
        "result": "running",
        "reason": "",
        "run_dir": str(tmp_path / "run"),
        "tasks": {"worker-0": worker},
    }
    (state_dir / "job.json").write_text(json.dumps(state))

    status = LocalLauncher().job_status("t")
    assert status.result == "launcher lost"
    assert status.tasks[0]["state"] == "gone"
    assert "nothing was running" in LocalLauncher().stop("t")
    assert stranger.poll() is None  # not killed
    assert LocalLauncher().job_status("t").result == "stopped"


# ------------------------------------------------------------------ one name, one job


def test_a_second_launcher_of_a_running_name_is_refused_and_writes_nothing(
    tmp_path, disttrain_home, cleanup
):
    first = start_launcher("x", tmp_path / "run-a", tmp_path / "a.log", start_delay=2.0)
    cleanup.append(first.pid)
    state_dir = disttrain_home / "local" / "x"
    # Started at once: the first is still starting its tasks (each takes 2 s to start).
    deadline = time.monotonic() + 2
    while not (state_dir / "lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = start_launcher("x", tmp_path / "run-b", tmp_path / "b.log")
    cleanup.append(second.pid)
    assert second.wait(timeout=30) != 0
    refusal = (tmp_path / "b.log").read_text()
    assert f"job 'x' is already running (launcher pid {first.pid} on " in refusal
    assert ", started at 20" in refusal and "`disttrain stop x`" in refusal
    wait_for(lambda: running_tasks(disttrain_home, "x", 1), "the first job's tasks")
    # The real command line: refused before it checks (probes) its run dir.
    third = cli("train", "--set", "name=x", "--set", f"run_dir={tmp_path / 'run-c'}")
    assert third.returncode == 1 and "job 'x' is already running" in third.stderr
    assert not (tmp_path / "run-c").exists()
    assert "run-a" in (state_dir / "config.yaml").read_text()
    assert "run-b" not in (state_dir / "config.yaml").read_text()
    assert job_json(disttrain_home, "x")["launcher_pid"] == first.pid
    assert "stopped launcher" in LocalLauncher().stop("x")
    assert first.wait(timeout=30) == 130


def test_status_and_stop_work_while_the_job_starts(tmp_path, disttrain_home, cleanup):
    launcher = start_launcher("s", tmp_path / "run", tmp_path / "l.log", start_delay=2.0)
    cleanup.append(launcher.pid)
    state = wait_for(lambda: running_tasks(disttrain_home, "s", 1), "the first task", 20)
    assert state["result"] == "starting"
    status = LocalLauncher().job_status("s")
    assert status.result == "starting"
    assert [t["state"] for t in status.tasks] == ["running", "pending", "pending"]
    started = [i for i in state["tasks"].values() if i["pid"]][0]
    cleanup.append(started["pid"])
    # The launcher blocks SIGTERM while it starts a task; the task must not inherit that.
    blocked = Path(f"/proc/{started['pid']}/status").read_text().split("SigBlk:")[1].split()[0]
    assert int(blocked, 16) & (1 << (signal.SIGTERM - 1)) == 0

    said = LocalLauncher().stop("s")
    assert said.startswith(f"job s: stopped launcher (pid {launcher.pid})"), said
    assert launcher.wait(timeout=30) == 130
    assert not is_running(started["pid"], started["start_time"])
    assert LocalLauncher().job_status("s").result == "stopped"


# ------------------------------------------------------------------ a lost launcher


def test_a_killed_launcher_shows_as_lost_and_stop_kills_what_it_left(
    tmp_path, disttrain_home, cleanup
):
    launcher = start_launcher("k", tmp_path / "run", tmp_path / "l.log", survivors=("worker-1",))
    cleanup.append(launcher.pid)
    state = wait_for(lambda: running_tasks(disttrain_home, "k", 3), "every task")
    tasks = state["tasks"]
    survivor_log = Path(tasks["worker-1"]["log"])  # up: its death signal is cleared
    wait_for(lambda: "up" in survivor_log.read_text(), "worker-1 to be up")
    cleanup += [info["pid"] for info in tasks.values()]
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    for died in (tasks["worker-0"], tasks["chief-0"]):  # with their launcher (PDEATHSIG)
        wait_for(lambda d=died: not is_running(d["pid"], d["start_time"]), "a task to die", 10)

    status = LocalLauncher().job_status("k")
    assert status.result == "launcher lost"
    assert "`disttrain stop k` stops what is left" in status.reason
    assert {t["task"]: t["state"] for t in status.tasks} == {
        "worker-0": "gone",
        "worker-1": "running",
        "chief-0": "gone",
    }
    assert LocalLauncher().list_jobs().jobs[0]["result"] == "launcher lost"
    assert f"launcher: pid {launcher.pid} (gone)" in LocalLauncher().describe("k")

    said = LocalLauncher().stop("k")
    left = tasks["worker-1"]
    assert said == (
        f"job k: the launcher (pid {launcher.pid}) was lost; stopped worker-1 (pid {left['pid']})"
    )
    wait_for(lambda: not is_running(left["pid"], left["start_time"]), "worker-1 to die", 10)
    status = LocalLauncher().job_status("k")
    assert status.result == "stopped" and "launcher" in status.reason
    assert {(t["state"], t["pid"]) for t in status.tasks} == {("stopped", None)}
    with hold_job_name(disttrain_home / "local" / "k"):  # the name is free again
        pass


# ------------------------------------------------------------------ resources


def config_with(workers: int) -> Config:
    base = Config()
    return replace(base, name="big", cluster=replace(base.cluster, workers=workers))


def test_a_job_too_big_for_memory_is_refused_before_anything_starts(disttrain_home):
    with pytest.raises(ConfigError) as refused:
        plan_job(config_with(500), LocalOptions(), memory=8 * GIB, cores=2)
    message = str(refused.value)
    estimate = 503 * TASK_MEMORY_BYTES / GIB
    assert f"503 local tasks need about {estimate:.1f} GiB of memory" in message
    assert "8.0 GiB available (MemAvailable)" in message and "--force" in message
    assert not (disttrain_home / "local" / "big").exists()


def test_force_starts_a_job_too_big_for_memory_with_warnings(disttrain_home):
    plan = plan_job(config_with(500), LocalOptions(force=True), memory=8 * GIB, cores=2)
    assert len(plan.tasks) == 503
    memory, cores = plan.warnings
    assert "starting anyway (--force)" in memory
    assert cores.startswith("503 local tasks on 2 CPU cores")


def test_the_default_job_fits_and_gets_no_warning(disttrain_home):
    assert plan_job(Config(), LocalOptions(), memory=8 * GIB, cores=2).warnings == []


def test_train_refuses_an_absurd_worker_count_and_force_reaches_the_plan(disttrain_home):
    result = cli("train", "--set", "cluster.workers=100000", "--dry-run", timeout=120)
    assert result.returncode == 2, result.stderr
    assert "100003 local tasks need about" in result.stderr and "--force" in result.stderr
    assert not (disttrain_home / "local").exists()
    result = cli("train", "-l", "k8s", "--force", "--dry-run", timeout=120)
    assert "--force does not apply to launcher 'k8s'" in result.stderr
