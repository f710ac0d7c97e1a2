"""Running the real `disttrain` CLI from tests: in the foreground or in the background."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli(
    *args: str, env: dict | None = None, timeout: float = 600, check: bool = False, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """Run `disttrain ARGS` in a subprocess and capture its output."""
    result = subprocess.run(
        [sys.executable, "-m", "disttrain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"disttrain {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def install_plugin(package: Path, target: Path) -> Path:
    """A test plug-in package (tests/plugins/...) installed by pip into `target`, a folder of
    its own, as an installed third-party package would be; returns the folder to put on
    PYTHONPATH."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        + ["--no-build-isolation", "--target", str(target), str(package)],
        check=True,
        capture_output=True,
    )
    return target


def start_cli(*args: str, log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `disttrain ARGS` in the background, output to `log_path` (its own session).
    Python's faulthandler is on, for `exit_code` to show where a process hangs."""
    log = open(log_path, "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "disttrain", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
        cwd=REPO,
        start_new_session=True,
    )


def exit_code(proc: subprocess.Popen, log_path: Path, timeout: float) -> int:
    """The exit code of a process `start_cli` started. One still running after `timeout`
    fails the test with its threads' stacks: SIGABRT makes faulthandler print them into
    its log, whose end the failure shows."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        tail = log_path.read_text(errors="replace")[-6000:]
        raise AssertionError(
            f"still running {timeout:.0f} s on; the end of its log:\n{tail}"
        ) from None


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a background CLI and everything in its session (test cleanup)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def small_job(run_dir: Path, data_root: Path, *extra: str, name: str = "t") -> list[str]:
    """`--set` arguments for a small, fast job on the built-in dataset."""
    return [
        "--set",
        f"name={name}",
        "--set",
        f"run_dir={run_dir}",
        "--set",
        f"data.root={data_root}",
        "--set",
        "train.log_every_seconds=1",
        "--set",
        "eval.poll_seconds=0.5",
        *extra,
    ]
