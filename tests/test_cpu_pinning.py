"""Pinning local tasks to CPUs (`launcher.local.cpus`): the syntax, its refusals, the plan,
and the affinity a started task really has."""

import dataclasses
import os
import sys

import pytest

from disttrain.config import ConfigError
from launchers import load_job
from launchers.cpu_pinning import format_cpu_list, parse_cpu_list
from launchers.local import start_task_process

USABLE = sorted(os.sched_getaffinity(0))
FIRST, LAST = USABLE[0], USABLE[-1]


@pytest.mark.parametrize(
    "text, cpus",
    [("0", {0}), ("0-3", {0, 1, 2, 3}), ("0,2-3", {0, 2, 3}), (5, {5}), (" 1, 3 ", {1, 3})],
)
def test_cpu_lists_read_like_the_kernels_and_print_back(text, cpus):
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "3-1", "-2", "1,,2"])
def test_what_is_not_a_cpu_list_is_refused(text):
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_cpus_this_machine_does_not_have_are_refused_naming_those_it_has():
    missing = max(USABLE) + 1
    with pytest.raises(ConfigError) as error:
        load_job(None, [f"launcher.local.cpus.worker={missing}", "launcher.local.cpus.chef=0"])
    message = str(error.value)
    assert f"launcher.local.cpus.worker: got {missing} (no CPU {missing} here)" in message
    assert f"of the CPUs this machine lets the launcher use ({format_cpu_list(USABLE)})" in message
    assert "launcher.local.cpus: got role 'chef'; accepted: chief, worker, ps, evaluator" in message


def test_a_list_needs_one_cpu_list_per_task_of_the_role(disttrain_home):
    config, launcher = load_job(None, [f"launcher.local.cpus.worker=[{FIRST}]"])
    with pytest.raises(ConfigError, match=r"cpus.worker: got \[\d+\], 1 CPU lists for 2 worker"):
        launcher.plan(config)


def test_each_task_starts_on_the_cpus_its_role_was_given(disttrain_home):
    pinning = (
        f"launcher.local.cpus={{worker: ['{LAST}', '{FIRST}'], ps: '{format_cpu_list(USABLE)}'}}"
    )
    config, launcher = load_job(None, [pinning])
    plan = launcher.plan(config)
    asked = {t.task.name: t.cpus for t in plan.tasks}
    assert asked["worker-0"] == {LAST} and asked["worker-1"] == {FIRST}
    assert asked["ps-0"] == set(USABLE) and asked["chief-0"] == frozenset()  # not pinned
    assert f"  cpus: {LAST}" in plan.render()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = {
        t.task.name: start_task_process(dataclasses.replace(t, command=sleep)) for t in plan.tasks
    }
    try:
        for name, proc in started.items():
            assert os.sched_getaffinity(proc.pid) == (asked[name] or set(USABLE)), name
    finally:
        for proc in started.values():
            proc.kill()
            proc.wait()
