"""A container's first process: the kubelet runs `ip netns exec NETNS python podinit.py SPEC`.

`ip netns exec` already gave it the pod's network namespace, a private mount namespace and
the pod's /etc/hosts. This script adds what a container runtime would: its own hostname
(a UTS namespace), the pod's volumes bind-mounted at their mount paths (visible only in
this mount namespace), the working directory, then `exec`s the container's command with its
resolved environment, so the container's process keeps this pid. Standard library only.
"""

import ctypes
import json
import os
import socket
import sys

CLONE_NEWUTS = 0x04000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        sys.exit(f"podinit: {what}: {os.strerror(errno)}")


def main() -> None:
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWUTS), "unshare(CLONE_NEWUTS)")
    socket.sethostname(spec["hostname"])
    for mount in spec["mounts"]:
        source, target = mount["source"].encode(), mount["target"].encode()
        _check(libc.mount(source, target, None, MS_BIND | MS_REC, None), f"bind {mount}")
        if mount["readOnly"]:
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY
            _check(libc.mount(None, target, None, flags, None), f"read-only {mount}")
    os.chdir(spec["workingDir"])
    try:
        os.execvpe(spec["command"][0], spec["command"], spec["env"])
    except OSError as error:
        # What a runtime reports as StartError; the exit code matches a shell's.
        print(f"podinit: exec {spec['command'][0]!r}: {error}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
