"""A whole local-cluster job with its run dir on Azurite (Azure Blob through adlfs)."""

from __future__ import annotations

import json

import pytest
from azurite import ACCOUNT_KEY
from processes import cli, small_job

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

    once = cli("eval", "--run-dir", url, "--once", env=azurite.env(), check=True)
    assert "eval | step:    200" in once.stdout

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
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    container_client = client.get_container_client(container)
    done = json.loads(container_client.download_blob(f"{prefix}DONE").readall())
    latest = json.loads(container_client.download_blob(f"{prefix}checkpoints/LATEST").readall())
    assert done["step"] == 300 and latest["step"] == 300
    config_text = container_client.download_blob(f"{prefix}config.yaml").readall().decode()
    assert ACCOUNT_KEY not in config_text and "AccountKey" not in config_text
    for log in (disttrain_home / "local" / "azure" / "logs").glob("*.log"):
        assert ACCOUNT_KEY not in log.read_text(), log
