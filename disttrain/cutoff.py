"""The chief's side of `cluster.chief_timeout_seconds`: a chief cut off from its servers exits.

Under ParameterServerStrategy nothing in TensorFlow notices a network partition: its gRPC
calls have no deadline, and over a path that silently drops packets a call waits as long
as TCP keeps retransmitting (about 15 minutes on Linux), after which the coordinator waits
up to an hour for a worker to come back. Meanwhile the servers, which cannot reach the
chief either, stop serving it after `cluster.chief_timeout_seconds` (disttrain/server.py)
and are restarted empty. So the chief applies the same rule from its side: once none of
its servers has accepted a connection for that long, whatever it trained since its last
checkpoint is lost with them, and it exits with the peers' exit code (3) to be restarted;
its replacement meets the restarted servers and resumes from the last checkpoint.

A thread probes, as the servers do: the main thread is inside a TensorFlow call that no
exception reaches, so it exits the process (`os._exit`), after saying why.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from disttrain.peers import accepts

EXIT_PEERS = 3  # a peer did not answer: worth a restart (cli.py exits 3 for PeerTimeout)
POLL_SECONDS = 2.0


class CutOffWatch:
    """Watches `servers` (name -> address); `exit` after `timeout` s with none reachable."""

    def __init__(
        self,
        servers: dict[str, str],
        timeout: float,
        log: Callable[[str], None],
        exit: Callable[[int], None] = os._exit,
        reachable: Callable[[str], bool] = accepts,
    ):
        self.servers, self.timeout, self.log = servers, timeout, log
        self.exit, self.reachable = exit, reachable
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="cutoff-watch", daemon=True)

    def start(self) -> None:
        if self.servers and self.timeout > 0:
            self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _watch(self) -> None:
        last_reached = time.monotonic()
        while not self.stopped.wait(POLL_SECONDS):
            if any(self.reachable(address) for address in self.servers.values()):
                last_reached = time.monotonic()
            elif time.monotonic() - last_reached > self.timeout and not self.stopped.is_set():
                self._give_up()
                return

    def _give_up(self) -> None:
        names = ", ".join(sorted(self.servers))
        self.log(
            f"train | cut off | none of the servers ({names}) accepted a connection for "
            f"{self.timeout:.0f}s (cluster.chief_timeout_seconds): they stop serving this "
            "chief after as long; exiting to restart from the last checkpoint"
        )
        sys.stdout.flush()
        print(f"error: cut off from every server for {self.timeout:.0f}s: {names}", file=sys.stderr)
        sys.stderr.flush()
        self.exit(EXIT_PEERS)


def servers_of(cluster_spec: dict) -> dict[str, str]:
    """Every ps and worker of a cluster spec (role -> addresses), as name -> address."""
    return {
        f"{role}-{index}": address
        for role in ("ps", "worker")
        for index, address in enumerate(cluster_spec.get(role, []))
    }
