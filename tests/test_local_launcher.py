"""The local launcher on real processes: training, failure semantics, verbs, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from checkpoint_invariants import assert_each_checkpoint_holds_the_updates_of_its_step
from events import scalars
from processes import cli, exit_code, kill_tree, small_job, start_cli

from disttrain.config import load_config
from disttrain.steps import learning_rate_at, make_learning_rate
from launchers import load_job
from launchers.local import INTERRUPTED, Supervisor
from launchers.local_state import LauncherOwner

pytestmark = pytest.mark.integration

# Measured: 600 steps of the default job reach 0.60-0.70 eval accuracy (chance: 1/6).
ACCURACY_AFTER_600_STEPS = 0.40


def job_state(home: Path, name: str) -> dict:
    return json.loads((home / "local" / name / "job.json").read_text())


def task_pid(home: Path, name: str, task: str) -> int:
    return job_state(home, name)["tasks"][task]["pid"]


def wait_for(predicate, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def trained_step(log: Path) -> int:
    steps = re.findall(r"train \| step:\s+(\d+)/", log.read_text()) if log.exists() else []
    return int(steps[-1]) if steps else 0


def latest_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "LATEST"
    return json.loads(latest.read_text())["step"] if latest.exists() else 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_parameter_server_job_trains_well_above_chance_and_every_process_exits(
    tmp_path, builtin_data, disttrain_home
):
    run_dir = tmp_path / "run"
    result = cli(
        "train",
        *small_job(
            run_dir, builtin_data, "--set", "train.steps=600", "--set", "checkpoint.every_steps=200"
        ),
        check=True,
    )

    assert "final eval | step: 600" in result.stdout
    results = [json.loads(x) for x in (run_dir / "eval" / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in results] == [200, 400, 600]
    assert results[-1]["accuracy"] > ACCURACY_AFTER_600_STEPS
    assert json.loads((run_dir / "DONE").read_text())["step"] == 600
    assert latest_step(run_dir) == 600
    assert list((run_dir / "logs" / "train").glob("events.out.tfevents.*"))
    assert list((run_dir / "logs" / "eval").glob("events.out.tfevents.*"))
    state = job_state(disttrain_home, "t")
    assert state["result"] == "succeeded"
    assert {name: info["state"] for name, info in state["tasks"].items()} == {
        "ps-0": "exited 0",
        "worker-0": "exited 0",
        "worker-1": "exited 0",
        "chief-0": "exited 0",
        "evaluator-0": "exited 0",
    }
    assert "ps-0 | stopping | the chief wrote DONE" in result.stdout
    # One line for the last step, with what was trained, not a second one of zeros.
    assert len(re.findall(r"train \| step:\s+600/600", result.stdout)) == 1, result.stdout

    status = cli("status", "t", check=True).stdout
    assert "job t: succeeded" in status and "worker-1" in status
    progress = next(line for line in status.splitlines() if line.startswith("progress: "))
    assert progress.startswith("progress: step 600/600 | examples/s ") and "eta" not in progress
    assert progress.endswith("| checkpoint 600"), status
    assert "last eval: step 600 | accuracy " in status
    described = cli("describe", "t", check=True).stdout
    assert described.count("last exit code 0") == 5, described
    assert re.search(
        r"  last log line: \S+ INFO ps-0 \| stopping \| the chief wrote DONE", described
    )
    worker_log = cli("logs", "t", "worker", "1", check=True).stdout
    assert "worker-1 | serving" in worker_log and "[worker-0]" not in worker_log
    # TensorFlow's start-up banners stay in the task logs, off the console.
    assert "oneDNN custom operations" in worker_log
    assert "oneDNN" not in result.stdout and "absl::InitializeLog" not in result.stdout

    # The best export serves: `disttrain predict` on every test JPEG the evaluator scored
    # (each file's class is its folder) is exactly as accurate as the evaluator recorded.
    best = json.loads((run_dir / "export" / "best" / "metrics.json").read_text())
    assert [p.name for p in (run_dir / "export" / "serving").iterdir()] == [str(best["step"])]
    files = sorted(str(path) for path in (builtin_data / "test").glob("*/*.jpg"))
    table = cli("predict", "--run-dir", str(run_dir), *files, check=True).stdout.splitlines()
    assert table[0].split() == ["IMAGE", "CLASS", "PROBABILITY"]
    rows = [line.split() for line in table[1:]]
    assert [image for image, _, _ in rows] == files and best["examples"] == len(files)
    correct = sum(Path(image).parent.name == label for image, label, _ in rows)
    assert correct / len(files) == best["accuracy"] > ACCURACY_AFTER_600_STEPS


def test_stopped_worker_restarts_alone_and_a_sigtermed_chief_resumes_from_its_own_checkpoint(
    tmp_path, builtin_data, disttrain_home
):
    """SIGSTOP fails nothing: the chief warns that it waits on the stopped worker, the
    launcher kills the worker once its heartbeat is older than cluster.hung_task_seconds,
    and the worker restarts alone, as a crashed one would (one restart spent). Then a chief
    sent SIGTERM between two checkpoints publishes the steps it trained, exits 5 and
    restarts with the ps without spending the budget, resuming where it stopped rather
    than at the last interval."""
    run_dir, log = tmp_path / "run", tmp_path / "launcher.log"
    sets = ["train.steps=500", "checkpoint.every_steps=1000", "eval.enabled=false"]
    sets += ["train.stall_warning_seconds=3", "cluster.hung_task_seconds=15"]
    args = [a for key_value in sets for a in ("--set", key_value)]
    proc = start_cli("train", *small_job(run_dir, builtin_data, *args), log_path=log)
    try:
        wait_for(lambda: trained_step(log) >= 50, 240, "training to start", proc, log)
        ps_pid = task_pid(disttrain_home, "t", "ps-0")
        os.kill(task_pid(disttrain_home, "t", "worker-1"), signal.SIGSTOP)
        stopped_at = len(log.read_text())
        wait_for(lambda: "restarting worker-1" in log.read_text(), 120, "the restart", proc, log)
        restarted_at = trained_step(log)
        reported = wait_for(
            lambda: trained_step(log) >= restarted_at + 100 and trained_step(log), 240, "steps"
        )
        before_sigterm = job_state(disttrain_home, "t")["tasks"]
        os.kill(task_pid(disttrain_home, "t", "chief-0"), signal.SIGTERM)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        kill_tree(proc)
    restarts = {name: info["restarts"] for name, info in before_sigterm.items()}
    assert restarts == {"ps-0": 0, "worker-0": 0, "worker-1": 1, "chief-0": 0}
    text = log.read_text()
    after_stop = text[stopped_at:]
    warned = re.search(
        r"no chunk finished for \d+s \| waiting for steps \d+-\d+, running on "
        r"worker-1 \| a task without a heartbeat for cluster.hung_task_seconds "
        r"\(15s\) is restarted",
        after_stop,
    )
    killed = after_stop.find("[launcher] worker-1 sent no heartbeat for ")
    assert warned and 0 <= warned.start() < killed, after_stop[-3000:]
    assert "worker-1 exited with code -9; restarting worker-1 (1/3 restarts used)" in after_stop
    (published,) = [int(s) for s in re.findall(r"preempted \| ckpt-(\d+) published", text)]
    assert 0 < reported <= published < 500  # no interval checkpoint before 1000
    assert re.search(rf"checkpoint \| restored \| ckpt-{published} \| resuming at step", text)
    assert "chief-0 exited with code 5; restarting ps-0, chief-0 (not counted" in text
    state = job_state(disttrain_home, "t")
    restarts = {task: info["restarts"] for task, info in state["tasks"].items()}
    assert restarts == {"ps-0": 1, "worker-0": 0, "worker-1": 1, "chief-0": 1}
    assert not alive(ps_pid)
    assert json.loads((run_dir / "DONE").read_text())["step"] == 500
    assert_each_checkpoint_holds_the_updates_of_its_step(run_dir)  # the preempted one too


RESTORED_BY_CHIEF = r"\[chief-0\] .*checkpoint \| restored \| ckpt-\d+ \| resuming at step (\d+)"


def chief_resumed_steps(log: Path) -> list[int]:
    """The steps the chief resumed at, one per restore from a checkpoint, in order."""
    return [int(s) for s in re.findall(RESTORED_BY_CHIEF, log.read_text())] if log.exists() else []


def kill_in_turn(
    tmp_path: Path, data: Path, home: Path, victims: list[str], after_step: int, *sets: str
) -> tuple[str, list[int], list[dict]]:
    """Run a job with `--set`s and SIGKILL each of `victims` in turn: the first once a
    checkpoint of `after_step` or later is published, each next one once the chief has
    resumed from the previous loss and published a later checkpoint. Wait for the job to
    succeed: its output, the checkpoint step seen before each kill, and the job's task
    states just before each kill after the first."""
    run_dir, log = tmp_path / "run", tmp_path / "launcher.log"
    args = [a for key_value in ("eval.enabled=false", *sets) for a in ("--set", key_value)]
    proc = start_cli("train", *small_job(run_dir, data, *args), log_path=log)
    published: list[int] = []
    states: list[dict] = []
    try:
        for losses, victim in enumerate(victims):

            def ready(losses=losses) -> bool:
                resumed = chief_resumed_steps(log)
                if losses == 0:
                    return latest_step(run_dir) >= after_step
                return len(resumed) == losses and latest_step(run_dir) > resumed[-1]

            wait_for(ready, 240, f"a checkpoint to publish before killing {victim}", proc, log)
            published.append(latest_step(run_dir))
            if losses:
                states.append(job_state(home, "t")["tasks"])
            os.kill(task_pid(home, "t", victim), signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        kill_tree(proc)
    return log.read_text(), published, states


def test_lost_ps_then_lost_chief_each_restart_both_which_resume_from_the_last_checkpoint(
    tmp_path, builtin_data, disttrain_home
):
    """The chief's variables live on the ps: losing either loses the training state since
    the last checkpoint, so both restart and resume from it (the old ps hold nothing used).
    One job loses its ps, then, once resumed, its chief."""
    recipe = ["train.lr_schedule=cosine", "train.warmup_steps=100", "train.steps=600"]
    text, published, (after_first,) = kill_in_turn(
        tmp_path,
        builtin_data,
        disttrain_home,
        ["ps-0", "chief-0"],
        200,
        *recipe,
        "checkpoint.every_steps=100",
    )
    assert "ps-0 exited with code -9; restarting ps-0, chief-0" in text
    assert "chief-0 exited with code -9; restarting ps-0, chief-0" in text
    assert after_first["chief-0"]["restarts"] == 1 and after_first["worker-0"]["restarts"] == 0
    resumed = [int(s) for s in re.findall(r"resuming at step (\d+)", text)]
    assert len(resumed) == 2 and resumed[0] >= published[0] >= 200
    assert resumed[1] >= published[1] > resumed[0]
    # The schedule continues where it stopped, after each loss. (What a killed chief logged
    # before the restart reached the run dir only if its summaries were mirrored before
    # the kill.)
    logged = scalars(tmp_path / "run" / "logs" / "train", "learning_rate")
    schedule = make_learning_rate(load_config(None, recipe).train)
    assert resumed[1] < max(logged) == 600
    for step, value in logged.items():
        assert value == pytest.approx(learning_rate_at(schedule, step), rel=1e-5), step
    state = job_state(disttrain_home, "t")
    assert state["tasks"]["chief-0"]["restarts"] == 2
    assert state["tasks"]["worker-0"]["restarts"] == 0
    assert json.loads((tmp_path / "run" / "DONE").read_text())["step"] == 600
    assert_each_checkpoint_holds_the_updates_of_its_step(tmp_path / "run")


def test_lost_worker_then_lost_chief_without_ps_each_restart_every_replica_once(
    tmp_path, builtin_data, disttrain_home
):
    """MultiWorkerMirroredStrategy: a lost worker or chief aborts the others' all-reduce,
    so the launcher restarts chief and workers as one restart, from the last checkpoint.
    One job loses a worker, then, once resumed, its chief."""
    text, published, (after_first,) = kill_in_turn(
        tmp_path,
        builtin_data,
        disttrain_home,
        ["worker-0", "chief-0"],
        50,
        "train.steps=300",
        "checkpoint.every_steps=50",
        "cluster.ps=0",
    )
    assert "strategy: multi_worker_mirrored" in text
    replicas = ["chief-0", "worker-0", "worker-1"]
    assert [after_first[t]["restarts"] for t in replicas] == [1, 1, 1]
    restarts = re.findall(
        r"(\S+) exited with code \S+; restarting (.*) \((\d)/3 restarts used\)", text
    )
    assert [(victim, used) for victim, _, used in restarts] == [("worker-0", "1"), ("chief-0", "2")]
    assert all(sorted(restarted.split(", ")) == replicas for _, restarted, _ in restarts)
    resumed = chief_resumed_steps(tmp_path / "launcher.log")
    assert len(resumed) == 2 and resumed[0] >= published[0] >= 50
    assert resumed[1] >= published[1] > resumed[0]
    tasks = job_state(disttrain_home, "t")["tasks"]
    assert [tasks[t]["restarts"] for t in replicas] == [2, 2, 2]
    assert json.loads((tmp_path / "run" / "DONE").read_text())["step"] == 300
    assert_each_checkpoint_holds_the_updates_of_its_step(tmp_path / "run")


def steps_after_last_restart(log: Path) -> int:
    text = log.read_text() if log.exists() else ""
    tail = text.rsplit("restarting ps-0, chief-0", 1)[-1]
    steps = re.findall(r"train \| step:\s+(\d+)/", tail)
    return int(steps[-1]) if steps else 0


def test_exhausted_restart_budget_fails_the_job_naming_the_task(
    tmp_path, builtin_data, disttrain_home
):
    run_dir, log = tmp_path / "run", tmp_path / "launcher.log"
    proc = start_cli(
        "train",
        *small_job(
            run_dir,
            builtin_data,
            "--set",
            "train.steps=100000",
            "--set",
            "cluster.max_restarts=1",
            "--set",
            "eval.enabled=false",
        ),
        log_path=log,
    )
    try:
        for attempt in range(2):  # the first kill is restarted, the second ends the job
            wait_for(lambda: steps_after_last_restart(log) > 0, 240, "training", proc, log)
            os.kill(task_pid(disttrain_home, "t", "ps-0"), signal.SIGKILL)
            # Counted, not looked for after ps-0's last line: a restarted ps may print
            # before this poll comes round.
            wait_for(
                lambda n=attempt + 1: (
                    log.read_text().count("restarting ps-0") >= n or proc.poll() is not None
                ),
                60,
                "the launcher to react",
                log=log,
            )
        assert proc.wait(timeout=120) == 1
    finally:
        kill_tree(proc)
    state = job_state(disttrain_home, "t")
    assert state["result"] == "failed"
    assert state["reason"].startswith(
        "ps-0 exited with code -9; the restart budget (cluster.max_restarts = 1) is used up"
    )
    assert state["tasks"]["ps-0"]["restarts"] == 1
    assert all(not alive(info["pid"]) for info in state["tasks"].values() if info["pid"])
    assert "job failed: ps-0 exited with code -9" in log.read_text()


def test_sigint_to_the_launcher_leaves_no_process_behind(tmp_path, builtin_data, disttrain_home):
    run_dir, log = tmp_path / "run", tmp_path / "launcher.log"
    proc = start_cli(
        "train", *small_job(run_dir, builtin_data, "--set", "train.steps=100000"), log_path=log
    )
    try:
        wait_for(lambda: trained_step(log) > 0, 240, "training to start", proc, log)
        pids = [info["pid"] for info in job_state(disttrain_home, "t")["tasks"].values()]
        assert len(pids) == 5 and all(alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        assert exit_code(proc, log, timeout=60) == 130
    finally:
        kill_tree(proc)
    assert not [p for p in pids if alive(p)]
    assert job_state(disttrain_home, "t")["result"] == "stopped"


def live_children(marked: str) -> list[int]:
    """This process's children still running (not zombies) with `marked` among their
    arguments: those a test started, not the session's (Azurite's, say)."""
    children = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            arguments = (proc / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and marked.encode() in arguments:
            children.append(int(proc.name))
    return children


def interrupt_while_starting(supervisor: Supervisor, started: int) -> None:
    """SIGINT to this process once `supervisor` has started `started` tasks and is inside
    Popen starting the next one (or has started them all): a signal there lands while a
    child exists that is not recorded yet."""
    main_thread = threading.main_thread().ident
    while len(supervisor.procs) < len(supervisor.by_task):
        if len(supervisor.procs) >= started and "_execute_child" in calls_in(main_thread):
            break
        time.sleep(0.0002)
    os.kill(os.getpid(), signal.SIGINT)


def calls_in(thread_id: int) -> set[str]:
    """The names of the functions `thread_id` is in now."""
    frame, names = sys._current_frames().get(thread_id), set()
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return names


def test_a_ctrl_c_while_tasks_start_stops_every_task_it_started(disttrain_home):
    """Ctrl-C lands while the supervisor is inside Popen starting one of 12 tasks, a
    different one each time. Every process it started is recorded in job.json, stopped
    and reaped: none goes on running unseen, and the stop is not lost (a signal that
    another thread takes must not cut a start short either)."""
    config, launcher = load_job(None, ["cluster.workers=9", "cluster.ps=1"])
    plan = launcher.plan(config)
    marker = f"sleeper-of-{os.getpid()}"
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)", marker]
    plan.tasks = [dataclasses.replace(t, command=sleeper, env={}) for t in plan.tasks]
    Path(plan.state_dir, "logs").mkdir(parents=True)
    assert len(plan.tasks) == 12 and live_children(marker) == []
    for started_before_the_signal in range(1, 12):
        supervisor = Supervisor(plan, config, LauncherOwner.this_process())
        interrupter = threading.Thread(
            target=interrupt_while_starting,
            args=(supervisor, started_before_the_signal),
            daemon=True,
        )
        interrupter.start()
        try:
            assert supervisor.run(prepare=lambda: None) == INTERRUPTED
            interrupter.join(timeout=10)
            time.sleep(0.5)  # a child forked as the signal came has exec'd by now
            state = json.loads(Path(plan.state_dir, "job.json").read_text())
            assert live_children(marker) == [], (started_before_the_signal, state["tasks"])
            assert state["result"] == "stopped"
        finally:
            for pid in live_children(marker):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def test_ctrl_c_before_the_first_checkpoint_leaves_a_new_run_dir_empty(
    tmp_path, builtin_data, disttrain_home
):
    run_dir, log = tmp_path / "run", tmp_path / "launcher.log"
    proc = start_cli("train", *small_job(run_dir, builtin_data), log_path=log)
    try:
        wait_for(lambda: (run_dir / "config.yaml").exists(), 120, "config.yaml", proc, log)
        proc.send_signal(signal.SIGINT)
        assert exit_code(proc, log, timeout=60) == 130
    finally:
        kill_tree(proc)
    assert list(run_dir.iterdir()) == []
    assert "interrupted before the first checkpoint: removed what the job wrote" in log.read_text()


def test_stop_from_another_terminal_ends_the_job_and_keeps_the_steps_it_trained(
    tmp_path, builtin_data, disttrain_home
):
    """`stop` sends SIGTERM: the chief publishes a checkpoint of the steps it trained (the
    servers keep serving until it has), and every task exits within the grace period."""
    run_dir, log = tmp_path / "run", tmp_path / "launcher.log"
    sets = ("train.steps=100000", "checkpoint.every_steps=100000", "cluster.workers=1")
    args = [a for key_value in sets for a in ("--set", key_value)]
    proc = start_cli("train", *small_job(run_dir, builtin_data, *args), log_path=log)
    try:
        reported = wait_for(lambda: trained_step(log), 240, "training to start", proc, log)
        pids = [info["pid"] for info in job_state(disttrain_home, "t")["tasks"].values()]
        assert "stopped launcher" in cli("stop", "t", check=True).stdout
        exit_code(proc, log, timeout=60)
    finally:
        kill_tree(proc)
    assert not [p for p in pids if alive(p)]
    assert "job t: stopped" in cli("status", "t", check=True).stdout
    text = log.read_text()
    assert 0 < reported <= latest_step(run_dir) == trained_step(log), text[-3000:]
    assert f"preempted | ckpt-{latest_step(run_dir)} published" in text
    assert "ps-0 | preempted | stopped serving: the chief has gone" in text


@pytest.mark.parametrize(
    ("workers", "ps", "strategy"),
    [
        (1, 0, "CollectiveAllReduceStrategy"),  # the class behind MultiWorkerMirroredStrategy
        (0, 0, "_DefaultDistributionStrategy"),
    ],
)
def test_shapes_without_ps_train_synchronously_or_alone(
    tmp_path, builtin_data, disttrain_home, workers, ps, strategy
):
    run_dir = tmp_path / "run"
    result = cli(
        "train",
        *small_job(
            run_dir,
            builtin_data,
            "--set",
            "train.steps=60",
            "--set",
            "checkpoint.every_steps=30",
            "--set",
            f"cluster.workers={workers}",
            "--set",
            f"cluster.ps={ps}",
        ),
        check=True,
    )
    assert f"strategy: {strategy}" in result.stdout
    assert [
        json.loads(x)["step"] for x in (run_dir / "eval" / "results.jsonl").read_text().splitlines()
    ] == [30, 60]
    assert json.loads((run_dir / "DONE").read_text())["step"] == 60
