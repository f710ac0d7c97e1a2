"""The chief's stall warning, on an injected clock."""

from __future__ import annotations

import pytest

from disttrain.stall import StallWatch, warning_due

NEVER = float("-inf")


@pytest.mark.parametrize(
    "now, last_progress, last_warning, after, due",
    [
        (59.0, 0.0, NEVER, 60.0, False),  # not yet
        (60.0, 0.0, NEVER, 60.0, True),
        (100.0, 0.0, 60.0, 60.0, False),  # warned 40 s ago
        (120.0, 0.0, 60.0, 60.0, True),  # still stalled: say so again
        (150.0, 125.0, 120.0, 60.0, False),  # a chunk finished since
        (1e9, 0.0, NEVER, 0.0, False),  # 0: off
    ],
)
def test_a_warning_is_due_after_a_quiet_period_without_progress(
    now, last_progress, last_warning, after, due
):
    assert warning_due(now, last_progress, last_warning, after) is due


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watch_names_what_the_loop_waits_for_and_repeats_while_stalled():
    clock, lines = Clock(), []
    watch = StallWatch(60, 300, lambda: "steps 120-130, running on worker-1", lines.append, clock)
    for clock.now in (30.0, 59.9, 60.0, 61.0, 119.0, 120.0):
        watch.check()
    watch.progressed()
    for clock.now in (170.0, 180.0):
        watch.check()
    assert lines == [
        "train | WARNING | no chunk finished for 60s | waiting for steps 120-130, running on "
        "worker-1 | a task without a heartbeat for cluster.hung_task_seconds (300s) is restarted",
        lines[0].replace("for 60s", "for 120s"),
        lines[0],  # 60 s after the chunk that finished at 120
    ]


def test_the_warning_says_when_nothing_will_restart_the_stalled_task():
    clock, lines = Clock(), []
    watch = StallWatch(10, 0, lambda: "steps 0-10", lines.append, clock)
    clock.now = 10.0
    watch.check()
    assert lines == [
        "train | WARNING | no chunk finished for 10s | waiting for steps 0-10 | "
        "cluster.hung_task_seconds is 0: no task is restarted for it"
    ]
