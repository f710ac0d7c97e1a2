"""`disttrain board`: TensorBoard over a run's logs."""

from __future__ import annotations

import subprocess
import sys

from disttrain.storage import RunDir


def run_board(run_dir_url: str, port: int) -> None:
    run_dir = RunDir(run_dir_url)
    logdir = run_dir.path("logs")
    print(f"board | TensorBoard on {logdir} | open http://localhost:{port}/", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            logdir,
            "--port",
            str(port),
            "--bind_all",
        ],
        check=False,
    )
