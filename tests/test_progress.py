"""The chief's progress output: a redrawn bar on a terminal, log lines elsewhere."""

import io

from disttrain.progress import (
    Progress,
    eval_line,
    format_duration,
    parse_eval_line,
    parse_train_line,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_prints_one_line_per_interval_with_every_field():
    out = io.StringIO()
    progress = Progress(start_step=100, total_steps=1100, every_seconds=3600, stream=out)
    assert progress.update(110, 0.5, 0.75, 640) is None  # inside the interval: silent
    line = progress.update(200, 0.25, 0.875, 640, force=True)
    assert out.getvalue() == line + "\n"
    assert line.startswith("train | step:    200/1100 | loss: 0.2500 | accuracy: 0.8750 | ")
    assert "examples/s:" in line and "| eta: " in line
    assert "\r" not in out.getvalue()


def test_a_terminal_gets_a_bar_redrawn_in_place():
    out = Terminal()
    progress = Progress(start_step=0, total_steps=100, every_seconds=3600, stream=out)
    progress.update(50, 1.0, 0.5, 64, force=True)
    assert out.getvalue().startswith("\r[##########..........] train | step:     50/100")


def test_eta_scales_with_the_remaining_steps():
    progress = Progress(start_step=0, total_steps=300, every_seconds=1, stream=io.StringIO())
    line = progress.line(100, 0.0, 0.0, now=progress.started + 60)
    assert line.endswith("eta: 2:00")


def test_durations_read_as_clock_times():
    assert format_duration(59) == "0:59"
    assert format_duration(3725) == "1:02:05"


def test_a_progress_line_parses_back_into_its_fields_behind_a_prefix():
    progress = Progress(start_step=0, total_steps=300, every_seconds=1, stream=io.StringIO())
    progress.examples = 6000
    line = progress.line(100, 0.3125, 0.875, now=progress.started + 60)
    assert parse_train_line(f"[chief-0] {line}") == {
        "step": 100,
        "total_steps": 300,
        "loss": 0.3125,
        "accuracy": 0.875,
        "examples_per_second": 100.0,
        "eta": "2:00",
    }
    assert parse_train_line("checkpoint | published | ckpt-100") is None


def test_an_eval_line_parses_back_into_its_fields():
    result = {"step": 1200, "loss": 0.4567, "accuracy": 0.8125, "examples": 512}
    assert parse_eval_line(eval_line(result)) == result
    assert parse_eval_line("eval | skipped | ckpt-5 is gone or unusable") is None
