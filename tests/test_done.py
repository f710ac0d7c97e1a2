"""The DONE marker: servers and the evaluator stop on it, but not on an earlier run's."""

import socket
import threading

import pytest

from disttrain import server
from disttrain.done import done_step, is_done, write_done
from disttrain.peers import PeerTimeout
from disttrain.storage import DONE_FILE, RunDir


def test_done_counts_only_for_a_run_that_reached_the_steps(tmp_path):
    run_dir = RunDir(str(tmp_path))
    assert not is_done(run_dir, 100)
    write_done(run_dir, 100)
    assert done_step(run_dir) == 100
    assert is_done(run_dir, 100)
    assert not is_done(run_dir, 200)  # re-submitted to train further


def test_an_unreadable_marker_is_not_done(tmp_path):
    (tmp_path / DONE_FILE).write_text("{not json")
    assert not is_done(RunDir(str(tmp_path)), 1)


def test_a_server_ignores_a_stale_done_and_stops_on_the_new_one(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "POLL_SECONDS", 0.05)
    run_dir = RunDir(str(tmp_path))
    write_done(run_dir, 60)  # an earlier, shorter run in the same run dir
    with socket.socket() as chief:
        chief.bind(("127.0.0.1", 0))
        chief.listen()
        address = f"127.0.0.1:{chief.getsockname()[1]}"
        reasons = []
        waiter = threading.Thread(
            target=lambda: reasons.append(server.wait_for_end(run_dir, 120, address, 60))
        )
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive(), "the server stopped on the earlier run's DONE"
        write_done(run_dir, 120)
        waiter.join(timeout=10)
    assert reasons == ["the chief wrote DONE"]


def test_a_server_stops_when_the_chief_never_comes_up(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "POLL_SECONDS", 0.05)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        reason = server.wait_for_end(RunDir(str(tmp_path)), 10, address, chief_timeout=0.25)
    assert reason == f"the chief ({address}) never came up within 1s"


def test_a_server_fails_to_be_restarted_when_a_chief_it_reached_stays_unreachable(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(server, "POLL_SECONDS", 0.05)
    chief = socket.socket()
    chief.bind(("127.0.0.1", 0))
    chief.listen()
    address = f"127.0.0.1:{chief.getsockname()[1]}"
    threading.Timer(0.5, chief.close).start()  # reachable at first, then gone
    # Raised, not returned: exit 3, so the server's Job starts it again for a chief that
    # may only have been cut off (a server that exited 0 would never come back).
    with pytest.raises(PeerTimeout, match=rf"the chief \({address}\) was unreachable for 0s"):
        server.wait_for_end(RunDir(str(tmp_path)), 10, address, chief_timeout=0.3)
