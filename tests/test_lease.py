"""The run dir's lease: one writer at a time, on a local path and on Azure Blob (Azurite)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from lease_race import race
from processes import cli, small_job

from disttrain.checkpoints import BackgroundPublisher, latest_manifest, published_steps
from disttrain.config import ConfigError, dump_config, load_config
from disttrain.done import write_done
from disttrain.lease import (
    HeldLease,
    LeaseHeld,
    LeaseLost,
    Owner,
    acquire,
    fence_for_job,
    hold_run_dir,
    read_lease,
    release_job,
    this_process,
)
from disttrain.storage import EVAL_RESULTS, LEASE_FILE, RunDir
from launchers.prepare import check_run_dir, kubernetes_chief

RACES = 20


def quiet(_line: str) -> None:
    """Log lines a test does not read."""


@pytest.fixture(params=["local", "azurite"])
def run_url(request, tmp_path) -> str:
    """A fresh run dir: a local path, or a folder in a new container on Azurite."""
    if request.param == "local":
        return str(tmp_path / "run")
    azurite = request.getfixturevalue("azurite_env")
    return f"az://{azurite.create_container()}/runs/run"


def job_config(url: str, name: str, lease_seconds: float = 300):
    return load_config(
        None, [f"run_dir={url}", f"name={name}", f"checkpoint.lease_seconds={lease_seconds}"]
    )


def snapshot(url: str) -> dict[str, bytes]:
    """Every file of a run dir and its bytes, read with the storage's own client (the Azure
    SDK for Azurite), not through disttrain."""
    if "://" not in url:
        root = Path(url)
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    from azure.storage.blob import BlobServiceClient

    container = url.split("/")[2]
    client = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    blobs = client.get_container_client(container)
    return {b.name: blobs.download_blob(b.name).readall() for b in blobs.list_blobs()}


def first_run(url: str) -> RunDir:
    """A run dir holding a run of job `first`, whose lease it holds (no heartbeat: the
    record must not change by itself while a test compares it)."""
    run_dir = RunDir(url)
    for name, text in {
        "config.yaml": "name: first\n",
        "checkpoints/ckpt-100/MANIFEST.json": '{"step": 100}',
        "checkpoints/LATEST": '{"step": 100}',
        EVAL_RESULTS: '{"step": 100, "accuracy": 0.5}\n',
        "DONE": '{"step": 100}',
    }.items():
        run_dir.write_text(name, text)
    acquire(run_dir, this_process("first"), 300, log=quiet)
    return run_dir


def staged_checkpoint(folder: Path, step: int) -> Path:
    """Files as TensorFlow would stage them (the publisher uploads whatever is there)."""
    folder.mkdir(parents=True)
    (folder / "ckpt.index").write_bytes(b"index %d" % step)
    (folder / "ckpt.data-00000-of-00001").write_bytes(os.urandom(1000))
    return folder


def test_of_two_jobs_starting_in_the_same_instant_exactly_one_takes_the_run_dir(run_url):
    """20 races, each on a run dir of its own; in every other one, the lease the two race
    for is an expired one (the compare-and-swap on a record, not the create)."""
    urls = [f"{run_url}/race-{i}" for i in range(RACES)]
    for url in urls[1::2]:
        gone = this_process("gone").renewed(10, time.time() - 60)
        RunDir(url).write_bytes(LEASE_FILE, gone.to_bytes())

    outcomes = race(["a", "b"], urls)

    for url in urls:
        by_job = {job: outcome for u, job, outcome in outcomes if u == url}
        winners = [job for job, outcome in by_job.items() if outcome == "won"]
        assert len(winners) == 1, f"{url}: {by_job}"
        loser = "b" if winners == ["a"] else "a"
        assert by_job[loser] == f"held by {winners[0]}", f"{url}: {by_job}"
        assert read_lease(RunDir(url))[0].job == winners[0]


@pytest.mark.integration
def test_a_second_job_is_refused_before_anything_starts_and_the_first_run_is_untouched(
    run_url, builtin_data, disttrain_home
):
    first_run(run_url)
    before = snapshot(run_url)

    refused = cli("train", *small_job(run_url, builtin_data, name="second"), timeout=120)

    output = refused.stdout + refused.stderr
    assert refused.returncode == 2, output
    assert f"error: run_dir: run dir {run_url} is held by job first (launcher local" in output
    assert "--take-over" in output
    assert "starting" not in output and "preflight" not in output  # no task, no probe
    assert snapshot(run_url) == before  # the lease record included: byte for byte
    assert not (disttrain_home / "local" / "second").exists()  # no local state either


def test_a_chief_whose_lease_is_taken_over_stops_publishing(run_url, tmp_path):
    logs: list[str] = []
    run_dir = RunDir(run_url)
    chief = hold_run_dir(run_dir, job_config(run_url, "first"), logs.append)
    publisher = BackgroundPublisher(run_dir, keep=5, log=logs.append)
    publisher.submit(staged_checkpoint(tmp_path / "ckpt-100", 100), 100)
    publisher.flush()
    assert latest_manifest(run_dir).step == 100

    # What `disttrain train --take-over` does before its tasks start.
    acquire(RunDir(run_url), this_process("second"), 300, take_over=True, log=quiet)
    publisher.submit(staged_checkpoint(tmp_path / "ckpt-200", 200), 200)
    with pytest.raises(LeaseLost, match=r"lost the run dir's lease, now held by job second \("):
        publisher.flush()
    with pytest.raises(LeaseLost):
        write_done(run_dir, 200)

    assert latest_manifest(run_dir).step == 100 and published_steps(run_dir) == [100]
    assert not run_dir.exists("DONE")
    assert read_lease(run_dir)[0].job == "second"
    with pytest.raises(LeaseLost):  # the next checkpoint is not even tried
        publisher.submit(staged_checkpoint(tmp_path / "ckpt-300", 300), 300)
    chief.close()
    # The old job's launcher, ending, leaves the new owner's lease alone.
    assert not release_job(RunDir(run_url), this_process("first"))


def test_a_restarted_chief_of_the_same_job_takes_its_lease_back(run_url):
    logs: list[str] = []
    crashed = hold_run_dir(RunDir(run_url), job_config(run_url, "job"), logs.append)
    crashed.close()  # it died: no release, its lease is still live for 300 s

    restarted = hold_run_dir(RunDir(run_url), job_config(run_url, "job"), logs.append)

    assert f"from this job's incarnation {crashed.owner.incarnation}" in logs[-1]
    assert read_lease(RunDir(run_url))[0].incarnation == restarted.owner.incarnation
    with pytest.raises(LeaseHeld, match=f"incarnation {restarted.owner.incarnation}"):
        acquire(RunDir(run_url), this_process("other"), 300, log=quiet)
    with pytest.raises(LeaseLost):  # a zombie of the old incarnation is fenced off
        crashed.fence()
    restarted.release()
    assert read_lease(RunDir(run_url))[0].released


def test_an_expired_or_released_lease_is_free_for_another_job(tmp_path):
    url = str(tmp_path / "run")
    acquire(RunDir(url), this_process("first"), 0.2, log=quiet)
    with pytest.raises(LeaseHeld, match="is held by job first"):
        acquire(RunDir(url), this_process("second"), 300, log=quiet)
    time.sleep(0.3)
    logs: list[str] = []
    acquire(RunDir(url), this_process("second"), 300, log=logs.append)
    assert "after job first" in logs[0] and "expired" in logs[0]

    assert release_job(RunDir(url), this_process("second"))  # as the local launcher does
    acquire(RunDir(url), this_process("third"), 300, log=quiet)
    assert read_lease(RunDir(url))[0].job == "third"


def test_the_heartbeat_renews_the_lease_and_notices_a_take_over(tmp_path):
    url = str(tmp_path / "run")
    run_dir = RunDir(url)
    # A 1 s lease, renewed every 0.2 s (the config accepts 10 s at least).
    owner, version = acquire(run_dir, this_process("first"), 1.0, log=quiet)
    chief = HeldLease(run_dir, owner, version, 1.0, quiet)
    first_expiry = owner.expires_at

    wait_until(lambda: read_lease(RunDir(url))[0].expires_at != first_expiry, "a renewal")
    acquire(RunDir(url), this_process("second"), 300, take_over=True, log=quiet)
    wait_until(lambda: chief.lost is not None, "the heartbeat to notice")

    assert "now held by job second" in str(chief.lost)
    assert read_lease(RunDir(url))[0].job == "second"  # it did not write over the new owner
    chief.close()


def wait_until(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_evaluator_writes_only_while_the_lease_names_its_job(tmp_path):
    url = str(tmp_path / "run")
    run_dir = RunDir(url)
    run_dir.fence = fence_for_job(run_dir, "first")  # no lease yet: a run from before leases
    run_dir.append_line(EVAL_RESULTS, '{"step": 100}')
    acquire(RunDir(url), this_process("first"), 300, log=quiet)
    acquire(RunDir(url), this_process("first"), 300, log=quiet)  # its chief restarted
    run_dir.append_line(EVAL_RESULTS, '{"step": 200}')

    acquire(RunDir(url), this_process("second"), 300, take_over=True, log=quiet)
    with pytest.raises(LeaseLost, match="held by job second .*the evaluator of job first"):
        run_dir.append_line(EVAL_RESULTS, '{"step": 300}')
    with pytest.raises(LeaseLost):  # and an evaluator of job first starting now is refused
        fence_for_job(RunDir(url), "first")
    assert run_dir.read_text(EVAL_RESULTS) == '{"step": 100}\n{"step": 200}\n'


def test_an_unreadable_lease_record_counts_as_expired(tmp_path):
    url = str(tmp_path / "run")
    RunDir(url).write_text(LEASE_FILE, "not json")
    assert Owner.from_bytes(b"not json").is_live(time.time()) is False
    acquire(RunDir(url), this_process("first"), 300, log=quiet)
    assert read_lease(RunDir(url))[0].job == "first"


def test_a_kubernetes_launcher_refuses_another_jobs_run_dir_and_resubmits_its_own(tmp_path):
    """Its chief is NAME-chief-0 to the lease: the same job submitted again passes."""
    url = str(tmp_path / "run")
    holder = Owner("trainer", "kubernetes", "trainer-chief-0", "abc123", 7)
    acquire(RunDir(url), holder, 300, log=quiet)

    check_run_dir(job_config(url, "trainer"), quiet, kubernetes_chief("trainer"))
    with pytest.raises(
        ConfigError, match="held by job trainer .launcher kubernetes, host trainer-"
    ):
        check_run_dir(job_config(url, "other"), quiet, kubernetes_chief("other"))


def test_lease_seconds_under_ten_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"checkpoint.lease_seconds: got 5.0; accepted: .*>= 10"):
        load_config(None, ["checkpoint.lease_seconds=5"])


@pytest.mark.integration
def test_a_chief_on_a_run_dir_another_job_holds_exits_4_naming_it(tmp_path):
    """The chief's own refusal: what a Kubernetes or Helm job meets when no launcher
    could read the run dir beforehand."""
    url = str(tmp_path / "run")
    first_run(url)
    before = snapshot(url)
    config = load_config(
        None,
        [
            "name=second",
            f"run_dir={url}",
            "data.source=synthetic",
            "cluster.workers=0",
            "cluster.ps=0",
            "eval.enabled=false",
            "train.steps=10",
        ],
    )
    (tmp_path / "config.yaml").write_text(dump_config(config))
    tf_config = {"cluster": {"chief": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}

    result = cli(
        "task",
        "--config",
        str(tmp_path / "config.yaml"),
        env={"TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
    )

    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-3000:]
    assert last_line.startswith(f"error: run dir {url} is held by job first (launcher local")
    assert f"host {socket.gethostname()}" in last_line
    assert snapshot(url) == before
