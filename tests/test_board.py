"""`disttrain board` on an Azurite run dir: TensorBoard serves the mirrored train/eval scalars."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import tensorflow as tf
from processes import cli, kill_tree, start_cli

from disttrain.board import mirror_logs
from disttrain.storage import EVAL_LOGS, TRAIN_LOGS, RunDir
from disttrain.summaries import SummaryMirror


def write_scalars(local: Path, steps: range, **scalars: float) -> None:
    writer = tf.summary.create_file_writer(str(local))
    with writer.as_default():
        for step in steps:
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value + step, step=step)
    writer.close()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(predicate, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:  # TensorBoard not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mirror_appends_only_what_each_event_file_gained(tmp_path):
    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.write_bytes("logs/train/events.out.1", b"abc")
    cache = tmp_path / "cache"
    assert mirror_logs(run_dir, cache) == 3
    run_dir.write_bytes("logs/train/events.out.1", b"abcdef")
    assert mirror_logs(run_dir, cache) == 3 and mirror_logs(run_dir, cache) == 0
    assert (cache / "train" / "events.out.1").read_bytes() == b"abcdef"


def test_board_serves_train_and_eval_scalars_of_an_azurite_run_dir(azurite_env, tmp_path):
    azurite = azurite_env  # this process writes the run dir too
    run_dir_url = f"az://{azurite.create_container()}/run"
    env = {**azurite.env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run_dir = RunDir(run_dir_url)
    write_scalars(tmp_path / "train", range(1, 4), loss=1.0, accuracy=0.1)
    write_scalars(tmp_path / "eval", range(1, 2), loss=2.0, accuracy=0.2)
    SummaryMirror(tmp_path / "train", run_dir, TRAIN_LOGS).sync()
    eval_mirror = SummaryMirror(tmp_path / "eval", run_dir, EVAL_LOGS)
    eval_mirror.sync()

    port = free_port()
    log = tmp_path / "board.log"
    board = start_cli(
        "board",
        "--run-dir",
        run_dir_url,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--refresh-seconds",
        "1",
        log_path=log,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}/data/plugin/scalars"
        tags = wait_for(
            lambda: (t := get_json(f"{base}/tags")) and {"train", "eval"} <= set(t) and t,
            "TensorBoard to list the train and eval runs",
        )
        assert {"loss", "accuracy"} <= set(tags["train"])
        assert {"loss", "accuracy"} <= set(tags["eval"])
        points = get_json(f"{base}/scalars?run=train&tag=loss")
        assert [step for _, step, _ in points] == [1, 2, 3]

        # A new evaluation lands in the run dir while TensorBoard runs: the mirror brings it.
        write_scalars(tmp_path / "eval", range(2, 3), loss=2.0, accuracy=0.2)
        eval_mirror.sync()
        wait_for(
            lambda: len(get_json(f"{base}/scalars?run=eval&tag=accuracy")) == 2,
            "the second eval point to appear",
        )
        assert f"open http://127.0.0.1:{port}/" in log.read_text()
        assert azurite.connection_string() not in log.read_text()
    finally:
        kill_tree(board)


def listening_addresses(port: int) -> set[str]:
    """The local addresses of this network namespace's sockets listening on `port`."""
    addresses = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
                addresses.add(
                    socket.inet_ntop(
                        socket.AF_INET if width == 4 else socket.AF_INET6, b"".join(words)
                    )
                )
    return addresses


def test_board_listens_on_this_machine_only_unless_told_otherwise(tmp_path):
    run_dir = tmp_path / "run"
    write_scalars(run_dir / TRAIN_LOGS, range(1, 3), loss=1.0)
    port = free_port()
    log = tmp_path / "board.log"
    board = start_cli("board", "--run-dir", str(run_dir), "--port", str(port), log_path=log)
    try:
        tags = wait_for(
            lambda: get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags"),
            "TensorBoard to answer on 127.0.0.1",
        )
        assert "train" in tags
        assert listening_addresses(port) == {"127.0.0.1"}
        assert f"open http://127.0.0.1:{port}/" in log.read_text()
    finally:
        kill_tree(board)


def test_board_refuses_a_run_dir_that_does_not_exist_and_a_port_that_is_taken(tmp_path):
    missing = cli("board", "--run-dir", str(tmp_path / "no-such-run"))
    assert missing.returncode == 2
    assert missing.stderr.endswith(
        f"error: run dir {tmp_path / 'no-such-run'}: does not exist: no run has written there\n"
    )
    (tmp_path / "run").mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = cli("board", "--run-dir", str(tmp_path / "run"), "--port", str(port))
    assert taken.returncode == 2
    assert taken.stderr.count("\n") == 1 and taken.stderr.startswith(
        f"error: --port: {port} on 127.0.0.1 is taken ("
    )


def test_board_on_a_run_without_logs_yet_says_so_and_serves(tmp_path):
    (tmp_path / "run").mkdir()
    port, log = free_port(), tmp_path / "board.log"
    board = start_cli(
        "board", "--run-dir", str(tmp_path / "run"), "--port", str(port), log_path=log
    )
    try:
        wait_for(lambda: f"open http://127.0.0.1:{port}/" in log.read_text(), "the board's URL")
        assert f"board | no logs under {tmp_path / 'run'}/logs yet" in log.read_text()
    finally:
        kill_tree(board)
