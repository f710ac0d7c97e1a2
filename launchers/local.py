"""The local launcher: every task as a process on this machine, supervised.

`plan` turns a config into the exact commands, environments and ports of every task;
`submit` starts that plan and supervises it in the foreground, applying the
failure semantics within `cluster.max_restarts`:

* a worker or the evaluator that fails is restarted alone (the coordinator reschedules
  the worker's chunks);
* a ps or the chief that fails takes the chief and every ps down with it; they restart
  together and the chief resumes from the latest published checkpoint;
* without ps (MultiWorkerMirroredStrategy), a chief or worker that fails takes every
  chief and worker down: they restart together from the latest published checkpoint;
* a task whose heartbeat file (disttrain/heartbeat.py) is older than
  `cluster.hung_task_seconds`, stopped or frozen, is killed and then fails as above;
* a task that exits 4 fails the job at once; one that exits 5 (it stopped on SIGTERM from
  elsewhere, disttrain/preemption.py) restarts as above without spending the budget.

Ctrl-C and `stop` send SIGTERM to every task and SIGKILL after
`launcher.local.stop_grace_seconds`: the chief publishes its last checkpoint meanwhile.

The job succeeds when the chief exits 0; workers, ps and the evaluator then stop on their
own. Each job keeps a state folder (`job.json`, one log per task) that `status`, `logs`
and `stop` read, also from another terminal. The launcher holds the job's name from before
it writes anything until it exits (`launchers/local_state.py`), and `job.json` exists from
then on: `status` and `stop` work during start-up, and a launcher that died is seen as
"launcher lost" (`stop` then cleans up after it).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache, partial
from pathlib import Path
from typing import Any, ClassVar

from disttrain.cluster import (
    CHIEF,
    EVALUATOR,
    PS,
    TASK_ENV,
    WORKER,
    ClusterShape,
    Task,
    tasks_of,
    tf_config_json,
)
from disttrain.config import Config, ConfigError, Rule, dump_config
from disttrain.failures import EXIT_PREEMPTED, EXIT_UNRECOVERABLE
from disttrain.heartbeat import HEARTBEAT_ENV, silent_for
from disttrain.preemption import GRACE_ENV
from disttrain.progress import LOGGER
from launchers import Launcher, LauncherError, Plan
from launchers.console import JobConsole, LineFilter
from launchers.cpu_pinning import (
    cpus_of_task,
    format_cpu_list,
    pin_this_process,
    pinning_problems,
    task_count_problems,
    usable_cpus,
)
from launchers.job_status import JobList, JobStatus, training_progress
from launchers.local_resources import check_resources
from launchers.local_state import (
    LauncherOwner,
    hold_job_name,
    is_running,
    lock_owner,
    name_is_held,
    refuse_if_held,
    start_time_of,
    write_job_state,
)
from launchers.prepare import (
    check_inputs,
    check_training_installed,
    discard_untrained,
    final_report,
    holds_nothing,
    prepare_run_dir,
    release_run_dir,
)

POLL_SECONDS = 0.2
# A task that ignores SIGTERM this long is killed; a launcher that has not let go of its
# job's name after twice as long, too. The tasks know it (preemption.GRACE_ENV).
STOP_GRACE_SECONDS = 30.0
INTERRUPTED = 130  # the job's exit code after Ctrl-C or `disttrain stop`, as a shell's
# A launcher that could not poll for this long (stopped, or its machine suspended) gives
# every task a new heartbeat timeout: their silence was its own.
LAUNCHER_PAUSE_SECONDS = 5.0
# Once the chief is done, servers notice DONE within seconds; the evaluator may still be
# evaluating the last checkpoint.
AFTER_CHIEF_GRACE_SECONDS = 180.0
FIRST_TASK_PORT = 10000  # below it: databases, proxies, dev servers
# A job whose launcher still runs (or ran until it was killed) says one of these.
LIVE_RESULTS = ("starting", "running")
LAUNCHER_LOST = "launcher lost"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def console_verbosity() -> str:
    """The CLI's -v/-q, as this process's log level holds them."""
    if LOGGER.isEnabledFor(logging.DEBUG):
        return "verbose"
    return "quiet" if LOGGER.level >= logging.WARNING else "normal"


def default_state_dir() -> Path:
    return Path(os.environ.get("DISTTRAIN_HOME") or Path.home() / ".disttrain") / "local"


@dataclass
class LocalOptions:
    """The `launcher.local` section. Each job's state and logs live under
    $DISTTRAIN_HOME/local/<name> (~/.disttrain)."""

    # The address in every task's TF_CONFIG (TensorFlow's servers listen on every interface).
    host: str = "127.0.0.1"
    # Task ports are picked free at random from here up, outside the kernel's ephemeral
    # range (a firewall rule can then open exactly this range).
    first_port: int = FIRST_TASK_PORT
    # Start a job that the resource check says this machine cannot hold (`--force`).
    force: bool = field(default=False, metadata={"flag": "force"})
    # Take the run dir over from the job that holds its lease (`--take-over`); that job's
    # chief and evaluator stop at their next write. Not implied by --force.
    take_over: bool = field(default=False, metadata={"flag": "take-over"})
    # Ctrl-C and `stop`: SIGTERM, at most this long to exit (the chief publishes its last
    # checkpoint, disttrain/preemption.py), then SIGKILL.
    stop_grace_seconds: float = STOP_GRACE_SECONDS
    # Role -> the CPUs its tasks run on (os.sched_setaffinity): one CPU list for every task
    # of the role, or a list with one per task (launchers/cpu_pinning.py). {}: no pinning.
    cpus: dict[str, Any] = field(default_factory=dict)

    RULES: ClassVar[dict[str, Rule]] = {
        "stop_grace_seconds": (lambda v: v > 0, "a number of seconds > 0"),
        "host": (lambda v: bool(v.strip()) and " " not in v, "a host name or IP address"),
        "first_port": (lambda v: 1024 <= v <= 65535, "a port from 1024 to 65535"),
    }

    def cross_field_problems(self, prefix: str = "") -> list[ConfigError]:
        """CPUs that are not this machine's, or not written as CPU lists."""
        return pinning_problems(self.cpus, prefix + "cpus", usable_cpus())


