"""Soak run (issue 14): short jobs with faults injected at random moments, then a check that
nothing is left behind.

    .venv/bin/python bench/soak.py [--local-jobs 10] [--cluster-jobs 3] [--seed N]
                                   [--skip-cluster]

Local part: --local-jobs consecutive `disttrain train --launcher local` jobs (chief,
2 workers, 1 ps, evaluator; built-in data, STEPS steps, a checkpoint every EVERY), each with
one fault drawn by the seeded RNG (the kinds dealt round-robin in a shuffled order, so
each kind comes up; the victim and the step at which it strikes drawn at random):

* sigkill: SIGKILL of one task, once the chief has reported the drawn step;
* sigterm: SIGTERM of one task, likewise (the tasks' grace period is GRACE_SECONDS);
* storage: the run dir in Azurite behind the fault proxy (tests/faulty_storage.py), which
  delays, fails (500/503) or resets STORAGE_FAULT_RATE of all requests, for the whole job.

Each job must end as README "Failure semantics" says: exit 0, `succeeded`, DONE and LATEST
at the configured step, every published checkpoint matching its MANIFEST (sha256), the
evaluator's results once per published checkpoint, the launcher's restart line for the
fault (a SIGKILL spends a restart, a SIGTERM does not; flaky storage restarts nothing), and
none of the job's processes alive afterwards.

Cluster part (needs root, `ip`, `nft`, kubectl/helm in .tools/bin; --skip-cluster skips it):
one test cluster (tests/kubecluster), --cluster-jobs concurrent `disttrain train --launcher
k8s --wait` jobs of CLUSTER_STEPS steps, each in its own namespace with one fault at a
random step: `kubectl delete pod` (SIGTERM and the grace period), SIGKILL of the
container's process, or an eviction through the eviction API. Each must complete with
DONE and LATEST at the configured step, intact checkpoints, results once per checkpoint,
and every pod of the job ended within SETTLE_SECONDS of its success (they stop on DONE).

Afterwards it looks for what the run left: processes (found by a marker in their
environment, or the run's scratch folder in their command line or environment: local
tasks, pods' processes, Azurite), the cluster's network namespaces, /etc/netns folders and
host links, host nft rules and iptables rules that were not there at the start, and the
Azurite and proxy ports still answering. It prints one line per job (fault, when, outcome,
seconds), then PASS or FAIL with every problem and leftover, and exits 1 on any failure.
The scratch folder (logs of every job) is kept when something failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from itertools import cycle
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from azurite import ACCOUNT, ACCOUNT_KEY, Azurite  # noqa: E402
from faulty_storage import FaultyStorage  # noqa: E402
from kubecluster import NETNS_FAMILY, TOOLS_BIN, KubeCluster, unavailable_reason  # noqa: E402
from kubecluster.disttrain_jobs import (  # noqa: E402
    chief_log,
    create_storage_secret,
    job_args,
    last_reported_step,
    pods_of,
    put_dataset_on_share,
    run_dir,
)
from kubecluster.network import host_links, netns_names  # noqa: E402
from processes import kill_tree, small_job, start_cli  # noqa: E402
from test_flaky_storage import Blobs  # noqa: E402

STEPS, EVERY = 120, 40
# On the cluster the chief's progress is read through `kubectl logs`, a second or more
# behind under load, and training runs ~10 steps/s once started: more steps, so that a
# fault drawn for a step lands while the job trains, not as it finishes.
CLUSTER_STEPS, CLUSTER_EVERY = 300, 100
GRACE_SECONDS = 10  # launcher.local.stop_grace_seconds: a SIGTERMed ps serves 8 s, not 28
STORAGE_FAULT_RATE = 0.10
LOCAL_TASKS = ("chief-0", "worker-0", "worker-1", "ps-0", "evaluator-0")
LOCAL_FAULTS = ("sigkill", "sigterm", "storage")
CLUSTER_FAULTS = ("delete-pod", "sigkill", "evict")
JOB_TIMEOUT = 900  # a bound on a wait, not a pass/fail threshold
SETTLE_SECONDS = 300  # after a k8s job succeeded, for its other pods to stop (DONE)
MARK = "DISTTRAIN_SOAK_RUN"  # in the environment of everything the local part starts
PROGRESS = re.compile(r"train \| step:\s+(\d+)/")


@dataclass
class Fault:
    kind: str
    victim: str  # a task, e.g. worker-1 ("" for storage faults)
    at_step: int  # strikes once the chief has reported this step (0 for storage faults)

    def __str__(self) -> str:
        if self.kind == "storage":
            return f"storage {STORAGE_FAULT_RATE:.0%}"
        return f"{self.kind} {self.victim}"


@dataclass
class Outcome:
    part: str
    number: int
    fault: Fault
    when: str = "not injected"
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log: Path | None = None

    def line(self) -> str:
        verdict = "ok" if not self.problems else "FAILED: " + "; ".join(self.problems)
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return (
            f"{self.part} {self.number:>2} | {str(self.fault):<22} | {self.when:<30} | "
            f"{verdict}{notes} | {self.seconds:.0f} s"
        )


def deal(
    rng: random.Random, count: int, kinds: tuple[str, ...], lowest: int, steps: int
) -> list[Fault]:
    """`count` faults: the kinds and the victims each dealt round-robin in a shuffled order
    (every kind and every task comes up when there are enough jobs), the moment (a step
    between `lowest` and 60% of `steps`) drawn at random."""
    kinds, victims = cycle(rng.sample(kinds, len(kinds))), cycle(rng.sample(LOCAL_TASKS, 5))
    faults = []
    for _ in range(count):
        kind = next(kinds)
        if kind == "storage":
            faults.append(Fault(kind, "", 0))
        else:
            faults.append(Fault(kind, next(victims), rng.randint(lowest, steps * 6 // 10)))
    return faults


# -- reading a run dir, local or in Azurite, as the flaky-storage test does


class LocalRunDir(Blobs):
    """A run dir on a local folder (or the test cluster's share), read like `Blobs`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def names(self) -> list[str]:
        found = (p for p in self.folder.rglob("*") if p.is_file())
        return sorted(str(p.relative_to(self.folder)) for p in found)

    def data(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()


def run_dir_problems(files: Blobs, steps: int, evaluated_too: bool = True) -> list[str]:
    """What differs from a finished run: DONE and LATEST at `steps`, every published
    checkpoint as its manifest says, the evaluator's results once per checkpoint."""
    problems = []
    names = set(files.names())
    for marker in ("DONE", "checkpoints/LATEST"):
        if marker not in names:
            problems.append(f"no {marker}")
        elif json.loads(files.text(marker))["step"] != steps:
            problems.append(f"{marker} at step {json.loads(files.text(marker))['step']}")
    published = files.checkpoint_steps()
    if not published or published[-1] != steps:
        problems.append(f"published checkpoints {published}")
    problems += filter(None, (files.checkpoint_problem(step) for step in published))
    if evaluated_too:
        results = files.text("eval/results.jsonl") if "eval/results.jsonl" in names else ""
        evaluated = Counter(json.loads(line)["step"] for line in results.splitlines())
        twice = sorted(step for step, n in evaluated.items() if n > 1)
        missing = sorted(set(published) - set(evaluated))
        unknown = sorted(set(evaluated) - set(published))
        if twice or missing or unknown:
            problems.append(
                f"results.jsonl: evaluated twice {twice}, missing {missing}, "
                f"of no published checkpoint {unknown}"
            )
    return problems


# -- the local part


def trained_step(log: Path) -> int:
    steps = PROGRESS.findall(log.read_text(errors="replace")) if log.exists() else []
    return int(steps[-1]) if steps else 0


def job_state(home: Path, name: str) -> dict:
    try:
        return json.loads((home / "local" / name / "job.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-replace
        return {}


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def run_local_job(
    number: int,
    fault: Fault,
    data: Path,
    scratch: Path,
    azurite: Azurite,
    seed: int,
    ports: list[int],
) -> Outcome:
    outcome = Outcome("local", number, fault)
    name, home = f"soak{number}", scratch / "home"
    outcome.log = log = scratch / f"{name}.log"
    sets = {
        "train.steps": STEPS,
        "checkpoint.every_steps": EVERY,
        "checkpoint.keep": 100,  # every checkpoint stays, to be checked
        "eval.max_examples": 64,
        "launcher.local.stop_grace_seconds": GRACE_SECONDS,
    }
    args = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    env = {"DISTTRAIN_HOME": str(home)}
    proxy = None
    if fault.kind == "storage":
        container = azurite.create_container()
        target: str | Path = f"az://{container}/run"
        proxy = FaultyStorage(
            azurite.port, STORAGE_FAULT_RATE, seed * 1000 + number, scratch / f"{name}-faults.log"
        )
        proxy.start()
        ports.append(proxy.port)
        env.update(proxy.env(ACCOUNT, ACCOUNT_KEY))
        files: Blobs = Blobs(azurite, container, "run/")
    else:
        target = scratch / name
        files = LocalRunDir(target)
    started = time.monotonic()
    proc = start_cli("train", *small_job(target, data, *args, name=name), log_path=log, env=env)
    try:
        if fault.kind != "storage":
            outcome.when = strike_local(fault, proc, log, home, name, started)
        code = proc.wait(timeout=JOB_TIMEOUT)
    finally:
        kill_tree(proc)
        if proxy is not None:
            proxy.stop()
    outcome.seconds = time.monotonic() - started
    if proxy is not None:
        random_faults = len(proxy.injected)
        outcome.when = f"{random_faults} of {proxy.requests} requests"
        if not random_faults:
            outcome.problems.append("the proxy injected no fault: the job proves nothing")
    if code != 0:
        outcome.problems.append(f"exit code {code} (log {log})")
    state = job_state(home, name)
    if state.get("result") != "succeeded":
        outcome.problems.append(f"job.json result {state.get('result')!r}: {state.get('reason')}")
    outcome.problems += run_dir_problems(files, STEPS)
    outcome.problems += fault_handled(fault, log.read_text(errors="replace"), state, outcome)
    left = [task for task, info in state.get("tasks", {}).items() if alive(info.get("pid") or 0)]
    if left:
        outcome.problems.append(f"still running: {', '.join(left)}")
    return outcome


def strike_local(fault: Fault, proc, log: Path, home: Path, name: str, started: float) -> str:
    """Wait for the chief to report `fault.at_step`, then signal the victim; when it was."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while trained_step(log) < fault.at_step:
        if proc.poll() is not None or time.monotonic() > deadline:
            return f"not injected: the job ended at step {trained_step(log)}"
        time.sleep(0.3)
    pid = job_state(home, name)["tasks"][fault.victim]["pid"]
    os.kill(pid, signal.SIGKILL if fault.kind == "sigkill" else signal.SIGTERM)
    return f"step {trained_step(log)} ({time.monotonic() - started:.0f} s in)"


def fault_handled(fault: Fault, text: str, state: dict, outcome: Outcome) -> list[str]:
    """Whether the launcher did what the failure semantics say for this fault."""
    tasks = state.get("tasks", {})
    if fault.kind == "storage":
        restarted = [t for t, info in tasks.items() if info.get("restarts")]
        retried = text.count("storage | retry")
        outcome.notes.append(f"{retried} storage retries logged")
        return [f"restarted for flaky storage: {', '.join(restarted)}"] if restarted else []
    if outcome.when.startswith("not injected"):
        return [outcome.when]
    code = -9 if fault.kind == "sigkill" else 5
    group = "ps-0, chief-0" if fault.victim in ("ps-0", "chief-0") else fault.victim
    said = re.search(
        rf"\[launcher\] {fault.victim} exited with code {code}; restarting {group} \((.*?)\)",
        text,
    )
    if said:
        counted = not said.group(1).startswith("not counted")
        if counted != (fault.kind == "sigkill"):
            return [f"restart {'counted' if counted else 'not counted'}: {said.group(0)}"]
        return []
    # A SIGTERMed worker or ps serves until the chief has gone: a chief that finished in
    # the meantime ends the job first (no restart needed), as documented.
    chief_first = "[launcher] chief finished" in text and fault.kind == "sigterm"
    if chief_first and fault.victim != "chief-0":
        outcome.notes.append(f"the chief finished before {fault.victim}'s grace ran out")
        return []
    lines = [line for line in text.splitlines() if line.startswith("[launcher]")]
    return [f"no restart line for {fault.victim} (launcher said: {' / '.join(lines[-4:])})"]


def local_part(
    count: int, seed: int, rng: random.Random, scratch: Path, ports: list[int]
) -> list[Outcome]:
    from disttrain.data.builtin import ensure_builtin_dataset

    data = ensure_builtin_dataset(scratch / "data")
    faults = deal(rng, count, LOCAL_FAULTS, lowest=10, steps=STEPS)
    outcomes = []
    azurite = Azurite(scratch / "azurite")
    azurite.start()
    ports.append(azurite.port)
    try:
        for number, fault in enumerate(faults, 1):
            job = partial(run_local_job, number, fault, data, scratch, azurite, seed, ports)
            outcomes.append(guarded(job, "local", number, fault))
            print(outcomes[-1].line(), flush=True)
    finally:
        azurite.stop()
    return outcomes


def guarded(run, part: str, number: int, fault: Fault) -> Outcome:
    """The job's outcome; a soak-script error is a failed job, not the end of the soak."""
    started = time.monotonic()
    try:
        return run()
    except Exception as error:  # noqa: BLE001 (reported as this job's failure)
        outcome = Outcome(part, number, fault, seconds=time.monotonic() - started)
        outcome.problems.append(f"soak error: {type(error).__name__}: {str(error)[-1500:]}")
        return outcome


# -- the cluster part


def run_cluster_job(cluster: KubeCluster, number: int, fault: Fault, scratch: Path) -> Outcome:
    outcome = Outcome("k8s  ", number, fault)
    namespace = name = f"soak{number}"
    cluster.create_namespace(namespace)
    create_storage_secret(cluster, namespace)
    env = {**cluster.env, "DISTTRAIN_HOME": str(scratch / "home-k8s")}
    outcome.log = log = scratch / f"k8s-{name}.log"
    sets = {
        "train.steps": CLUSTER_STEPS,
        "checkpoint.every_steps": CLUSTER_EVERY,
        "checkpoint.keep": 100,
        "eval.max_examples": 64,
    }
    extra = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    started = time.monotonic()
    proc = start_cli(
        "train", "--launcher", "k8s", "--wait", *job_args(namespace, name, *extra),
        log_path=log, env=env,
    )  # fmt: skip
    try:
        outcome.when, struck = strike_pod(cluster, namespace, name, fault, proc, started)
        code = proc.wait(timeout=JOB_TIMEOUT)
        outcome.seconds = time.monotonic() - started
        settled = wait_until(lambda: all_pods_ended(cluster, namespace, name), SETTLE_SECONDS)
    finally:
        kill_tree(proc)
    output = log.read_text(errors="replace")
    if code != 0 or f"job {name}: succeeded" not in output:
        outcome.problems.append(f"exit code {code} (log {log})")
    if outcome.when.startswith("not injected"):
        outcome.problems.append(outcome.when)
    if not settled:  # the tasks stop on their own once the chief wrote DONE
        running = [
            p["metadata"]["name"]
            for p in pods_of(cluster, namespace, name)
            if p["status"].get("phase") not in ("Succeeded", "Failed")
        ]
        outcome.problems.append(f"still running {SETTLE_SECONDS} s after the job: {running}")
    outcome.problems += run_dir_problems(
        LocalRunDir(run_dir(cluster, namespace, name)), CLUSTER_STEPS, evaluated_too=settled
    )
    role, index = fault.victim.rsplit("-", 1)
    now = [p["metadata"]["uid"] for p in pods_of(cluster, namespace, name, role=role, index=index)]
    if struck:
        replaced = any(uid != struck for uid in now)
        # Not replaced: the struck task had finished by the time the fault landed.
        outcome.notes.append(f"{fault.victim}'s pod {'replaced' if replaced else 'not replaced'}")
    return outcome


def strike_pod(
    cluster, namespace: str, name: str, fault: Fault, proc, started: float
) -> tuple[str, str | None]:
    """Wait for the chief to report `fault.at_step`, then strike the victim's pod: when,
    and the struck pod's uid (None: not struck)."""
    role, index = fault.victim.rsplit("-", 1)
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        step = last_reported_step(chief_log(cluster, namespace, name))
        if step >= fault.at_step:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            return f"not injected: the job ended at step {step}", None
        time.sleep(1.0)
    running = [
        p
        for p in pods_of(cluster, namespace, name, role=role, index=index)
        if p["status"].get("phase") == "Running"
    ]
    if not running:
        return f"not injected: no running {fault.victim} pod at step {step}", None
    pod, uid = running[-1]["metadata"]["name"], running[-1]["metadata"]["uid"]
    if fault.kind == "delete-pod":
        cluster.kubectl("delete", "pod", "-n", namespace, pod, "--wait=false")
    elif fault.kind == "evict":
        cluster.evict(namespace, pod)
    else:
        process = cluster.process_of(namespace, pod)
        if process is None:
            return f"not injected: {pod} has no live process", None
        process.send_signal(signal.SIGKILL)
    return f"step {step} ({time.monotonic() - started:.0f} s in)", uid


def all_pods_ended(cluster: KubeCluster, namespace: str, name: str) -> bool:
    phases = {p["status"].get("phase") for p in pods_of(cluster, namespace, name)}
    return phases <= {"Succeeded", "Failed"}


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1.0)
    return False


def cluster_part(count: int, rng: random.Random, scratch: Path) -> list[Outcome]:
    faults = deal(rng, count, CLUSTER_FAULTS, lowest=20, steps=CLUSTER_STEPS)
    outcomes: dict[int, Outcome] = {}
    with KubeCluster(scratch / "cluster") as cluster:
        put_dataset_on_share(cluster)

        def run(number: int, fault: Fault) -> None:
            outcomes[number] = guarded(
                lambda: run_cluster_job(cluster, number, fault, scratch), "k8s  ", number, fault
            )
            print(outcomes[number].line(), flush=True)

        threads = [
            threading.Thread(target=run, args=(number, fault))
            for number, fault in enumerate(faults, 1)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return [outcomes[number] for number in sorted(outcomes)]


# -- what is left behind


def host_rules() -> set[str]:
    """The host's nft ruleset and iptables rules, line by line (handles and counters off)."""
    lines = set()
    for command in (["nft", "list", "ruleset"], ["iptables", "-S"], ["ip6tables", "-S"]):
        if shutil.which(command[0]):
            out = subprocess.run(command, capture_output=True, text=True).stdout
            lines |= {f"{command[0]}: {line.strip()}" for line in out.splitlines() if line.strip()}
    return lines


def our_processes(scratch: Path, token: str) -> list[str]:
    """Live processes of this run: the marker in their environment, or the scratch folder
    in their command line or environment (pods get an environment of their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ours = f"{MARK}={token}" in environ or str(scratch) in cmdline + environ
        if ours and alive(int(entry.name)):
            found.append(f"process {entry.name}: {cmdline.strip()[:160]}")
    return found


def leftovers(scratch: Path, token: str, rules_before: set[str], ports: list[int]) -> list[str]:
    found = our_processes(scratch, token)
    prefix = f"{NETNS_FAMILY}{os.getpid()}-"
    found += [f"network namespace {n}" for n in netns_names() if n.startswith(prefix)]
    if Path("/etc/netns").is_dir():
        found += [
            f"/etc/netns/{p.name}"
            for p in Path("/etc/netns").iterdir()
            if p.name.startswith(prefix)
        ]
    found += [f"host link {n}" for n in host_links() if n.startswith(prefix.replace("-", ""))]
    found += [f"new host rule {rule}" for rule in sorted(host_rules() - rules_before)]
    found += [
        f"port {port} still answers (Azurite or the proxy)" for port in ports if answers(port)
    ]
    return found


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- the run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local-jobs", type=int, default=10)
    parser.add_argument("--cluster-jobs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-cluster", action="store_true", help="no test-cluster part")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    token = uuid.uuid4().hex
    os.environ[MARK] = token  # inherited by the CLI, its tasks and Azurite
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    rules_before = host_rules()
    started = time.monotonic()
    print(
        f"soak: seed {args.seed}, {args.local_jobs} local job(s) of {STEPS} steps, "
        f"{0 if args.skip_cluster else args.cluster_jobs} cluster job(s) of {CLUSTER_STEPS}, "
        f"scratch {scratch}",
        flush=True,
    )
    outcomes: list[Outcome] = []
    problems: list[str] = []
    ports: list[int] = []
    try:
        outcomes += local_part(args.local_jobs, args.seed, rng, scratch, ports)
        if not args.skip_cluster and args.cluster_jobs:
            reason = unavailable_reason()
            missing = [t for t in ("kubectl", "helm") if not (TOOLS_BIN / t).exists()]
            reason = reason or (f"{', '.join(missing)} missing in {TOOLS_BIN}" if missing else None)
            if reason:
                problems.append(f"cluster part not run: {reason} (--skip-cluster to skip it)")
            else:
                outcomes += cluster_part(args.cluster_jobs, rng, scratch)
    finally:
        time.sleep(2)  # a task that exits on its own, after its launcher, has done so
        left = leftovers(scratch, token, rules_before, ports)
    failed = [o for o in outcomes if o.problems]
    total = time.monotonic() - started
    print(
        f"\n{len(outcomes) - len(failed)}/{len(outcomes)} job(s) ended as documented; "
        f"{total:.0f} s in all"
    )
    for line in problems + [f"left behind: {item}" for item in left]:
        print(f"  {line}")
    verdict = "PASS" if not (failed or problems or left) else "FAIL"
    print(f"{verdict}: {len(failed)} failed job(s), {len(left)} leftover(s)")
    if verdict == "PASS":
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"logs kept in {scratch}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
