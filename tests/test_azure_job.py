"""A whole local-cluster job with its run dir on Azurite (Azure Blob through adlfs)."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from azurite import ACCOUNT_KEY
from processes import cli, kill_tree, small_job, start_cli

pytestmark = pytest.mark.integration


def test_job_on_azurite_publishes_everything_and_eval_and_resume_read_it_back(
    azurite, builtin_data, disttrain_home, tmp_path
):
    container = azurite.create_container()
    url = f"az://{container}/runs/job"
    job = small_job(
        url,
        builtin_data,
        "--set",
        "train.steps=200",
        "--set",
        "checkpoint.every_steps=100",
        "--set",
        "eval.max_examples=256",
        name="azure",
    )
    trained = cli("train", *job, env=azurite.env(), check=True)

    blobs = azurite.blob_names(container)
    prefix = "runs/job/"
    names = {b[len(prefix) :] for b in blobs if b.startswith(prefix)}
    for expected in (
        "config.yaml",
        "class_names.json",
        "DONE",
        "checkpoints/LATEST",
        "checkpoints/ckpt-100/MANIFEST.json",
        "checkpoints/ckpt-200/ckpt.index",
        "checkpoints/ckpt-200/ckpt.data-00000-of-00002",
        "eval/results.jsonl",
        "export/best/saved_model.pb",
        "export/best/metrics.json",
    ):
        assert expected in names, f"{expected} missing from the container: {sorted(names)}"
    assert any(n.startswith("logs/train/events.out.tfevents") for n in names)
    assert any(n.startswith("logs/eval/events.out.tfevents") for n in names)
    assert "preflight ok" in trained.stdout
    assert "final eval | step: 200" in trained.stdout
    assert ACCOUNT_KEY not in trained.stdout + trained.stderr

    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    container_client = client.get_container_client(container)

    def blob(name: str) -> bytes:
        return container_client.download_blob(f"{prefix}{name}").readall()

    results, best = blob("eval/results.jsonl"), blob("export/best/metrics.json")
    once = cli("eval", "--run-dir", url, "--once", env=azurite.env(), check=True)
    assert "eval | step:    200" in once.stdout
    # Evaluated already by the sidecar: shown, while its record and the best export stay.
    assert "ckpt-200 is already in eval/results.jsonl: shown, not recorded" in once.stdout
    assert blob("eval/results.jsonl") == results and blob("export/best/metrics.json") == best

    resumed = cli(
        "train",
        *job,
        "--set",
        "train.steps=300",
        "--set",
        "eval.enabled=false",
        env=azurite.env(),
        check=True,
    )
    assert "restored | ckpt-200 | resuming at step 200" in resumed.stdout + resumed.stderr
    done = json.loads(container_client.download_blob(f"{prefix}DONE").readall())
    latest = json.loads(container_client.download_blob(f"{prefix}checkpoints/LATEST").readall())
    assert done["step"] == 300 and latest["step"] == 300
    config_text = container_client.download_blob(f"{prefix}config.yaml").readall().decode()
    assert ACCOUNT_KEY not in config_text and "AccountKey" not in config_text
    for log in (disttrain_home / "local" / "azure" / "logs").glob("*.log"):
        assert ACCOUNT_KEY not in log.read_text(), log


def blob_text(azurite, container: str, name: str) -> str:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    return client.get_blob_client(container, name).download_blob().readall().decode()


def latest_published_step(azurite, container: str, prefix: str) -> int:
    try:
        return json.loads(blob_text(azurite, container, f"{prefix}checkpoints/LATEST"))["step"]
    except Exception:  # not there yet (or the emulator is being stopped)
        return 0


def checkpoint_matches_its_manifest(azurite, container: str, folder: str) -> bool:
    """Every file of a checkpoint folder has the size and sha256 its MANIFEST.json names."""
    from azure.storage.blob import BlobServiceClient

    blobs = BlobServiceClient.from_connection_string(azurite.connection_string())
    manifest = json.loads(blob_text(azurite, container, f"{folder}/MANIFEST.json"))
    for name in manifest["files"]:
        data = blobs.get_blob_client(container, f"{folder}/{name}").download_blob().readall()
        if len(data) != manifest["sizes"][name]:
            return False
        if hashlib.sha256(data).hexdigest() != manifest["sha256"][name]:
            return False
    return True


def test_job_survives_a_storage_outage_mid_run_and_loses_no_checkpoint(
    own_azurite, builtin_data, disttrain_home, tmp_path
):
    container = own_azurite.create_container()
    prefix = "runs/outage/"
    job = small_job(
        f"az://{container}/{prefix.rstrip('/')}",
        builtin_data,
        "--set",
        "train.steps=600",
        "--set",
        "checkpoint.every_steps=100",
        "--set",
        "checkpoint.keep=10",  # all six stay: the one from before the outage is checked
        "--set",
        "eval.enabled=false",
        name="outage",
    )
    log = tmp_path / "launcher.log"
    proc = start_cli("train", *job, log_path=log, env=own_azurite.env())
    try:
        deadline = time.monotonic() + 240
        while (published := latest_published_step(own_azurite, container, prefix)) == 0:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        own_azurite.stop()  # the same port and location come back: clients reconnect
        time.sleep(5)
        running_through_the_outage = proc.poll() is None
        own_azurite.start()
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        kill_tree(proc)

    assert published < 600, "the outage came after the job had finished training"
    assert json.loads(blob_text(own_azurite, container, f"{prefix}DONE"))["step"] == 600
    latest = json.loads(blob_text(own_azurite, container, f"{prefix}checkpoints/LATEST"))
    assert latest["step"] == 600
    assert checkpoint_matches_its_manifest(own_azurite, container, f"{prefix}checkpoints/ckpt-600")
    # Retention keeps all six: what was published before the outage is still there, intact.
    folder = f"{prefix}checkpoints/ckpt-{published}"
    assert checkpoint_matches_its_manifest(own_azurite, container, folder)
    state = json.loads((disttrain_home / "local" / "outage" / "job.json").read_text())
    assert all(task["restarts"] == 0 for task in state["tasks"].values()), state
    # The whole outage fell inside the run. (Whether it shows in the log depends on whether
    # the SDK's own retries outlasted it, so the log is not asked.)
    assert running_through_the_outage
