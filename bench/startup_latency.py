"""How long the chief waits to train: locally, against importing TensorFlow (issue 13), and
on Kubernetes vs the local launcher (issue 6).

    .venv/bin/python bench/startup_latency.py [--rounds 3] [--local-only]

The local part needs no root. Alternating, --rounds times each, it times
`python -c "import tensorflow"`, four of them started at once, and the local job below,
then prints where the chief's seconds went, phase by phase, from its `startup | first
step: ...` line (disttrain/startup.py; medians over the rounds), and the ratio of the
chief's wait (process start -> first `train | step:` line) to the import, against issue
13's target of 2.0. The four imports at once are the floor: the chief, both workers and
the ps import TensorFlow before the first step, on the same cores.

The Kubernetes part needs root and `ip` (the test cluster, tests/kubecluster, runs pods as
real processes in network namespaces) and kubectl/helm in .tools/bin (`make tools`); without
them, or with --local-only, it is skipped. In one run it starts the test cluster, then,
alternating, --rounds times each:

* k8s: `disttrain train --launcher k8s --wait` with the end-to-end test's job (chief,
  2 workers, 1 ps, evaluator; builtin data and run dir on the cluster's Azure Files share;
  tests/kubecluster/disttrain_jobs.job_args), in a fresh namespace deleted afterwards;
* local: `disttrain train --launcher local` with the same --set arguments but the run dir
  (a scratch folder) and the name; data.root is the very same dataset folder on the host.

Measured per run (wall clock, `time.time()`):

* job wall time: from starting the CLI to its exit. On k8s `--wait` returns once the Job
  succeeds (the chief finished); the local launcher also waits for the other tasks to stop
  (they stop on DONE within a poll or two).
* chief wait: from the chief's start to its first progress line `train | step: N/200`.
  - k8s "pod created": the moment this process, polling the in-process API server's store
    every 50 ms, first sees the chief pod. Its metadata.creationTimestamp has whole-second
    resolution (as on a real API server), so it is only checked to be consistent (<= seen).
  - k8s "container start" and local "process start": the start time of the chief's process
    from /proc/PID/stat (10 ms ticks since boot, turned into wall time through
    CLOCK_BOOTTIME). On k8s that pid is the kubelet's `ip netns exec` child, which execs
    podinit.py and then `disttrain task` in place, so it is the container's start.
  - first step: log lines carry no timestamps, so the chief's log file (the kubelet's
    per-container log; the local launcher's per-task log) is polled every 50 ms and a line
    is stamped when it first appears. Both writers flush every line at once.
  Accuracy is about +-0.05 s. The chief prints its first progress line after its first
  chunk of steps comes back and no sooner than train.log_every_seconds (1 s) after the loop
  starts, the same rule under both launchers.

The ratio printed is k8s (pod created -> first step) over local (process start -> first
step), of the medians. The cluster and every process are torn down on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubecluster import TOOLS_BIN, KubeCluster, unavailable_reason  # noqa: E402
from kubecluster.disttrain_jobs import (  # noqa: E402
    SHARE,
    create_storage_secret,
    job_args,
    pods_of,
    put_dataset_on_share,
)
from kubecluster.garbage import NAMESPACES, delete  # noqa: E402
from processes import kill_tree, start_cli  # noqa: E402

# After the log line's time and level (progress.LINE_FORMAT), or at a line's start.
FIRST_STEP = re.compile(r"(?:^|\s)train \| step:\s+\d+/", re.MULTILINE)
# The chief's start-up phases (disttrain/startup.py), after the log line's time and level.
STARTUP_LINE = re.compile(r"startup \| first step: ([\d.]+) s after process start \| (.*)$", re.M)
TARGET_RATIO = 2.0  # issue 13: first step <= 2.0x `import tensorflow`
# The job's tasks that import TensorFlow before the first step: chief, 2 workers, 1 ps.
IMPORTING_TASKS = 4
POLL_SECONDS = 0.05
TIMEOUT_SECONDS = 900


@dataclass
class Run:
    launcher: str
    wall: float  # CLI start -> CLI exit
    wait: float  # chief created (pod) / started (local process) -> first step line
    container_wait: float | None = None  # k8s only: container process start -> first step
    phases: dict[str, float] | None = None  # local only: the chief's start-up phases


@dataclass
class Measured:
    runs: list[Run] = field(default_factory=list)
    imports: list[float] = field(default_factory=list)  # one `import tensorflow` alone
    concurrent: list[float] = field(default_factory=list)  # IMPORTING_TASKS imports at once


def process_start_time(pid: int) -> float:
    """A live process's start as wall-clock time, from /proc (10 ms resolution)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def poll(what: str, probe, cli, log_path: Path):
    """`probe()`'s first truthy value, checked every POLL_SECONDS while the CLI runs."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if cli.poll() is not None:
            raise RuntimeError(
                f"disttrain exited {cli.returncode} before {what}:\n{log_path.read_text()[-3000:]}"
            )
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"timed out after {TIMEOUT_SECONDS}s waiting for {what}")


def first_step_arrival(log_files, cli, log_path: Path) -> float:
    """When a progress line first shows up in the chief's log (stamped on arrival)."""
    if any(FIRST_STEP.search(_text(p)) for p in log_files()):
        raise RuntimeError("the chief logged a step before its log was watched: no arrival time")
    poll(
        "the chief's first step",
        lambda: any(FIRST_STEP.search(_text(p)) for p in log_files()),
        cli,
        log_path,
    )
    return time.time()


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def finish(cli, log_path: Path, started: float) -> float:
    """The CLI's wall time; a failed job is an error, not a number."""
    code = cli.wait(timeout=TIMEOUT_SECONDS)
    wall = time.time() - started
    if code != 0:
        raise RuntimeError(f"disttrain exited {code}:\n{log_path.read_text()[-3000:]}")
    return wall


