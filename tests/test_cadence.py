"""The chief's checkpoint cadence: every N steps, and every T seconds since the last save."""

import re

import pytest

from disttrain.cadence import CheckpointCadence, checkpoint_due
from disttrain.config import ConfigError, load_config


@pytest.mark.parametrize(
    "step, seconds_since_save, every_seconds, due",
    [
        (300, 0.0, 0, True),  # a multiple of every_steps, whatever the clock says
        (310, 999.0, 0, False),  # time cadence off (0)
        (310, 999.0, None, False),  # time cadence off (null)
        (310, 4.9, 5.0, False),
        (310, 5.0, 5.0, True),
        (600, 0.1, 5.0, True),
    ],
)
def test_a_checkpoint_is_due_on_a_step_boundary_or_after_every_seconds(
    step, seconds_since_save, every_seconds, due
):
    assert checkpoint_due(step, 300, seconds_since_save, every_seconds) is due


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_seconds_count_from_the_start_then_from_the_end_of_each_save():
    clock = FakeClock()
    cadence = CheckpointCadence(every_steps=1000, every_seconds=10, clock=clock)
    clock.now += 9.5
    assert not cadence.due(20)
    clock.now += 0.5
    assert cadence.due(30)  # 10 s after the loop started
    clock.now += 3  # the save itself takes 3 s
    cadence.saved()
    clock.now += 9
    assert not cadence.due(40)
    clock.now += 1
    assert cadence.due(50)


def test_chunks_stop_at_the_next_step_boundary():
    cadence = CheckpointCadence(every_steps=300, every_seconds=5, clock=FakeClock())
    assert [cadence.steps_to_boundary(s) for s in (0, 290, 295, 300, 310)] == [300, 10, 5, 300, 290]


def test_every_seconds_accepts_a_number_zero_or_null_and_refuses_a_negative():
    assert load_config(None, ["checkpoint.every_seconds=2.5"]).checkpoint.every_seconds == 2.5
    assert load_config(None, ["checkpoint.every_seconds=null"]).checkpoint.every_seconds is None
    assert load_config().checkpoint.every_seconds == 0
    with pytest.raises(ConfigError, match=r"checkpoint.every_seconds: got -1.0; accepted: a num"):
        load_config(None, ["checkpoint.every_seconds=-1"])


def test_every_seconds_is_refused_where_workers_save_in_lockstep():
    """Under MultiWorkerMirroredStrategy every worker must save at the same step; each
    would decide by its own clock."""
    with pytest.raises(ConfigError, match=r"checkpoint.every_seconds: got 5 with cluster.workers"):
        load_config(None, ["checkpoint.every_seconds=5", "cluster.ps=0"])
    alone = ["checkpoint.every_seconds=5", "cluster.ps=0", "cluster.workers=0"]
    assert load_config(None, alone).checkpoint.every_seconds == 5


@pytest.mark.integration
def test_the_chief_saves_after_every_chunk_when_every_seconds_has_always_passed(
    tmp_path, capsys, monkeypatch
):
    """A real single-process loop: with every_seconds that any chunk outlasts, each chunk's
    end is a checkpoint, though no step is a multiple of every_steps."""
    from disttrain.cluster import CHIEF, ClusterShape, Task
    from disttrain.train import train

    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            "data.source=synthetic",
            "data.image_size=16",
            "data.batch_size=8",
            "model.width=4",
            "train.steps=6",
            "train.steps_per_schedule=2",
            "checkpoint.every_steps=100",
            "checkpoint.every_seconds=1e-9",
            "checkpoint.keep=10",
            "cluster.workers=0",
            "cluster.ps=0",
            "eval.enabled=false",
        ],
    )
    train(config, Task(CHIEF, 0), ClusterShape.of(config))
    lines = capsys.readouterr().out
    # The publisher may drop a checkpoint still waiting when a newer one comes (and says so).
    saved = re.findall(r"checkpoint \| (?:published \| ckpt-|superseded \| ckpt-)(\d+)", lines)
    assert sorted(map(int, saved)) == [2, 4, 6]