@dataclass
class TaskPlan:
    task: Task
    command: list[str]
    env: dict[str, str]  # only what the launcher adds to the inherited environment
    log_path: str
    cpus: frozenset[int] = frozenset()  # pinned to these (launcher.local.cpus); empty: not


@dataclass
class LocalPlan(Plan):
    config: Config = field(default_factory=Config)
    state_dir: str = ""
    config_path: str = ""
    tasks: list[TaskPlan] = field(default_factory=list)
    stop_grace_seconds: float = STOP_GRACE_SECONDS

    def render(self) -> str:
        """Each task's environment and command: exactly what `submit` starts, ports included."""
        lines = [f"# job {self.name}: {len(self.tasks)} local processes; config {self.config_path}"]
        for t in self.tasks:
            lines.append(f"[{t.task.name}]")
            lines += [f"  {key}={value}" for key, value in t.env.items()]
            if t.cpus:
                lines.append(f"  cpus: {format_cpu_list(t.cpus)}")
            lines.append("  " + " ".join(t.command))
        return "\n".join(lines)


def plan_job(
    config: Config, options: LocalOptions, memory: int | None = None, cores: int | None = None
) -> LocalPlan:
    """Ports, commands and environments of every task. The ports are picked here, free now:
    a plan rendered and then submitted starts the TF_CONFIG it showed. A job this machine
    cannot hold (`memory` and `cores`: this machine's unless given) is refused here, before
    a port is picked or a task started, unless `options.force`."""
    config = prepare_config(config)
    state_dir = default_state_dir() / config.name
    shape = ClusterShape.of(config)
    host = options.host
    every_task = tasks_of(shape)
    try:
        warnings = check_resources(len(every_task), options.force, memory, cores)
    except ValueError as exc:
        raise ConfigError(f"cluster: {exc}", "cluster.workers") from None
    miscounted = task_count_problems(options.cpus, shape, "launcher.local.cpus")
    if miscounted:
        raise ConfigError("; ".join(miscounted), "launcher.local.cpus")
    ports = {
        (t.role, t.index): p
        for t, p in zip(every_task, free_ports(len(every_task), options.first_port))
    }

    def address_of(role: str, index: int) -> str:
        return f"{host}:{ports[(role, index)]}"

    config_path = str(state_dir / "config.yaml")
    tasks = []
    for task in every_task:
        env = {
            "TF_CONFIG": tf_config_json(shape, address_of, task),
            **TASK_ENV,
            GRACE_ENV: f"{options.stop_grace_seconds:g}",
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
        if config.cluster.hung_task_seconds:
            env[HEARTBEAT_ENV] = str(state_dir / "heartbeats" / task.name)
        command = [sys.executable, "-m", "disttrain", "task", "--config", config_path]
        log_path = str(state_dir / "logs" / f"{task.name}.log")
        tasks.append(TaskPlan(task, command, env, log_path, cpus_of_task(options.cpus, task)))
    return LocalPlan(
        config.name,
        warnings,
        config,
        str(state_dir),
        config_path,
        tasks,
        options.stop_grace_seconds,
    )


def free_ports(count: int, first: int | None = None) -> list[int]:
    """`count` distinct ports nothing is bound to, from outside the kernel's ephemeral range.

    Inside that range, a port can be taken before its task listens by any outgoing
    connection's source port, even by a peer's own early dial to it (a TCP self-connect),
    and the task then fails on every restart. Each probe socket stays bound until all are
    picked: a port closed at once can be handed out again for the next task.
    """
    probes: list[socket.socket] = []
    try:
        for port in _candidate_ports(count, FIRST_TASK_PORT if first is None else first):
            probe = socket.socket()
            try:
                probe.bind(("0.0.0.0", port))  # TensorFlow's servers bind every address
            except OSError:
                probe.close()
                continue
            probes.append(probe)
            if len(probes) == count:
                return [probe.getsockname()[1] for probe in probes]
        raise RuntimeError(f"found only {len(probes)} free ports for {count} local tasks")
    finally:
        for probe in probes:
            probe.close()


def _candidate_ports(count: int, first: int) -> Iterator[int]:
    """Random ports above the well-known services' and outside the ephemeral range."""
    low, high = _ephemeral_port_range()
    candidates = [*range(first, low), *range(max(high + 1, first), 65536)]
    yield from random.sample(candidates, len(candidates))
    yield from itertools.repeat(0, count)  # none of them is free: let the kernel choose


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535  # IANA's range, which macOS uses


class LocalLauncher(Launcher):
    name = "local"
    sections = {"local": LocalOptions}

    def plan(self, config: Config) -> LocalPlan:
        return plan_job(config, self.options["local"])

    def submit(self, plan: Plan, wait: bool = True, follow: bool = True) -> int:
        assert isinstance(plan, LocalPlan)
        check_training_installed()
        job, config = plan, plan.config
        take_over = self.options["local"].take_over
        refuse_if_held(Path(job.state_dir))
        check_inputs(config, print, take_over)
        run_dir_was_new = holds_nothing(config)

        def prepare() -> None:
            prepare_run_dir(config, print, take_over)
            Path(job.state_dir, "logs").mkdir(parents=True, exist_ok=True)
            Path(job.config_path).write_text(dump_config(config))

        # Refused here, naming the holder, if another launcher holds the name: before
        # this, nothing of the job is written (its config.yaml, job.json, logs).
        with hold_job_name(Path(job.state_dir)) as owner:
            try:
                code = Supervisor(job, config, owner).run(prepare)
                if code == INTERRUPTED and run_dir_was_new:
                    discard_untrained(config, print)
            finally:
                release_run_dir(config, print)
        if code == 0:
            print(final_report(config))
        return code

    def job_status(self, name: str) -> JobStatus:
        state = _read_state(default_state_dir() / name)
        tasks = [
            {
                "task": task_name,
                "state": _task_state(info, state["result"] == LAUNCHER_LOST),
                "pid": info.get("pid"),
                "restarts": info.get("restarts", 0),
                "log": info["log"],
            }
            for task_name, info in state["tasks"].items()
        ]
        chief = state["tasks"].get(f"{CHIEF}-0")
        progress = training_progress(
            _tail(Path(chief["log"])) if chief else "",
            running=state["result"] in LIVE_RESULTS,
            run_dir=state.get("run_dir"),
        )
        return JobStatus(name, state["result"], state.get("reason", ""), None, tasks, progress)

    def describe(self, name: str) -> str:
        state = _read_state(default_state_dir() / name)
        launcher_pid = state.get("launcher_pid")
        alive = "running" if state["result"] in LIVE_RESULTS else "gone"
        lines = [
            f"job {name}: {state['result']}"
            + (f" ({state['reason']})" if state.get("reason") else ""),
            f"run dir: {state.get('run_dir')}",
            f"launcher: pid {launcher_pid} ({alive})",
        ]
        lost = state["result"] == LAUNCHER_LOST
        for task_name, info in state["tasks"].items():
            lines += _describe_task(task_name, info, lost)
        return "\n".join(lines)

    def list_jobs(self) -> JobList:
        root = default_state_dir()
        jobs = []
        for path in sorted(root.glob("*/job.json")):
            state = _read_state(path.parent)
            updated = time.localtime(path.stat().st_mtime)
            jobs.append(
                {
                    "name": path.parent.name,
                    "result": state["result"],
                    "tasks": len(state["tasks"]),
                    "updated": time.strftime("%Y-%m-%d %H:%M", updated),
                    "run_dir": state.get("run_dir"),
                }
            )
        return JobList(jobs, f"no local jobs in {root}")

    def logs(
        self, name: str, role: str | None, index: int, follow: bool, previous: bool = False
    ) -> None:
        if previous:
            raise LauncherError("--previous: a local task's log holds every restart already")
        state = _read_state(default_state_dir() / name)
        names = list(state["tasks"]) if role is None else [f"{role}-{index}"]
        for task_name in names:
            if task_name not in state["tasks"]:
                raise LauncherError(
                    f"job {name} has no task {task_name}; tasks: {', '.join(state['tasks'])}"
                )
        paths = {n: Path(state["tasks"][n]["log"]) for n in names}
        _print_logs(
            paths,
            follow and len(names) == 1,
            lambda: _read_state(default_state_dir() / name)["result"] in LIVE_RESULTS,
        )

    def stop(self, name: str) -> str:
        """Stop the launcher (it stops its tasks and records the job as stopped); then, as
        after a launcher that was lost, kill what is left and record the job stopped."""
        state_dir = default_state_dir() / name
        state = _read_state(state_dir)
        stopped, lost = [], state["result"] == LAUNCHER_LOST
        if not lost and name_is_held(state_dir):
            stopped.append(_stop_launcher(state_dir, state))
        with hold_job_name(state_dir):  # held: no launcher starts or writes job.json now
            state = json.loads((state_dir / "job.json").read_text())
            stopped += _kill_leftover_tasks(state)
            if state["result"] in LIVE_RESULTS:
                state["result"], state["reason"] = "stopped", "by `disttrain stop`"
                if lost:
                    state["reason"] += f" after its launcher (pid {state['launcher_pid']}) was lost"
                write_job_state(state_dir, state)
        said = f"stopped {', '.join(stopped)}" if stopped else "nothing was running"
        if lost:
            said = f"the launcher (pid {state.get('launcher_pid')}) was lost; {said}"
        return f"job {name}: {said}"


def _stop_launcher(state_dir: Path, state: dict) -> str:
    """SIGTERM to the launcher holding the name (SIGKILL if it still holds it after twice
    the tasks' grace), and wait until it let go; what was stopped."""
    owner = lock_owner(state_dir) or LauncherOwner(
        state.get("launcher_pid") or 0, state.get("launcher_start_time"), "", ""
    )
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not name_is_held(state_dir):
            break
        if is_running(owner.pid, owner.start_time):  # never a process that took its pid
            os.kill(owner.pid, sig)
        deadline = time.monotonic() + state.get("stop_grace_seconds", STOP_GRACE_SECONDS) * 2
        while name_is_held(state_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
    return f"launcher (pid {owner.pid})"


def _kill_leftover_tasks(state: dict) -> list[str]:
    """Kill the job's tasks still running (by pid and start time) and record every task
    that was running or pending as stopped; what was killed."""
    killed = []
    for task_name, info in state["tasks"].items():
        if is_running(info.get("pid"), info.get("start_time")):
            _kill_group(info["pid"])
            killed.append(f"{task_name} (pid {info['pid']})")
        if info.get("state") in ("running", "pending"):
            info["state"], info["pid"], info["start_time"] = "stopped", None, None
    return killed


def prepare_config(config: Config) -> Config:
    """A local run dir becomes absolute: every task resolves it the same way."""
    # A plain path, decided without opening storage: a dry run needs no credentials.
    if "://" not in config.run_dir:
        config = replace(config, run_dir=os.path.abspath(config.run_dir))
    return config


class Supervisor:
    """Starts the plan's processes, relays their output and applies the restart rules."""

    def __init__(self, job: LocalPlan, config: Config, owner: LauncherOwner):
        self.job, self.config, self.owner = job, config, owner
        self.by_task = {t.task: t for t in job.tasks}
        self.procs: dict[Task, subprocess.Popen] = {}
        self.start_times: dict[Task, int | None] = {}
        self.launched_at: dict[Task, float] = {}  # wall-clock, as heartbeat files' times
        self.polled_at = self.watching_since = time.time()
        self.killed_silent: set[int] = set()
        self.relays: dict[Task, threading.Thread] = {}
        self.restarts: dict[Task, int] = {t.task: 0 for t in job.tasks}
        self.finished: dict[Task, int] = {}
        self.last_exit: dict[Task, int] = {}  # every exit seen, failures included
        self.budget = config.cluster.max_restarts
        self.strategy = ClusterShape.of(config).strategy
        self.used = 0
        self.result, self.reason = "starting", ""
        self.saved_at = 0.0
        self.lock = threading.Lock()
        self.console = JobConsole(job.name)
        # Ctrl-C or `stop` (SIGINT, SIGTERM) sets this flag and raises KeyboardInterrupt,
        # unless a task is starting. The start-up and every poll check the flag too: a
        # handler runs wherever bytecode runs, and Python drops an exception raised in a
        # finalizer ("Exception ignored in ...").
        self.stop_requested = False
        self.starting_task = False

    def run(self, prepare: Callable[[], None]) -> int:
        """Record the job as starting (every task pending), `prepare` its run dir and
        config, start the tasks and supervise them; the job's exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._save_state()
            prepare()
            with self.console:
                return self._start_and_supervise()
        except KeyboardInterrupt:
            self._stop_all()
            self._end("stopped", "interrupted")
            return INTERRUPTED
        except BaseException as exc:  # a run dir refused, say: the record says so too
            self._stop_all()
            self._end("failed", str(exc) or type(exc).__name__)
            raise
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start_and_supervise(self) -> int:
        for task in self.by_task:
            self._stop_if_requested()
            self._start(task)
            self._save_state(every=POLL_SECONDS)  # not once a task: 500 tasks, 500 writes
        self.result = "running"
        self._save_state()
        return self._supervise()

    def _on_signal(self, signum, _frame) -> None:
        self.stop_requested = True
        if not self.starting_task:
            raise KeyboardInterrupt

    def _stop_if_requested(self) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt

    def _supervise(self) -> int:
        chief_done_at = None
        while True:
            for task, proc in list(self.procs.items()):
                if self.procs.get(task) is not proc:
                    continue  # killed and restarted with a failed member in this pass
                code = proc.poll()
                if code is None:
                    continue
                del self.procs[task]
                self.last_exit[task] = code
                if code == 0 or (chief_done_at and task.role != CHIEF):
                    self.finished[task] = code
                    if task.role == CHIEF:
                        chief_done_at = time.monotonic()
                        print(
                            "[launcher] chief finished; waiting for the other tasks to stop",
                            flush=True,
                        )
                    continue
                failure = self._handle_failure(task, code)
                if failure:
                    return failure
            self._kill_silent_tasks()
            self._save_state()
            self._stop_if_requested()
            if chief_done_at and not self.procs:
                self._end("succeeded", "")
                return 0
            if chief_done_at and time.monotonic() - chief_done_at > AFTER_CHIEF_GRACE_SECONDS:
                left = ", ".join(t.name for t in self.procs)
                print(
                    f"[launcher] WARNING: {left} still running "
                    f"{AFTER_CHIEF_GRACE_SECONDS:.0f}s after the chief finished; stopping them",
                    flush=True,
                )
                self._stop_all()
                self._end("succeeded", f"stopped {left} after the chief finished")
                return 0
            time.sleep(POLL_SECONDS)

    def _handle_failure(self, task: Task, code: int) -> int:
        """Restart what the failure semantics say to restart; a non-zero return ends the job."""
        reason = ""
        if code == EXIT_UNRECOVERABLE:  # the task said a restart would fail the same way
            reason = f"{task.name} stopped: {self._last_error(task)}"
        elif self.used >= self.budget and code != EXIT_PREEMPTED:
            reason = (
                f"{task.name} exited with code {code}; the restart budget "
                f"(cluster.max_restarts = {self.budget}) is used up"
            )
        if reason:
            print(f"[launcher] job failed: {reason}; see {self.by_task[task].log_path}", flush=True)
            self._stop_all()
            self._end("failed", reason)
            return 1
        group = self._restarted_with(task)
        if code == EXIT_PREEMPTED:  # asked to stop (SIGTERM from outside), not a failure
            spent = f"not counted: it stopped on SIGTERM; {self.used}/{self.budget} restarts used"
        else:
            self.used += 1
            spent = f"{self.used}/{self.budget} restarts used"
        print(
            f"[launcher] {task.name} exited with code {code}; restarting "
            f"{', '.join(t.name for t in group)} ({spent})",
            flush=True,
        )
        stopped = [self.procs.pop(member) for member in group if member in self.procs]
        for proc in stopped:
            _kill_group(proc.pid)
        for proc in stopped:  # gone before the restart takes their ports again
            proc.wait()
        for member in group:
            self.restarts[member] += 1
            self._start(member)
        return 0

    def _kill_silent_tasks(self) -> None:
        """SIGKILL every task whose heartbeat is older than `cluster.hung_task_seconds`
        (stopped, or frozen): the next poll sees it exit and restarts it as a crashed one."""
        limit, now = self.config.cluster.hung_task_seconds, time.time()
        if now - self.polled_at > LAUNCHER_PAUSE_SECONDS:
            self.watching_since = now
        self.polled_at = now
        for task, proc in self.procs.items():
            heartbeat = self.by_task[task].env.get(HEARTBEAT_ENV)
            if not heartbeat or proc.pid in self.killed_silent:
                continue
            since = max(self.launched_at[task], self.watching_since)
            silent = silent_for(Path(heartbeat), since, now)
            if silent > limit:
                print(
                    f"[launcher] {task.name} sent no heartbeat for {silent:.0f}s "
                    f"(cluster.hung_task_seconds = {limit}): stopped or hung; killing it",
                    flush=True,
                )
                _kill_group(proc.pid)
                self.killed_silent.add(proc.pid)  # not waited for: it may be stuck in the kernel

    def _last_error(self, task: Task) -> str:
        """The `error: ...` line a task prints before exiting with EXIT_UNRECOVERABLE."""
        self.relays[task].join(timeout=10)  # its last lines may still be on their way
        tail = Path(self.by_task[task].log_path).read_bytes()[-20000:].decode(errors="replace")
        errors = [line for line in tail.splitlines() if line.startswith("error: ")]
        return errors[-1].removeprefix("error: ") if errors else "see its log"

    def _restarted_with(self, failed: Task) -> list[Task]:
        """The tasks that restart when `failed` exits non-zero (the failure semantics above)."""
        if failed.role == EVALUATOR:
            return [failed]
        if self.strategy == "multi_worker_mirrored":
            # Every member meets the others in each step's all-reduce: one gone aborts the
            # rest, so they restart together (one restart, not one per member).
            return [t for t in self.by_task if t.role in (CHIEF, WORKER)]
        if failed.role == WORKER:
            return [failed]  # the coordinator reschedules its chunks
        # A ps or the chief: the variables are gone, so the chief and every ps restart.
        return [t for t in self.by_task if t.role in (PS, CHIEF)]

    def _start(self, task: Task) -> None:
        plan_ = self.by_task[task]
        log_file = open(plan_.log_path, "ab")
        if self.restarts[task]:
            log_file.write(f"--- restart {self.restarts[task]} ---\n".encode())
        with self._stop_signals_deferred():  # none is started unseen, or unread
            proc = start_task_process(plan_)
            self.procs[task] = proc
            self.start_times[task] = start_time_of(proc.pid)
            self.launched_at[task] = time.time()
            relay = threading.Thread(target=self._relay, args=(task, proc, log_file), daemon=True)
            relay.start()
            self.relays[task] = relay

    @contextmanager
    def _stop_signals_deferred(self) -> Iterator[None]:
        """A Ctrl-C or `stop` that comes meanwhile takes effect at the end. Not a blocked
        signal mask: that is per thread, another thread takes the signal, and the main
        thread's handler then runs inside Popen, leaving a started process unrecorded."""
        self.starting_task = True
        try:
            yield
        finally:
            self.starting_task = False
            self._stop_if_requested()

    def _relay(self, task: Task, proc: subprocess.Popen, log_file) -> None:
        prefix = f"[{task.name}] "
        echo, console = True, LineFilter(console_verbosity())
        with log_file:
            for line in iter(proc.stdout.readline, b""):
                log_file.write(line)
                log_file.flush()
                if not console.shows(line) or not echo:
                    continue
                try:
                    with self.lock:
                        self.console.show(prefix, line)
                except OSError:  # a closed terminal or `| head`: keep draining to the log,
                    echo = False  # or the task would block on a full pipe

    def _stop_all(self) -> None:
        procs = list(self.procs.values())
        for proc in procs:
            _kill_group(proc.pid, signal.SIGTERM)
        _wait_for_exit(procs, self.job.stop_grace_seconds)
        for proc in procs:
            _kill_group(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()
        self.procs.clear()

    def _end(self, result: str, reason: str) -> None:
        self.result, self.reason = result, reason
        self._save_state()

    def _task_state(self, task: Task) -> str:
        if task in self.procs:
            return "running"
        if task in self.finished:
            return f"exited {self.finished[task]}"
        return "stopped" if task in self.start_times else "pending"

    def _save_state(self, every: float = 0.0) -> None:
        """Write job.json (at most once in `every` seconds)."""
        if time.monotonic() - self.saved_at < every:
            return
        self.saved_at = time.monotonic()
        tasks = {}
        for task, plan_ in self.by_task.items():
            proc = self.procs.get(task)
            tasks[task.name] = {
                "pid": proc.pid if proc else None,
                "start_time": self.start_times.get(task) if proc else None,
                "state": self._task_state(task),
                "restarts": self.restarts[task],
                "last_exit": self.last_exit.get(task),
                "log": plan_.log_path,
                "command": plan_.command,
                "env": plan_.env,
                "cpus": format_cpu_list(plan_.cpus),
            }
        state = {
            "name": self.job.name,
            "launcher_pid": self.owner.pid,
            "launcher_start_time": self.owner.start_time,
            "started_at": self.owner.started_at,
            "result": self.result,
            "reason": self.reason,
            "run_dir": self.config.run_dir,
            "stop_grace_seconds": self.job.stop_grace_seconds,
            "tasks": tasks,
        }
        write_job_state(Path(self.job.state_dir), state)


def start_task_process(task: TaskPlan) -> subprocess.Popen:
    """The task's process, started as its plan says (output to a pipe, its own session)."""
    return subprocess.Popen(
        task.command,
        env={**os.environ, **task.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=partial(_prepare_task_process, task.cpus, _libc_prctl()),
    )


def _prepare_task_process(cpus: frozenset[int], prctl: Callable[..., int] | None) -> None:
    """In the task, between fork and exec: run on its CPUs, and die with the launcher
    (Linux: SIGKILL when the launcher dies, so no process outlives the job).

    Only system calls here, nothing imported, loaded or looked up: the launcher has relay
    threads, and Python's documentation warns that such a child can deadlock before its
    exec, taking the launcher with it (Popen waits for the exec)."""
    pin_this_process(cpus)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@cache
def _libc_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the launcher; None where there is none (macOS)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_for_exit(procs: list[subprocess.Popen], timeout: float) -> None:
    """Until every one has exited; not reaped, so their pids (and groups) stay theirs."""
    deadline = time.monotonic() + timeout
    while any(start_time_of(p.pid) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)


def _read_state(state_dir: Path) -> dict:
    """job.json as `status`, `list`, `describe` and `logs` show it: a job recorded as
    starting or running whose launcher no longer holds the name is "launcher lost"."""
    path = state_dir / "job.json"
    if not path.is_file():
        known = sorted(p.parent.name for p in state_dir.parent.glob("*/job.json"))
        raise LauncherError(
            f"no local job named {state_dir.name!r} (state folder {state_dir}); "
            f"known jobs: {', '.join(known) or 'none'}"
        )
    state = json.loads(path.read_text())
    if state["result"] in LIVE_RESULTS and not name_is_held(state_dir):
        state["result"] = LAUNCHER_LOST
        state["reason"] = (
            f"its launcher (pid {state.get('launcher_pid')}) ended without recording the "
            f"job's end; `disttrain stop {state_dir.name}` stops what is left"
        )
    return state


def _task_state(info: dict, launcher_lost: bool) -> str:
    """A task's state as its launcher recorded it; once the launcher is lost, its record of
    a running task is checked: running if that process (pid and start time) still runs."""
    recorded = info.get("state", "exited")
    if not launcher_lost or recorded != "running":
        return recorded
    return "running" if is_running(info.get("pid"), info.get("start_time")) else "gone"


def _describe_task(task_name: str, info: dict, launcher_lost: bool) -> list[str]:
    """A task's state, last exit code and last log line, then its environment and command."""
    state = _task_state(info, launcher_lost)
    last_exit = info.get("last_exit")
    lines = [f"[{task_name}]"]
    lines.append(
        f"  state: {state}"
        + (f", pid {info['pid']}" if state == "running" else "")
        + f", restarts {info.get('restarts', 0)}"
        + f", last exit code {'-' if last_exit is None else last_exit}"
    )
    lines += [f"  env: {key}={value}" for key, value in info.get("env", {}).items()]
    if info.get("cpus"):
        lines.append(f"  cpus: {info['cpus']}")
    lines.append("  command: " + " ".join(info.get("command", [])))
    last_line = next((ln for ln in reversed(_tail(Path(info["log"])).splitlines()) if ln), "")
    lines += [f"  log: {info['log']}", f"  last log line: {last_line or '-'}"]
    return lines


def _tail(path: Path, size: int = 65536) -> str:
    """The end of a log: its last lines, for the last progress line."""
    try:
        with open(path, "rb") as log:
            log.seek(max(log.seek(0, os.SEEK_END) - size, 0))
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _print_logs(paths: dict[str, Path], follow: bool, still_running) -> None:
    for name, path in paths.items():
        prefix = f"[{name}] " if len(paths) > 1 else ""
        with open(path, errors="replace") as f:
            while True:
                line = f.readline()
                if line:
                    sys.stdout.write(prefix + line)
                    continue
                if not follow or not still_running():
                    break
                sys.stdout.flush()
                time.sleep(0.5)
    sys.stdout.flush()
