"""Waiting for peers before starting a server or the coordinator. Pure Python."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

MOOT_POLL_SECONDS = 5.0


class PeerTimeout(RuntimeError):
    """A peer did not resolve or accept connections in time; the message names it."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def resolves(address: str) -> bool:
    host, port = split_address(address)
    try:
        socket.getaddrinfo(host, port)
        return True
    except OSError:
        return False


def accepts(address: str, timeout: float = 1.0) -> bool:
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_peers(
    peers: dict[str, str],
    check: Callable[[str], bool],
    timeout: float,
    what: str,
    log: Callable[[str], None] = print,
    poll: float = 0.5,
    moot: Callable[[], bool] = lambda: False,
) -> bool:
    """Block until `check(address)` holds for every peer (name -> address), or raise.
    Return False instead once `moot()` says there is no more reason to wait (asked every
    MOOT_POLL_SECONDS: it may read storage), True when every peer is there.

    `what` says what was awaited ("accept connections", "resolve") for the error.
    """
    deadline = time.monotonic() + timeout
    waiting = dict(peers)
    last_report = last_moot_check = 0.0
    while waiting:
        waiting = {name: a for name, a in waiting.items() if not check(a)}
        if not waiting:
            return True
        now = time.monotonic()
        if now - last_moot_check > MOOT_POLL_SECONDS:
            if moot():
                return False
            last_moot_check = now
        if now > deadline:
            missing = ", ".join(f"{n} ({a})" for n, a in sorted(waiting.items()))
            raise PeerTimeout(f"peers did not {what} within {timeout:.0f}s: {missing}")
        if now - last_report > 10:
            log(f"peers | waiting for {len(waiting)} to {what}: {', '.join(sorted(waiting))}")
            last_report = now
        time.sleep(poll)
    return True