def run_k8s(cluster: KubeCluster, scratch: Path, name: str) -> Run:
    namespace = name
    cluster.create_namespace(namespace)
    create_storage_secret(cluster, namespace)
    env = {**cluster.env, "DISTTRAIN_HOME": str(scratch / "home-k8s")}
    log_path = scratch / f"{name}.out"
    started = time.time()
    cli = start_cli(
        "train", "--launcher", "k8s", "--wait", *job_args(namespace, name),
        log_path=log_path, env=env,
    )  # fmt: skip
    try:
        pod = poll(
            "the chief pod",
            lambda: pods_of(cluster, namespace, name, role="chief"),
            cli,
            log_path,
        )[0]
        created = time.time()
        _check_creation_timestamp(pod, created)
        pod_name, container = pod["metadata"]["name"], pod["spec"]["containers"][0]["name"]
        process = poll(
            "the chief container's process",
            lambda: cluster.kubelet.process_of(namespace, pod_name, container),
            cli,
            log_path,
        )
        container_started = process_start_time(process.pid)
        pods_folder = cluster.kubelet.root / "pods"
        first_step = first_step_arrival(
            lambda: pods_folder.glob(f"{namespace}_{pod_name}_*/logs/{container}/*.log"),
            cli,
            log_path,
        )
        wall = finish(cli, log_path, started)
    finally:
        kill_tree(cli)
        _delete_namespace(cluster, namespace)
    return Run("k8s", wall, first_step - created, first_step - container_started)


