"""Publishing checkpoints and restoring the newest good one, with real TF checkpoint files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from disttrain.checkpoints import (
    BackgroundPublisher,
    checkpoint_folder,
    fetch_checkpoint,
    latest_manifest,
    publish_checkpoint,
    published_steps,
    record_evaluation,
    staged_prefix,
)
from disttrain.storage import BEST_METRICS, EVAL_RESULTS, LATEST_FILE, RunDir

DATA_FILE = "ckpt.data-00000-of-00001"
REPO = Path(__file__).resolve().parents[1]


def write_checkpoint(staging: Path, step: int, values: int = 1000) -> tuple[Path, np.ndarray]:
    """A real TensorFlow checkpoint of one variable filled from `step`; its folder and values."""
    expected = np.arange(values, dtype=np.float32) + step
    checkpoint = tf.train.Checkpoint(weights=tf.Variable(expected))
    prefix = staged_prefix(staging, step)
    checkpoint.write(str(prefix))
    return prefix.parent, expected


def read_weights(prefix: Path, values: int = 1000) -> np.ndarray:
    weights = tf.Variable(np.zeros(values, dtype=np.float32))
    tf.train.Checkpoint(weights=weights).read(str(prefix)).assert_consumed()
    return weights.numpy()


def staged_blocks(blob_client) -> list:
    """Blocks uploaded but not yet committed (none before the blob's first block)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return blob_client.get_block_list("uncommitted")[1]
    except ResourceNotFoundError:
        return []


def publish(run_dir: RunDir, staging: Path, step: int, keep: int = 10, values: int = 1000):
    folder, expected = write_checkpoint(staging, step, values)
    publish_checkpoint(run_dir, folder, step, keep, log=lambda _: None)
    return expected


def test_published_checkpoint_restores_the_same_values_from_azurite(azurite_env, tmp_path):
    run_dir = RunDir(f"az://{azurite_env.create_container()}/run")
    expected = publish(run_dir, tmp_path / "staging", 100)

    latest = json.loads(run_dir.read_text(LATEST_FILE))
    assert latest["step"] == 100 and sorted(latest["files"]) == [DATA_FILE, "ckpt.index"]
    for name in latest["files"]:
        assert run_dir.size(f"checkpoints/ckpt-100/{name}") == latest["sizes"][name]
    found = fetch_checkpoint(run_dir, tmp_path / "restore", log=lambda _: None)
    assert found is not None and found[0] == 100
    np.testing.assert_array_equal(read_weights(found[1]), expected)


def test_truncated_newest_checkpoint_falls_back_to_the_previous_and_says_so(azurite_env, tmp_path):
    run_dir = RunDir(f"az://{azurite_env.create_container()}/run")
    previous = publish(run_dir, tmp_path / "staging", 100)
    publish(run_dir, tmp_path / "staging", 200)
    data = f"{checkpoint_folder(200)}/{DATA_FILE}"
    run_dir.write_bytes(data, run_dir.read_bytes(data)[:-100])

    lines: list[str] = []
    found = fetch_checkpoint(run_dir, tmp_path / "restore", log=lines.append)

    assert found is not None and found[0] == 100
    np.testing.assert_array_equal(read_weights(found[1]), previous)
    warning = "\n".join(lines)
    assert "ckpt-200 is unusable" in warning and DATA_FILE in warning
    assert "falling back" in warning


def test_corrupt_bytes_of_the_same_size_fail_the_sha256_check(tmp_path):
    run_dir = RunDir(str(tmp_path / "run"))
    publish(run_dir, tmp_path / "staging", 100)
    publish(run_dir, tmp_path / "staging", 200)
    data = f"{checkpoint_folder(200)}/{DATA_FILE}"
    blob = bytearray(run_dir.read_bytes(data))
    blob[10] ^= 0xFF
    run_dir.write_bytes(data, bytes(blob))
    lines: list[str] = []
    assert fetch_checkpoint(run_dir, tmp_path / "restore", log=lines.append)[0] == 100
    assert "does not match its sha256" in "\n".join(lines)


def test_a_folder_newer_than_latest_is_an_unfinished_upload_and_is_not_restored(tmp_path):
    run_dir = RunDir("memory://unfinished/run")
    publish(run_dir, tmp_path / "staging", 100)
    folder, _ = write_checkpoint(tmp_path / "staging", 200)
    run_dir.put_file(folder / DATA_FILE, f"{checkpoint_folder(200)}/{DATA_FILE}")  # cut short
    found = fetch_checkpoint(run_dir, tmp_path / "restore", log=lambda _: None)
    assert found is not None and found[0] == 100


def test_retention_keeps_the_newest_and_never_deletes_latest_or_the_best_export(tmp_path):
    run_dir = RunDir(str(tmp_path / "run"))
    publish(run_dir, tmp_path / "staging", 100)
    run_dir.write_text(BEST_METRICS, json.dumps({"step": 100, "accuracy": 0.9}))
    publish(run_dir, tmp_path / "staging", 200)
    # An upload that was cut short, older than what LATEST will say: cleaned up.
    run_dir.write_text(f"{checkpoint_folder(250)}/{DATA_FILE}", "partial")
    for step in (300, 400, 500):
        publish(run_dir, tmp_path / "staging", step, keep=2)
    # An upload in progress (newer than LATEST) is left alone.
    run_dir.write_text(f"{checkpoint_folder(600)}/{DATA_FILE}", "uploading")
    publish_checkpoint(
        run_dir, write_checkpoint(tmp_path / "staging", 550)[0], 550, 2, log=lambda _: None
    )
    assert published_steps(run_dir) == [100, 500, 550, 600]
    assert latest_manifest(run_dir).step == 550


def test_an_evaluation_recorded_again_is_in_results_once(tmp_path):
    # The evaluator records a step again when the answer to its first rewrite was lost.
    run_dir = RunDir(str(tmp_path / "run"))
    first = {"step": 100, "accuracy": 0.5, "loss": 1.0, "examples": 64}
    assert record_evaluation(run_dir, first)
    assert record_evaluation(run_dir, {"step": 200, "accuracy": 0.6, "loss": 0.9, "examples": 64})
    assert not record_evaluation(run_dir, first)
    lines = [json.loads(line) for line in run_dir.read_text(EVAL_RESULTS).splitlines()]
    assert [line["step"] for line in lines] == [100, 200]


def test_retention_keeps_what_latest_points_to_even_when_it_is_not_the_newest(tmp_path):
    run_dir = RunDir(str(tmp_path / "run"))
    for step in (100, 200, 300):
        publish(run_dir, tmp_path / "staging", step)
    # A restarted chief fell back to ckpt-100 and republished it: LATEST says 100.
    publish(run_dir, tmp_path / "staging", 100, keep=1)
    assert 100 in published_steps(run_dir)
    assert fetch_checkpoint(run_dir, tmp_path / "restore", log=lambda _: None)[0] == 100


def test_a_newer_checkpoint_supersedes_one_still_waiting_to_upload(tmp_path):
    run_dir = RunDir(str(tmp_path / "run"))
    first_upload_may_finish = threading.Event()
    lines: list[str] = []

    def hold_the_first_publish() -> set[int]:
        first_upload_may_finish.wait(30)
        return set()

    publisher = BackgroundPublisher(run_dir, 10, lines.append, hold_the_first_publish)
    staging = tmp_path / "staging"
    publisher.submit(write_checkpoint(staging, 100)[0], 100)
    while not run_dir.exists(LATEST_FILE):  # ckpt-100 is committed, its thread is held
        time.sleep(0.05)
    waiting, _ = write_checkpoint(staging, 200)
    publisher.submit(waiting, 200)
    publisher.submit(write_checkpoint(staging, 300)[0], 300)
    first_upload_may_finish.set()
    publisher.flush()

    assert publisher.published == [100, 300]
    assert published_steps(run_dir) == [100, 300]
    assert "superseded | ckpt-200 by ckpt-300" in "\n".join(lines)
    assert not waiting.exists()  # its staging space was given back
    assert not list(staging.iterdir())


def test_storage_outage_during_an_upload_loses_nothing_and_the_next_publish_succeeds(
    own_azurite, tmp_path
):
    from azure.storage.blob import BlobServiceClient

    container = own_azurite.create_container()
    run_dir = RunDir(f"az://{container}/run")
    lines: list[str] = []
    publisher = BackgroundPublisher(run_dir, 10, lines.append)
    staging = tmp_path / "staging"
    first = publish(run_dir, staging, 100)

    # 96 MiB: above the SDK's single-request limit, so it is uploaded in blocks.
    big, _ = write_checkpoint(staging, 200, values=24 << 20)
    publisher.submit(big, 200)
    blob = BlobServiceClient.from_connection_string(own_azurite.connection_string())
    data_blob = blob.get_blob_client(container, f"run/{checkpoint_folder(200)}/{DATA_FILE}")
    deadline = time.monotonic() + 60
    while not staged_blocks(data_blob):  # some blocks are there, not committed: mid-upload
        assert time.monotonic() < deadline, "the upload of ckpt-200 never started"
        time.sleep(0.02)
    own_azurite.stop()
    stopped_during_upload = publisher.published == []
    time.sleep(2)
    own_azurite.start()
    publisher.flush()

    assert stopped_during_upload
    # Whether ckpt-200 made it on a retry or failed, LATEST names a complete checkpoint.
    committed = latest_manifest(run_dir).step
    assert committed in (100, 200)
    restore_log: list[str] = []
    assert fetch_checkpoint(run_dir, tmp_path / "r1", restore_log.append)[0] == committed
    assert restore_log == []
    # The next publish succeeds and everything published earlier is still there.
    publisher.submit(write_checkpoint(staging, 300)[0], 300)
    publisher.flush()
    assert publisher.published[-1] == 300 and latest_manifest(run_dir).step == 300
    restored_first = fetch_checkpoint(run_dir, tmp_path / "r2", lines.append, step=100)
    np.testing.assert_array_equal(read_weights(restored_first[1]), first)


def writes_under_pss(which: str, saves: int) -> dict:
    """tests/checkpoint_writes_under_pss.py in a fresh process (a strategy sets up TF's
    runtime for the whole process): its JSON result."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "checkpoint_writes_under_pss.py"), which, str(saves)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_chiefs_checkpoint_save_is_traced_once_across_saves_under_pss():
    """With the variables on a ps, `checkpoint.write(str)` traces a new save function at
    every save, and TF warns of retracing from the fifth on; the chief's writer traces once."""
    plain = writes_under_pss("plain", 6)
    assert plain["retracing_warnings"] >= 1  # what the chief's console showed before
    traced = writes_under_pss("traced", 6)
    assert traced["traces"] == 1 and traced["retracing_warnings"] == 0
    assert traced["last_checkpoint_holds_last_values"]
