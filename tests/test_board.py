"""`disttrain board`: TensorBoard serves a run's scalars (mirrored from an Azurite run dir),
its training images, confusion matrices and HParams, asked through TensorBoard's HTTP API."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from processes import cli, kill_tree, start_cli

from disttrain.board import mirror_logs
from disttrain.cluster import CHIEF, ClusterShape, Task
from disttrain.config import Config, load_config
from disttrain.evaluator import Evaluator
from disttrain.hparams import flat_hparams
from disttrain.pictures import TRAINING_IMAGES, confusion_matrix_picture, per_class_accuracy
from disttrain.storage import CLASS_NAMES_FILE, EVAL_LOGS, EVAL_RESULTS, TRAIN_LOGS, RunDir
from disttrain.summaries import SummaryMirror
from disttrain.train import train


class TrainedRun:
    """A run trained and evaluated in this process: 4 steps on the built-in dataset, a
    checkpoint and an evaluation every 2, and the last evaluation's confusion matrix."""

    def __init__(self, config: Config):
        self.config, self.run_dir = config, RunDir(config.run_dir)
        train(config, Task(CHIEF, 0), ClusterShape.of(config))
        evaluator = Evaluator(config)
        try:
            evaluator.run_continuously()
            # The evaluator holds the last checkpoint: the same pass again gives its matrix.
            _, self.confusion = evaluator.measure_with_confusion()
        finally:
            evaluator.close()
        results = [json.loads(line) for line in self.run_dir.read_text(EVAL_RESULTS).splitlines()]
        self.evaluated_steps = [result["step"] for result in results]
        self.last = results[-1]  # as the evaluator recorded it


def few_of_each_class(builtin: Path, root: Path, per_class: int = 10) -> Path:
    """A copy of `per_class` images of every built-in class per split: every class is in
    the confusion matrix, and the chief and evaluator decode little."""
    for split in ("train", "test"):
        for folder in sorted(p for p in (builtin / split).iterdir() if p.is_dir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.glob("*.jpg"))[:per_class]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root


@pytest.fixture(scope="module")
def trained_run(builtin_data, tmp_path_factory) -> TrainedRun:
    folder = tmp_path_factory.mktemp("trained")
    overrides = [
        f"run_dir={folder / 'run'}",
        "data.source=image_folder",
        f"data.root={few_of_each_class(builtin_data, folder / 'data')}",
        "data.batch_size=8",
        "train.steps=4",
        "train.steps_per_schedule=2",
        "checkpoint.every_steps=2",
        "cluster.workers=0",
        "cluster.ps=0",
        "eval.batch_size=200",
        "eval.poll_seconds=0.2",
    ]
    return TrainedRun(load_config(None, overrides))


class Board:
    def __init__(self, port: int, log: Path):
        self.port, self.log, self.url = port, log, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def board(trained_run, tmp_path_factory):
    """`disttrain board` on the trained run, as a user starts it (the default host)."""
    port, log = free_port(), tmp_path_factory.mktemp("board") / "board.log"
    process = start_cli(
        "board", "--run-dir", trained_run.config.run_dir, "--port", str(port), log_path=log
    )
    try:
        url = f"http://127.0.0.1:{port}/data/plugin"
        wait_for(
            lambda: (
                "eval" in get_json(f"{url}/images/tags")
                and get_json(f"{url}/scalars/tags").get("eval")
            ),
            "TensorBoard to load the train and eval runs",
        )
        yield Board(port, log)
    finally:
        kill_tree(process)


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


def post_json(url: str, body: dict):
    """The HParams plugin's routes take their request as a JSON body."""
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def get_png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=5) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


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


def test_board_listens_on_this_machine_only_unless_told_otherwise(trained_run, board):
    tags = get_json(f"{board.url}/data/plugin/scalars/tags")
    assert "train" in tags
    assert listening_addresses(board.port) == {"127.0.0.1"}
    assert f"open http://127.0.0.1:{board.port}/" in board.log.read_text()


def test_board_shows_a_few_augmented_training_images_once(trained_run, board):
    images = f"{board.url}/data/plugin/images"
    shown = get_json(f"{images}/tags")["train"]["training_images"]
    assert shown["samples"] == TRAINING_IMAGES
    class_names = json.loads(trained_run.run_dir.read_text(CLASS_NAMES_FILE))
    listed = re.search(r"Classes, in order: ([^<]*)", shown["description"])[1].split(", ")
    assert len(listed) == TRAINING_IMAGES and set(listed) <= set(class_names)
    for sample in range(TRAINING_IMAGES):
        [image] = get_json(f"{images}/images?run=train&tag=training_images&sample={sample}")
        assert image["step"] == 0  # once, at the start
        size = trained_run.config.data.image_size
        assert get_png(f"{images}/individualImage?{image['query']}").shape == (size, size, 3)


def test_board_shows_the_confusion_matrix_and_per_class_accuracy_of_every_evaluation(
    trained_run, board
):
    images = f"{board.url}/data/plugin/images"
    evaluations = get_json(f"{images}/images?run=eval&tag=confusion_matrix")
    assert [image["step"] for image in evaluations] == trained_run.evaluated_steps
    class_names = json.loads(trained_run.run_dir.read_text(CLASS_NAMES_FILE))
    last = get_png(f"{images}/individualImage?{evaluations[-1]['query']}")
    np.testing.assert_array_equal(
        last, confusion_matrix_picture(trained_run.confusion, class_names)
    )

    accuracy = per_class_accuracy(trained_run.confusion)
    scalars = f"{board.url}/data/plugin/scalars/scalars?run=eval&tag="
    for name, expected in zip(class_names, accuracy):
        points = get_json(scalars + urllib.parse.quote(f"per_class_accuracy/{name}"))
        assert [step for _, step, _ in points] == trained_run.evaluated_steps
        assert points[-1][2] == pytest.approx(expected)
    # The matrix is the evaluation's own: its diagonal is the accuracy it recorded.
    confusion = trained_run.confusion
    assert np.trace(confusion) / confusion.sum() == pytest.approx(trained_run.last["accuracy"])
    assert confusion.sum() == trained_run.last["examples"] and (confusion.sum(axis=1) > 0).all()


def test_board_compares_runs_by_their_resolved_config_in_hparams(trained_run, board):
    hparams = f"{board.url}/data/plugin/hparams"
    experiment = post_json(f"{hparams}/experiment", {"experimentName": ""})
    expected = flat_hparams(trained_run.config)
    assert {info["name"] for info in experiment["hparamInfos"]} == set(expected)
    assert {info["name"]["tag"] for info in experiment["metricInfos"]} == {"accuracy", "loss"}

    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    columns = [{"metric": {"tag": tag}} for tag in ("accuracy", "loss")]
    [group] = post_json(
        f"{hparams}/session_groups",
        {"allowedStatuses": statuses, "colParams": columns, "startIndex": 0, "sliceSize": 10},
    )["sessionGroups"]
    assert group["name"] == trained_run.config.run_dir
    assert group["hparams"] == expected
    metrics = {value["name"]["tag"]: value["value"] for value in group["metricValues"]}
    assert metrics["accuracy"] == pytest.approx(trained_run.last["accuracy"])
    assert metrics["loss"] == pytest.approx(trained_run.last["loss"])


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
