"""What the parameter-server machinery costs: PSS with one worker vs one process.

Runs, in one go and on the same model, data and machine:
  1. single process (no cluster)                          -- the baseline
  2. PSS: chief + 1 worker + 1 ps, steps_per_schedule=10  -- packed steps
  3. PSS: chief + 1 worker + 1 ps, steps_per_schedule=1   -- one remote call per step
Each run is a real `disttrain train` job on the local launcher; throughput is measured
in steady state, from the chief's progress lines as they arrive (tracing, restore and
warm-up before the first line are excluded). Prints examples/s and the ratios.

    .venv/bin/python bench/coordinator_overhead.py [--steps 1500]
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

PROGRESS = re.compile(rb"\[chief-0\] .*train \| step:\s+(\d+)/")


def steady_examples_per_second(
    workers: int, ps: int, steps_per_schedule: int, steps: int, batch_size: int, scratch: Path
) -> float:
    name = f"bench-{workers}w{ps}ps{steps_per_schedule}"
    command = [
        sys.executable,
        "-m",
        "disttrain",
        "train",
        "--set",
        f"name={name}",
        "--set",
        f"run_dir={scratch / name}",
        "--set",
        f"cluster.workers={workers}",
        "--set",
        f"cluster.ps={ps}",
        "--set",
        f"train.steps={steps}",
        "--set",
        f"train.steps_per_schedule={steps_per_schedule}",
        "--set",
        f"data.batch_size={batch_size}",
        "--set",
        "train.log_every_seconds=1",
        "--set",
        f"checkpoint.every_steps={steps}",
        "--set",
        "eval.enabled=false",
    ]
    env = {**os.environ, "DISTTRAIN_HOME": str(scratch / "home")}
    seen: list[tuple[float, int]] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="disttrain-bench-") as tmp:
        scratch = Path(tmp)
        runs = {
            "single process": (0, 0, 10),
            "PSS 1 worker, 10 steps/schedule": (1, 1, 10),
            "PSS 1 worker, 1 step/schedule": (1, 1, 1),
        }
        rates = {}
        for label, (workers, ps, packed) in runs.items():
            rates[label] = steady_examples_per_second(
                workers, ps, packed, args.steps, args.batch_size, scratch
            )
            print(f"{label:<34} {rates[label]:9.1f} examples/s", flush=True)
    base = rates["single process"]
    packed = rates["PSS 1 worker, 10 steps/schedule"]
    single = rates["PSS 1 worker, 1 step/schedule"]
    print(f"ratio PSS(10 steps/schedule) / single process: {packed / base:.2f}  (target >= 0.9)")
    print(f"ratio PSS 10 / 1 steps per schedule:           {packed / single:.2f}")


if __name__ == "__main__":
    main()
