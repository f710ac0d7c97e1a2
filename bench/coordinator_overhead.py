"""What the parameter-server machinery costs: a PSS worker vs one process, given the same
cores (issue 13).

Runs, in one go and on the same model, data and machine, each a real `disttrain train` job
on the local launcher:

  unpinned, as the kernel schedules them:
    1. single process (no cluster)                            -- the baseline
    2. PSS: chief + 1 worker + 1 ps, steps_per_schedule=10    -- packed steps
    3. PSS: chief + 1 worker + 1 ps, steps_per_schedule=1     -- one remote call per step
  pinned (launcher.local.cpus), half the cores for the steps, the rest for the others:
    4. single process on the step cores
    5. PSS: its worker alone on the step cores, chief and ps on the other cores
  with at least 4 cores, each worker on a core of its own, chief and ps on the rest:
    6. PSS with 1 worker, and 7. PSS with 2 workers

Unpinned, the single process has every core while the PSS worker shares them with its
chief and ps: that ratio measures core sharing as much as coordination. Pinned, both do
their steps on the same cores, which is what the target (>= 0.95) is about. Throughput is
measured in steady state, from the chief's progress lines as they arrive (tracing,
restore and warm-up before the first line are excluded). Prints examples/s and the ratios.

    .venv/bin/python bench/coordinator_overhead.py [--steps 1500] [--batch-size 64] [--rounds 1]

With --rounds N the jobs run N times, alternating, and each figure is the best of its
rounds: on a shared machine, the round least disturbed by others.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launchers.cpu_pinning import format_cpu_list  # noqa: E402

PROGRESS = re.compile(rb"\[chief-0\] .*train \| step:\s+(\d+)/")
PINNED_TARGET = 0.95  # issue 13: pinned PSS / single process
SCALING_TARGET = 1.8  # issue 13: 2 workers / 1 worker, each on its own core


def steady_examples_per_second(
    name: str, settings: list[str], steps: int, batch_size: int, scratch: Path
) -> float:
    """Run one job with `settings` (key=value) on top of the bench's; its steady rate."""
    job = [
        f"name={name}",
        f"run_dir={scratch / name}",
        f"train.steps={steps}",
        f"data.batch_size={batch_size}",
        "train.log_every_seconds=1",
        f"checkpoint.every_steps={steps}",
        "eval.enabled=false",
        *settings,
    ]
    command = [sys.executable, "-m", "disttrain", "train"]
    command += [arg for setting in job for arg in ("--set", setting)]
    env = {**os.environ, "DISTTRAIN_HOME": str(scratch / "home")}
    seen: list[tuple[float, int]] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO
    ) as proc:
        for line in proc.stdout:
            match = PROGRESS.search(line)
            if match:
                seen.append((time.monotonic(), int(match.group(1))))
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed; see {scratch / 'home'}")
    # Drop the first line (it still includes warm-up) and the forced final line.
    window = seen[1:-1] if len(seen) > 3 else seen
    (t0, s0), (t1, s1) = window[0], window[-1]
    return (s1 - s0) * batch_size / (t1 - t0)


def shape(workers: int, ps: int, steps_per_schedule: int = 10) -> list[str]:
    return [
        f"cluster.workers={workers}",
        f"cluster.ps={ps}",
        f"train.steps_per_schedule={steps_per_schedule}",
    ]


def pinned(**cpus: str | list[str]) -> list[str]:
    """`launcher.local.cpus` settings: role -> a CPU list, or one per task."""
    return [
        f"launcher.local.cpus.{role}=[{', '.join(value)}]"
        if isinstance(value, list)
        else f"launcher.local.cpus.{role}='{value}'"
        for role, value in cpus.items()
    ]


def runs(cores: list[int]) -> dict[str, list[str]]:
    """Every job of the bench, by label: the settings that make it."""
    half = max(1, len(cores) // 2)
    steps, others = format_cpu_list(set(cores[-half:])), format_cpu_list(set(cores[:-half]))
    chosen = {
        "single process": shape(0, 0),
        "PSS 1 worker, 10 steps/schedule": shape(1, 1),
        "PSS 1 worker, 1 step/schedule": shape(1, 1, 1),
        f"single process on CPUs {steps}": shape(0, 0) + pinned(chief=steps),
        f"PSS worker on CPUs {steps}": shape(1, 1) + pinned(worker=steps, chief=others, ps=others),
    }
    if len(cores) >= 4:
        rest, own = format_cpu_list(set(cores[:-2])), [str(c) for c in cores[-2:]]
        chosen["PSS 1 worker on its own core"] = shape(1, 1) + pinned(
            worker=own[:1], chief=rest, ps=rest
        )
        chosen["PSS 2 workers, each on its own core"] = shape(2, 1) + pinned(
            worker=own, chief=rest, ps=rest
        )
    return chosen


def verdicts(rates: dict[str, float], cores: list[int]) -> list[str]:
    labels = list(rates)
    single, packed, one_step, single_pinned, worker_pinned = (rates[x] for x in labels[:5])
    lines = [
        f"unpinned: PSS(10 steps/schedule) / single process: {packed / single:.2f} (no target: "
        "the single process has every core, the PSS worker shares them with chief and ps)",
        f"unpinned: PSS 10 / 1 steps per schedule:          {packed / one_step:.2f}",
    ]
    ratio = worker_pinned / single_pinned
    meets = "meets" if ratio >= PINNED_TARGET else "misses"
    lines.append(
        f"pinned: PSS worker / single process, same cores:  {ratio:.2f} "
        f"({meets} the target of >= {PINNED_TARGET})"
    )
    if len(cores) >= 4:
        scaling = rates[labels[6]] / rates[labels[5]]
        meets = "meets" if scaling >= SCALING_TARGET else "misses"
        lines.append(
            f"pinned: 2 workers / 1 worker, a core each:        {scaling:.2f} "
            f"({meets} the target of >= {SCALING_TARGET})"
        )
    else:
        lines.append(
            f"pinned: 2 workers / 1 worker, a core each: needs 4 cores (this machine lets "
            f"the bench use {len(cores)})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="alternating; the best counts")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="disttrain-bench-") as tmp:
        for round_ in range(1, args.rounds + 1):
            for number, (label, settings) in enumerate(runs(cores).items()):
                name = f"bench-{round_}-{number}"
                rate = steady_examples_per_second(
                    name, settings, args.steps, args.batch_size, Path(tmp)
                )
                rates[label] = max(rate, rates.get(label, 0.0))
                print(f"round {round_}: {label:<38} {rate:9.1f} examples/s", flush=True)
    if args.rounds > 1:
        print(f"best of {args.rounds} rounds:")
        print("\n".join(f"{label:<47} {rate:9.1f} examples/s" for label, rate in rates.items()))
    print("\n".join(verdicts(rates, cores)))


if __name__ == "__main__":
    main()