def _check_creation_timestamp(pod: dict, seen: float) -> None:
    stamp = datetime.datetime.strptime(
        pod["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"
    ).replace(tzinfo=datetime.timezone.utc)
    # Stamped in whole seconds (truncated) at creation; seen within a poll or two after.
    if not stamp.timestamp() <= seen < stamp.timestamp() + 1.5:
        raise RuntimeError(
            f"chief pod creationTimestamp {pod['metadata']['creationTimestamp']} is not within "
            f"a second before it was seen ({seen:.2f}): the pod-creation time is off"
        )


def _delete_namespace(cluster: KubeCluster, namespace: str) -> None:
    """Every pod gone before the next run, so no leftover task competes for the 2 CPUs."""
    delete(cluster.store, NAMESPACES, "", namespace)
    cluster.wait_for(
        f"namespace {namespace} to be deleted",
        lambda: cluster.get("Namespace", "", namespace) is None,
        timeout=120,
    )


def run_local(data_root: Path, scratch: Path, name: str) -> Run:
    home = scratch / f"home-{name}"
    log_path = scratch / f"{name}.out"
    local = ["--set", f"name={name}", "--set", f"run_dir={scratch / 'runs' / name}"]
    local += ["--set", f"data.root={data_root}"]  # the same files, seen from the host
    started = time.time()
    cli = start_cli(
        "train", "--launcher", "local", *job_args("unused", name), *local,
        log_path=log_path, env={"DISTTRAIN_HOME": str(home)},
    )  # fmt: skip
    try:
        state_file = home / "local" / name / "job.json"
        chief = poll("the chief process", lambda: _chief_of(state_file), cli, log_path)
        process_started = process_start_time(chief["pid"])
        first_step = first_step_arrival(lambda: [Path(chief["log"])], cli, log_path)
        wall = finish(cli, log_path, started)
    finally:
        kill_tree(cli)
    phases = startup_phases(_text(Path(chief["log"])))
    return Run("local", wall, first_step - process_started, phases=phases)


def startup_phases(chief_log: str) -> dict[str, float]:
    """The phases of the chief's `startup | first step: ...` line, and their total."""
    found = STARTUP_LINE.search(chief_log)
    if not found:
        raise RuntimeError("the chief logged no `startup | first step:` line")
    phases = {}
    for part in found.group(2).split(" | "):
        name, _, seconds = part.rpartition(": ")
        phases[name] = float(seconds)
    phases["first step (in the chief)"] = float(found.group(1))
    return phases


def time_tensorflow_import() -> float:
    """Wall seconds of `python -c "import tensorflow"`, start to exit, as a user waits."""
    started = time.time()
    # Its start-up banners are captured: they would interleave with the bench's table.
    subprocess.run(
        [sys.executable, "-c", "import tensorflow"], check=True, cwd=REPO, capture_output=True
    )
    return time.time() - started


def time_concurrent_imports(processes: int) -> float:
    """Wall seconds until `processes` concurrent `python -c "import tensorflow"` have all
    exited: the imports that must end before the chief's first step (chief, workers and ps
    import at once; the evaluator only after the first checkpoint), on the same cores."""
    started = time.time()
    importing = [
        subprocess.Popen(
            [sys.executable, "-c", "import tensorflow"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    if any([process.wait() != 0 for process in importing]):  # all waited for, then checked
        raise SystemExit("a concurrent `import tensorflow` failed")
    return time.time() - started


def phase_table(measured: Measured) -> str:
    """Phases (rows) by round (columns) with their medians, then the ratio to the import."""
    local = [r for r in measured.runs if r.launcher == "local"]
    imports, concurrent = measured.imports, measured.concurrent
    names = list(local[0].phases)
    header = f"{'phase (s)':<28}" + "".join(f"{f'run {i}':>8}" for i in range(1, len(local) + 1))
    lines = [header + f"{'median':>8}"]

    def row(name: str, values: list[float]) -> str:
        shown = "".join(f"{v:>8.2f}" for v in values)
        return f"{name:<28}{shown}{statistics.median(values):>8.2f}"

    for name in names:
        lines.append(row(name, [r.phases.get(name, float("nan")) for r in local]))
    lines.append(row("first `train | step:` line", [r.wait for r in local]))
    lines.append(row('python -c "import tensorflow"', imports))
    lines.append(row(f"{IMPORTING_TASKS} of them at once", concurrent))
    ratio = statistics.median(r.wait for r in local) / statistics.median(imports)
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    lines.append(
        f"ratio first step / import tensorflow (medians): {ratio:.2f}x "
        f"({verdict} the target of {TARGET_RATIO:.1f}x)"
    )
    floor = statistics.median(concurrent) / statistics.median(imports)
    lines.append(
        f"ratio {IMPORTING_TASKS} imports at once / one import (medians): {floor:.2f}x on "
        f"{os.cpu_count()} CPUs: no first step comes sooner, as the chief, the workers "
        "and the ps must each import TensorFlow before it"
    )
    return "\n".join(lines)


def _chief_of(state_file: Path) -> dict | None:
    try:
        chief = json.loads(state_file.read_text())["tasks"]["chief-0"]
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-replace
        return None
    return chief if chief.get("pid") else None


def report(runs: list[Run]) -> str:
    lines = [
        f"{'launcher':<8} {'round':>5} {'job wall (s)':>13} "
        f"{'chief wait (s)':>15} {'container start->step (s)':>26}"
    ]
    medians = {}
    for launcher, start in (("k8s", "pod created"), ("local", "process start")):
        mine = [r for r in runs if r.launcher == launcher]
        for number, r in enumerate(mine, 1):
            lines.append(_row(launcher, str(number), r.wall, r.wait, r.container_wait))
        container = [r.container_wait for r in mine if r.container_wait is not None]
        medians[launcher] = statistics.median(r.wait for r in mine)
        lines.append(
            _row(
                launcher,
                "med",
                statistics.median(r.wall for r in mine),
                medians[launcher],
                statistics.median(container) if container else None,
            )
        )
        lines.append(f"{'':<8} chief wait = {start} -> first `train | step:` line")
    ratio = medians["k8s"] / medians["local"]
    lines.append(f"ratio k8s/local of the chief's wait (medians): {ratio:.2f}x")
    return "\n".join(lines)


def _row(launcher: str, label: str, wall: float, wait: float, container: float | None) -> str:
    shown = f"{container:.2f}" if container is not None else "-"
    return f"{launcher:<8} {label:>5} {wall:>13.1f} {wait:>15.2f} {shown:>26}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-only", action="store_true", help="skip the Kubernetes part")
    args = parser.parse_args()
    reason = "--local-only" if args.local_only else unavailable_reason()
    missing = [tool for tool in ("kubectl", "helm") if not (TOOLS_BIN / tool).exists()]
    if not reason and missing:
        reason = f"{', '.join(missing)} missing in {TOOLS_BIN} (`make tools`)"
    if reason:
        print(f"Kubernetes part skipped: {reason}", flush=True)
    measured = Measured()
    with tempfile.TemporaryDirectory(prefix="startup-latency-") as folder:
        scratch = Path(folder)
        if reason:
            data_root = _builtin_data(scratch)
            run_rounds(args.rounds, ("local",), None, data_root, scratch, measured)
        else:
            with KubeCluster(scratch / "cluster") as cluster:
                put_dataset_on_share(cluster)
                data_root = cluster.share(SHARE) / "data"
                launchers = ("k8s", "local")
                run_rounds(args.rounds, launchers, cluster, data_root, scratch, measured)
    settings = dict(arg.split("=", 1) for arg in job_args("-", "-")[1::2])
    print(
        f"\nchief + 2 workers + 1 ps + evaluator, builtin data, "
        f"{settings['train.steps']} steps, {os.cpu_count()} CPUs (shared)"
    )
    if not reason:
        print(report(measured.runs))
    print(f"\nlocal: the chief's start-up, phase by phase (medians of {args.rounds} rounds)")
    print(phase_table(measured))


def run_rounds(rounds, launchers, cluster, data_root, scratch, measured: Measured) -> None:
    """Alternating: the import alone, the job's imports at once, then each launcher's job,
    `rounds` times."""
    for number in range(1, rounds + 1):
        measured.imports.append(time_tensorflow_import())
        print(f"round {number}: import tensorflow {measured.imports[-1]:.2f} s", flush=True)
        measured.concurrent.append(time_concurrent_imports(IMPORTING_TASKS))
        at_once = measured.concurrent[-1]
        print(f"round {number}: {IMPORTING_TASKS} imports at once {at_once:.2f} s", flush=True)
        for launcher in launchers:
            name = f"startup-{launcher}-{number}"
            print(f"round {number}: {launcher} ...", flush=True)
            run = (
                run_k8s(cluster, scratch, name)
                if launcher == "k8s"
                else run_local(data_root, scratch, name)
            )
            measured.runs.append(run)
            print(f"  wall {run.wall:.1f} s, chief wait {run.wait:.2f} s", flush=True)


def _builtin_data(scratch: Path) -> Path:
    from disttrain.data.builtin import ensure_builtin_dataset

    ensure_builtin_dataset(scratch / "data")
    return scratch / "data"


if __name__ == "__main__":
    main()
