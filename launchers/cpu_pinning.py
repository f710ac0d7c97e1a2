"""Local tasks pinned to CPU cores: the `launcher.local.cpus` option.

Each role named gets CPUs in the kernel's cpu-list syntax (`0`, `0-3`, `0,2-3`): one
set for every task of the role, or a list with one set per task, in index order:

    launcher:
      local:
        cpus: {chief: "0", ps: "0", worker: ["1", "2-3"]}   # worker-0 on 1, worker-1 on 2-3

A role not named runs wherever the kernel puts it. The set is applied in the started
process before it runs the task (`pin_this_process`, os.sched_setaffinity), so every
thread TensorFlow creates stays on it. On a shared machine this keeps a task from
competing for another's cores, and it lets a bench give two setups the same compute.
"""

from __future__ import annotations

import os
from typing import Any

from disttrain.cluster import CHIEF, EVALUATOR, PS, WORKER, ClusterShape, Task
from disttrain.config import ConfigError

ROLES = (CHIEF, WORKER, PS, EVALUATOR)
SYNTAX = "a CPU list such as 0, 0-3 or 0,2-3"


def parse_cpu_list(text: str | int) -> frozenset[int]:
    """`"0,2-3"` -> {0, 2, 3}; ValueError for anything else (an empty set included)."""
    cpus: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{part!r} is not a CPU number or range")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"{part!r} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5": the syntax `parse_cpu_list` reads."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def usable_cpus() -> frozenset[int]:
    """The CPUs this process may run on, and so may hand to its tasks (empty: this platform
    cannot pin)."""
    if not hasattr(os, "sched_getaffinity"):
        return frozenset()
    return frozenset(os.sched_getaffinity(0))


def pinning_problems(cpus: dict[str, Any], key: str, usable: frozenset[int]) -> list[ConfigError]:
    """What is wrong with a `cpus` mapping: unknown roles, bad syntax, CPUs not in `usable`."""
    problems = []
    for role, value in cpus.items():
        if role not in ROLES:
            problems.append(
                ConfigError(f"{key}: got role {role!r}; accepted: {', '.join(ROLES)}", key)
            )
            continue
        if isinstance(value, list) and value:
            items = [(f"{key}.{role}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(f"{key}.{role}", value)]
        problems += [p for item_key, v in items if (p := _cpu_set_problem(item_key, v, usable))]
    return problems


def _cpu_set_problem(key: str, value: Any, usable: frozenset[int]) -> ConfigError | None:
    accepted = (
        f"{SYNTAX}, of the CPUs this machine lets the launcher use ({format_cpu_list(usable)}); "
        "or a list of them, one per task of the role"
    )
    if not usable:
        accepted = "nothing: this platform cannot pin processes (no sched_setaffinity)"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ConfigError(f"{key}: got {value!r}; accepted: {accepted}", key)
    try:
        cpus = parse_cpu_list(value)
    except ValueError as exc:
        return ConfigError(f"{key}: got {value!r} ({exc}); accepted: {accepted}", key)
    missing = cpus - usable
    if missing:
        shown = f"{value!r} (no CPU {format_cpu_list(missing)} here)"
        return ConfigError(f"{key}: got {shown}; accepted: {accepted}", key)
    return None


def task_count_problems(cpus: dict[str, Any], shape: ClusterShape, key: str) -> list[str]:
    """A list per task must have one entry for each task the role has in this job."""
    return [
        f"{key}.{role}: got {value!r}, {len(value)} CPU lists for {shape.count(role)} {role} "
        "task(s); accepted: one per task, or one CPU list for all of them"
        for role, value in cpus.items()
        if isinstance(value, list) and len(value) != shape.count(role)
    ]


def cpus_of_task(cpus: dict[str, Any], task: Task) -> frozenset[int]:
    """The CPUs `task` is pinned to; empty when its role is not pinned."""
    value = cpus.get(task.role)
    if value is None:
        return frozenset()
    return parse_cpu_list(value[task.index] if isinstance(value, list) else value)


def pin_this_process(cpus: frozenset[int]) -> None:
    """Run this process (and every thread and child it starts from now on) on `cpus`."""
    if cpus:
        os.sched_setaffinity(0, cpus)
