"""The summary mirror uploads on its own thread: an outage never holds up its caller."""

from __future__ import annotations

import threading
import time

from disttrain.storage import TRAIN_LOGS, RunDir
from disttrain.summaries import SummaryMirror

EVENTS = "events.out.tfevents.1.chief"


def wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_sync_during_an_outage_returns_at_once_and_the_files_land_after_it(
    own_azurite, tmp_path, brief_storage_retries
):
    run_dir = RunDir(f"az://{own_azurite.create_container()}/run")
    local = tmp_path / "events"
    local.mkdir()
    caller_free = threading.Event()
    # Each retry the mirror logs records whether its caller had got control back by then:
    # a synchronous upload would hold the caller here until the wait ran out (False).
    caller_was_free_during_retries: list[bool] = []
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "retry" in line:
            caller_was_free_during_retries.append(caller_free.wait(60))

    mirror = SummaryMirror(local, run_dir, TRAIN_LOGS, every_seconds=0.5, log=log)
    own_azurite.stop()
    (local / EVENTS).write_bytes(b"first events")
    mirror.request_sync()
    caller_free.set()
    wait_for(lambda: any("summaries | WARNING" in line for line in lines), "the failed sync")
    own_azurite.start()

    remote = f"{TRAIN_LOGS}/{EVENTS}"
    wait_for(lambda: run_dir.exists(remote), "the periodic sync after the outage")
    with open(local / EVENTS, "ab") as events:
        events.write(b" and more")
    assert mirror.close() is True  # the final sync at close uploads what was added last

    assert caller_was_free_during_retries and all(caller_was_free_during_retries)
    assert run_dir.read_bytes(remote) == b"first events and more"


def test_close_during_an_outage_reports_the_failure_and_does_not_raise(
    own_azurite, tmp_path, brief_storage_retries
):
    run_dir = RunDir(f"az://{own_azurite.create_container()}/run")
    local = tmp_path / "events"
    local.mkdir()
    lines: list[str] = []
    mirror = SummaryMirror(local, run_dir, TRAIN_LOGS, every_seconds=3600, log=lines.append)
    (local / EVENTS).write_bytes(b"events")
    own_azurite.stop()
    assert mirror.close() is False
    assert f"summaries | WARNING | {TRAIN_LOGS}/{EVENTS}" in "\n".join(lines)
