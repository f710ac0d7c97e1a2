"""Storage that misbehaves: a whole job through a fault-injecting proxy to Azurite, and a
refused request that fails at once.

The proxy (tests/faulty_storage.py) delays requests, resets connections in the middle of
a request or a response body, and answers 500 or 503 (throttling) on a seeded fraction
of requests; its log names every fault it injected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from azurite import ACCOUNT, ACCOUNT_KEY
from faulty_storage import FaultyStorage, Scripted
from processes import cli, small_job

from disttrain.checkpoints import BackgroundPublisher
from disttrain.failures import Unrecoverable, unrecoverable_cause
from disttrain.storage import GaveUp, RunDir

STEPS, EVERY = 60, 20
SEED = 14
# The Azure SDK tries a request 3 times (storage._shorten_sdk_retries), and aiohttp sends an
# idempotent one again once when its connection drops: these faults outlast both, at the
# moments that matter, whatever the random ones do.
SDK_TRIES = 3


def outlasting_the_sdk() -> tuple[Scripted, ...]:
    return (
        # The launcher's preflight meets throttling: the job must still start.
        Scripted("PUT", "/.disttrain-preflight-", "503", SDK_TRIES),
        # The chief's first write of the run's classes: it must not cost a restart.
        Scripted("PUT", "/class_names.json", "500", SDK_TRIES),
        # The evaluator's first record lands, but no answer reaches it: its line, once.
        Scripted("PUT", "/eval/results.jsonl", "reset_response", 2 * SDK_TRIES),
    )


@pytest.fixture
def faulty_storage(azurite, tmp_path, request):
    """A proxy to the session's Azurite; `request.param` is its fault rate."""
    proxy = FaultyStorage(
        azurite.port, request.param, SEED, tmp_path / "faults.log", scripted=outlasting_the_sdk()
    )
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.integration
@pytest.mark.faults
@pytest.mark.parametrize("faulty_storage", [0.05, 0.20], indirect=True, ids=["5%", "20%"])
def test_job_through_flaky_storage_publishes_intact_checkpoints_each_evaluated_once(
    faulty_storage, azurite, builtin_data, disttrain_home
):
    container = azurite.create_container()
    job = small_job(
        f"az://{container}/run",
        builtin_data,
        "--set", f"train.steps={STEPS}",
        "--set", f"checkpoint.every_steps={EVERY}",
        "--set", "checkpoint.keep=10",  # every checkpoint stays, to be checked
        "--set", "eval.max_examples=64",
        name="flaky",
    )  # fmt: skip
    # Tenfold shorter waits between the tries (not fewer tries): the faults, not the
    # backoff, are what this job must get through.
    env = {**faulty_storage.env(ACCOUNT, ACCOUNT_KEY), "DISTTRAIN_STORAGE_BACKOFF_SCALE": "0.1"}
    trained = cli("train", *job, env=env, timeout=900)
    explained = f"{faulty_storage.summary()}\n{trained.stdout[-6000:]}\n{trained.stderr[-3000:]}"
    assert trained.returncode == 0, explained
    assert all(script.hit == script.times for script in faulty_storage.scripted), explained
    random_faults = [r for r in faulty_storage.injected if "scripted" not in r.detail]
    assert random_faults, "no random fault was injected: the test proves less than it says"
    state = json.loads((disttrain_home / "local" / "flaky" / "job.json").read_text())
    assert all(task["restarts"] == 0 for task in state["tasks"].values()), explained

    blobs = Blobs(azurite, container, "run/")
    published = blobs.checkpoint_steps()
    assert published[-1] == STEPS, explained
    for step in set(range(EVERY, STEPS, EVERY)) - set(published):  # none lost unsaid
        said = (f"superseded | ckpt-{step} by", f"ckpt-{step} not published")
        assert any(words in trained.stdout for words in said), f"ckpt-{step}\n{explained}"
    for step in published:
        assert blobs.checkpoint_problem(step) is None, blobs.checkpoint_problem(step)
    evaluated = [json.loads(line)["step"] for line in blobs.text("eval/results.jsonl").splitlines()]
    assert sorted(evaluated) == published, f"results.jsonl steps {evaluated}\n{explained}"
    assert blobs.best_export_loads(disttrain_home / "best")


