"""The chief's progress output: a redrawn bar on a terminal, log lines elsewhere."""

import io
import re

from disttrain.progress import (
    CountProgress,
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


def test_ending_a_terminal_bar_adds_one_line_break_and_nothing_elsewhere():
    """The chief's last forced report with nothing new since its last line (the final
    step already shown) ends the bar instead of printing a line of zeros."""
    out = Terminal()
    progress = Progress(start_step=0, total_steps=100, every_seconds=0, stream=out)
    progress.last_print -= 1  # past the terminal's redraw interval
    assert progress.update(100, 0.5, 0.75, 64) is not None
    progress.end_line()
    progress.end_line()  # once
    assert out.getvalue().count("\n") == 1 and out.getvalue().endswith("\n")
    plain = io.StringIO()
    progress = Progress(start_step=0, total_steps=100, every_seconds=0, stream=plain)
    assert progress.update(100, 0.5, 0.75, 64) is not None
    progress.end_line()
    assert plain.getvalue().count("\n") == 1 and "loss: 0.0000" not in plain.getvalue()


def test_eta_scales_with_the_remaining_steps():
    progress = Progress(start_step=0, total_steps=300, every_seconds=1, stream=io.StringIO())
    line = progress.line(100, 0.0, 0.0, now=progress.started + 60)
    assert line.endswith("eta: 2:00")


def test_durations_read_as_clock_times():
    assert format_duration(59) == "0:59"
    assert format_duration(3725) == "1:02:05"


def test_counted_work_logs_a_line_per_interval_and_one_at_the_end():
    lines: list[str] = []
    progress = CountProgress("stage", 4, "files", lines.append, stream=io.StringIO())
    progress.every = 0.0
    progress.add(size=2_000_000)
    assert lines[0].startswith("stage | 1/4 files (25%) | 2.0 MB | ")
    assert "| eta: " in lines[0]
    for _ in range(3):
        progress.add(size=1_000_000)
    progress.finish()
    assert lines[-1].startswith("stage | done | 4/4 files (100%) | 5.0 MB | ")
    assert lines[-1].endswith("eta: 0:00")


def test_counted_work_on_a_terminal_draws_a_bar_with_its_eta():
    out, lines = Terminal(), []
    progress = CountProgress("data convert | train", 10, "images", lines.append, stream=out)
    progress.last -= 1  # past the redraw interval
    progress.add(5)
    assert out.getvalue().startswith("\rdata convert | train | [##########..........] 5/10 images")
    assert "images/s | eta: " in out.getvalue()
    assert lines == []  # the bar, not log lines, until the end
    progress.finish()
    assert lines[0].startswith("data convert | train | done | 5/10 images (50%)")


def test_counted_work_estimates_what_remains_from_the_rate_so_far():
    progress = CountProgress("stage", 400, "files", stream=io.StringIO())
    progress.done = 100
    assert progress.line(progress.started + 30).endswith("eta: 1:30")


def test_log_lines_carry_a_time_and_a_level_and_follow_the_configured_level(capsys):
    from disttrain.progress import configure_logging, log

    try:
        configure_logging("WARNING")
        log("train | hidden at WARNING")
        log("server | WARNING | shown")
        configure_logging("INFO")
        log("train | shown at INFO")
    finally:
        configure_logging("INFO")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d WARNING server \| WARNING \| shown", lines[0]
    )
    assert lines[1].endswith(" INFO train | shown at INFO")


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
