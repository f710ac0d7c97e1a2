"""Azure Storage outside the cluster: Azurite behind the test cluster's gateway.

On AKS a pod reaches Azure Storage through its node, and the user's machine reaches the very
same endpoint, so one connection string serves both: `disttrain secret create` copies it from
the user's environment into the Secret the pods read. The test cluster models exactly that:

    host network namespace (the node, and the user's machine the launcher runs on)
        azurite-blob listening on 198.18.0.1:<port>, and on nothing else
        link dtk<pid>c<n>gw 198.18.0.1/15 ── veth ── gw, in br0 of netns dtk<pid>-c<n>-sw
                                                       └── pods 198.18.0.2, .0.3, ...

and the connection string names `http://198.18.0.1:<port>` for the launcher and the pods alike.

Why this and not:
* Azurite on 127.0.0.1 (tests/azurite.py's default): a pod's 127.0.0.1 is its own.
* A forwarder in the switch namespace to the host's 127.0.0.1: pods and launcher would need
  different endpoints, so the string in the Secret would not be the one that works locally,
  and one string for both is what is under test.
* Azurite in a network namespace of its own on the bridge: the launcher on the host could not
  reach it without a route into the pod network, which is this gateway anyway.
Listening only on the gateway address keeps the emulator off every real interface.

Cleanup: `azurite_outside` stops the emulator and closes the gateway when it exits, also after
a failure, and `KubeCluster.close()` closes the gateway as well. A test process killed outright
leaves its emulator (data folder `azurite-dtk<pid>`) and gateway link (`dtk<pid>c<n>gw`)
behind: the next one to open a gateway removes both once that pid no longer runs.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from azurite import Azurite

from . import NETNS_FAMILY, KubeCluster


@contextmanager
def azurite_outside(cluster: KubeCluster, folder: Path) -> Iterator[Azurite]:
    """A running Azurite that pods and this process both reach at the gateway address."""
    remove_stale_emulators(NETNS_FAMILY)
    emulator = Azurite(Path(folder) / f"azurite-{NETNS_FAMILY}{os.getpid()}")
    try:
        emulator.host = cluster.open_gateway()
        emulator.start()
        yield emulator
    finally:
        emulator.stop()
        cluster.network.close_gateway()


def remove_stale_emulators(family: str) -> None:
    """Kill emulators whose data folder `azurite-<family><pid>` names a test process now gone."""
    owner = re.compile(rf"azurite-{re.escape(family)}(\d+)")
    for proc in Path("/proc").iterdir():
        location = _location_argument(proc) if proc.name.isdigit() else None
        match = owner.fullmatch(Path(location).name) if location else None
        if match and not Path(f"/proc/{match.group(1)}").exists():
            try:
                os.killpg(int(proc.name), signal.SIGKILL)  # Azurite runs in its own session
            except (ProcessLookupError, PermissionError):
                pass


def _location_argument(proc: Path) -> str | None:
    """The `--location` of an azurite process, else None."""
    try:
        args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # the process ended meanwhile
        return None
    if not any("azurite" in arg for arg in args) or "--location" not in args[:-1]:
        return None
    return args[args.index("--location") + 1]