def test_a_refused_upload_is_not_retried_and_stops_publishing_naming_the_url_not_the_key(
    azurite, tmp_path, monkeypatch
):
    container = azurite.create_container()
    proxy = FaultyStorage(azurite.port, 0.0, SEED, tmp_path / "faults.log", refuse=("/ckpt-",))
    proxy.start()
    lines: list[str] = []
    try:
        for name, value in proxy.env(ACCOUNT, ACCOUNT_KEY).items():
            monkeypatch.setenv(name, value)
        publisher = BackgroundPublisher(RunDir(f"az://{container}/run"), 3, lines.append)
        publisher.submit(staged_checkpoint(tmp_path / "10"), 10)
        with pytest.raises(GaveUp) as refused:
            publisher.flush()
        with pytest.raises(GaveUp):  # nothing more is sent to a store that refuses
            publisher.submit(staged_checkpoint(tmp_path / "20"), 20)
    finally:
        proxy.stop()

    message = str(refused.value)
    assert message.startswith(f"upload az://{container}/run/checkpoints/ckpt-10/ckpt."), message
    assert "authentication failed" in message and message.endswith("(refused: not retried)")
    assert ACCOUNT_KEY not in message + "\n".join(lines)
    # Each of the two files was asked for once: neither the SDK nor disttrain retried.
    asked = sorted(record.path for record in proxy.injected)
    assert len(asked) == 2 and asked[0] != asked[1], proxy.summary()
    assert not any("retry" in line for line in lines), lines
    # The chief's task ends with exit code 4 and this message: no restart is spent on it.
    assert str(unrecoverable_cause(refused.value)) == message
    assert isinstance(unrecoverable_cause(refused.value), Unrecoverable)


def staged_checkpoint(folder: Path) -> Path:
    """A staged checkpoint folder as TensorFlow leaves it (the publisher reads only files)."""
    folder.mkdir(parents=True)
    (folder / "ckpt.index").write_bytes(b"index")
    (folder / "ckpt.data-00000-of-00001").write_bytes(b"values" * 100)
    return folder


class Blobs:
    """A run dir read straight from Azurite, around the proxy."""

    def __init__(self, azurite, container: str, prefix: str):
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(azurite.connection_string())
        self.client, self.prefix = service.get_container_client(container), prefix

    def names(self) -> list[str]:
        found = self.client.list_blobs(name_starts_with=self.prefix)
        return sorted(b.name[len(self.prefix) :] for b in found)

    def data(self, name: str) -> bytes:
        return self.client.download_blob(self.prefix + name).readall()

    def text(self, name: str) -> str:
        return self.data(name).decode()

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoint folders that hold a manifest (were published)."""
        manifests = [n for n in self.names() if n.endswith("/MANIFEST.json")]
        return sorted(int(n.split("/")[1].removeprefix("ckpt-")) for n in manifests)

    def checkpoint_problem(self, step: int) -> str | None:
        """What differs between ckpt-<step> and its MANIFEST.json (None: nothing)."""
        folder = f"checkpoints/ckpt-{step}"
        manifest = json.loads(self.text(f"{folder}/MANIFEST.json"))
        for name in manifest["files"]:
            data = self.data(f"{folder}/{name}")
            if hashlib.sha256(data).hexdigest() != manifest["sha256"][name]:
                return f"{folder}/{name}: {len(data)} bytes, not the manifest's sha256"
        return None

    def best_export_loads(self, local: Path) -> bool:
        import tensorflow as tf

        for name in self.names():
            if name.startswith("export/best/"):
                target = local / name.removeprefix("export/best/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.data(name))
        loaded = tf.saved_model.load(str(local))
        return "serving_default" in loaded.signatures
