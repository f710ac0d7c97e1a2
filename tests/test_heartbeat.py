"""Heartbeats: a task's thread touches its file; a launcher measures the silence since."""

from __future__ import annotations

import os
import time
from pathlib import Path

from disttrain.config import load_config
from disttrain.heartbeat import HEARTBEAT_ENV, beat_seconds, silent_for, start_heartbeat
from launchers.local import LocalOptions, plan_job

GIB = 1024**3


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_heartbeat_thread_makes_its_file_and_keeps_touching_it(tmp_path):
    path = tmp_path / "not-made-yet" / "worker-1"
    stop = start_heartbeat(path, every=0.05)
    try:
        assert wait_until(path.exists)
        os.utime(path, (1_000_000, 1_000_000))  # as if the last beat were long ago
        assert wait_until(lambda: path.stat().st_mtime > 1_000_000)
    finally:
        stop.set()


def test_silence_counts_from_the_last_beat_or_from_when_watching_began(tmp_path):
    path = tmp_path / "chief-0"
    assert silent_for(path, since=100.0, now=130.0) == 30.0  # no beat yet
    path.touch()
    os.utime(path, (110.0, 110.0))
    assert silent_for(path, since=100.0, now=130.0) == 20.0
    # A beat from before the task (re)started, or before the watcher could watch, is old news.
    assert silent_for(path, since=125.0, now=130.0) == 5.0


def test_a_task_beats_a_few_times_within_its_timeout():
    assert beat_seconds(300) == 5.0
    assert beat_seconds(10) == 2.5


def test_the_local_launcher_gives_each_task_its_own_heartbeat_file(disttrain_home):
    config = load_config(None, ["name=hb"])
    plan = plan_job(config, LocalOptions(), memory=8 * GIB, cores=2)
    files = [Path(task.env[HEARTBEAT_ENV]) for task in plan.tasks]
    assert files == [
        disttrain_home / "local" / "hb" / "heartbeats" / t.task.name for t in plan.tasks
    ]
    off = plan_job(load_config(None, ["cluster.hung_task_seconds=0"]), LocalOptions(), 8 * GIB, 2)
    assert not any(HEARTBEAT_ENV in task.env for task in off.tasks)
