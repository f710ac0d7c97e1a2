"""The chief's cut-off watch (disttrain/cutoff.py), on real sockets: it exits once no
server has accepted a connection for the timeout, and not while any one does."""

from __future__ import annotations

import socket
import threading

import pytest

from disttrain import cutoff
from disttrain.cutoff import EXIT_PEERS, CutOffWatch, servers_of


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(cutoff, "POLL_SECONDS", 0.05)


def listening() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def address_of(sock: socket.socket) -> str:
    return f"127.0.0.1:{sock.getsockname()[1]}"


def watch(servers: dict[str, str], timeout: float):
    exits, lines = [], []
    exited = threading.Event()

    def record_exit(code: int) -> None:
        exits.append(code)
        exited.set()

    watcher = CutOffWatch(servers, timeout, lines.append, exit=record_exit)
    return watcher, exits, lines, exited


def test_a_chief_reaching_no_server_for_the_timeout_exits_3_naming_them():
    ps, worker = listening(), listening()
    servers = {"ps-0": address_of(ps), "worker-0": address_of(worker)}
    watcher, exits, lines, exited = watch(servers, timeout=0.3)
    watcher.start()
    ps.close()
    worker.close()  # both gone (as behind a partition: nothing answers)
    assert exited.wait(timeout=30)
    assert exits == [EXIT_PEERS]
    assert lines == [
        "train | cut off | none of the servers (ps-0, worker-0) accepted a connection for 0s "
        "(cluster.chief_timeout_seconds): they stop serving this chief after as long; "
        "exiting to restart from the last checkpoint"
    ]


def test_one_reachable_server_is_enough_and_a_stopped_watch_never_exits():
    ps, worker = listening(), listening()
    servers = {"ps-0": address_of(ps), "worker-0": address_of(worker)}
    watcher, exits, _, exited = watch(servers, timeout=0.3)
    watcher.start()
    worker.close()  # a worker being restarted: the coordinator copes with that
    assert not exited.wait(timeout=1.5)
    watcher.stop()  # training ended: the servers stop on DONE
    ps.close()
    assert not exited.wait(timeout=1.0)
    assert exits == []


def test_servers_are_every_ps_and_worker_of_the_cluster_spec():
    spec = {"chief": ["c:1"], "ps": ["p:1"], "worker": ["w:1", "w:2"]}
    assert servers_of(spec) == {"ps-0": "p:1", "worker-0": "w:1", "worker-1": "w:2"}
