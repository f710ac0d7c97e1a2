"""Storage access: run dirs by URL, Azure credentials from the environment, the preflight."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from azurite import ACCOUNT, ACCOUNT_KEY
from processes import REPO, cli, small_job

from disttrain.storage import (
    REDACTED,
    FailingPolls,
    GaveUp,
    Refused,
    RunDir,
    StorageError,
    azure_options,
    preflight,
    redact,
    with_retries,
)

WRONG_KEY = "V3JvbmdLZXk" * 7 + "A=="


def test_run_dir_round_trip_on_azurite(azurite_env):
    container = azurite_env.create_container()
    run_dir = RunDir(f"az://{container}/runs/one")
    run_dir.write_text("a/b.txt", "hello")
    run_dir.append_line("eval/results.jsonl", '{"step": 1}')
    run_dir.append_line("eval/results.jsonl", '{"step": 2}')
    assert run_dir.read_text("a/b.txt") == "hello"
    assert run_dir.read_text("eval/results.jsonl").splitlines() == ['{"step": 1}', '{"step": 2}']
    assert run_dir.file_sizes("") == {"a/b.txt": 5, "eval/results.jsonl": 24}
    assert run_dir.list_names("") == ["a", "eval"]
    run_dir.delete("a")
    assert azurite_env.blob_names(container) == ["runs/one/eval/results.jsonl"]


@pytest.mark.parametrize("kind", ["local", "memory", "azure"])
def test_preflight_passes_and_leaves_nothing_behind(kind, tmp_path, azurite_env):
    url = {
        "local": str(tmp_path / "run"),
        "memory": "memory://preflight/run",
        "azure": f"az://{azurite_env.create_container()}/run",
    }[kind]
    summary = preflight(url)
    assert "preflight ok" in summary and url in summary
    assert RunDir(url).list_names("") == []


def test_preflight_with_a_wrong_key_names_url_and_cause_without_the_key(azurite, monkeypatch):
    container = azurite.create_container()
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string(WRONG_KEY))
    url = f"az://{container}/run"
    with pytest.raises(StorageError) as raised:
        preflight(url)
    message = str(raised.value)
    assert url in message
    assert "wrong account key" in message and "AuthorizationFailure" in message
    assert WRONG_KEY not in message and WRONG_KEY[:20] not in message


def test_preflight_of_a_missing_container_says_so(azurite_env):
    url = "az://nosuchcontainer/run"
    with pytest.raises(StorageError, match="the container does not exist") as raised:
        preflight(url)
    assert url in str(raised.value)


def test_preflight_without_credentials_lists_what_to_set(monkeypatch):
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError, match="no Azure credentials") as raised:
        preflight("az://somecontainer/run")
    assert "AZURE_STORAGE_ACCOUNT_KEY" in str(raised.value)
    assert "az://somecontainer/run" in str(raised.value)


def test_preflight_with_a_read_only_sas_reports_the_permission(azurite, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    container = azurite.create_container()
    sas = generate_container_sas(
        ACCOUNT,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    connection = (
        f"BlobEndpoint=http://127.0.0.1:{azurite.port}/{ACCOUNT};SharedAccessSignature={sas}"
    )
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    with pytest.raises(StorageError, match="could not write a probe object") as raised:
        preflight(f"az://{container}/run")
    message = str(raised.value)
    assert "permission" in message or "not authorized" in message
    assert sas not in message and "sig=" not in message.replace(f"sig={REDACTED}", "")


def test_credentials_are_chosen_from_the_environment_in_order(monkeypatch):
    for name in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    options, how = azure_options("az://c/run")
    assert options["account_name"] == "acct" and "DefaultAzureCredential" in how
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "sv=2024&sig=abcdefgh")
    assert "sas_token" in azure_options("az://c/run")[0]
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "secretkey123")
    options, how = azure_options("az://c/run")
    assert options["account_key"] == "secretkey123" and "secretkey123" not in how
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=x;AccountKey=y")
    assert "connection_string" in azure_options("az://c/run")[0]
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    # The account can also come from an ADLS URL.
    assert azure_options("abfs://c@named.dfs.core.windows.net/run")[0]["account_name"] == "named"


def test_secrets_are_scrubbed_from_retry_logs(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "supersecretkey==")
    lines: list[str] = []

    def failing():
        raise OSError("denied with key supersecretkey== at https://a/b?sv=1&sig=tokenvalue")

    with pytest.raises(GaveUp) as raised:
        with_retries(failing, "upload x", attempts=2, first_delay=0.0, log=lines.append)
    assert lines and "supersecretkey" not in lines[0] and "tokenvalue" not in lines[0]
    assert "supersecretkey" not in str(raised.value) and "tokenvalue" not in str(raised.value)
    assert redact("AccountKey=abc;x") == f"AccountKey={REDACTED};x"


def test_retries_end_at_their_deadline_and_say_what_they_gave_up_on():
    calls: list[int] = []

    def unreachable():
        calls.append(1)
        raise ConnectionResetError("connection reset by peer")

    with pytest.raises(GaveUp) as raised:
        with_retries(
            unreachable, "upload ckpt-5/x", 1000, first_delay=0.01, log=print, deadline_seconds=0.1
        )
    assert 1 < len(calls) < 1000  # retried, then stopped by the deadline, not the attempts
    message = str(raised.value)
    assert message.startswith("upload ckpt-5/x: ConnectionResetError: connection reset by peer")
    assert f"gave up after {len(calls)} attempt(s)" in message


def test_a_refused_request_is_not_retried():
    calls: list[int] = []

    def refused():
        calls.append(1)
        raise PermissionError("403 This request is not authorized")

    with pytest.raises(GaveUp, match=r"permission denied \(.*\) \(refused: not retried\)$"):
        with_retries(refused, "write LATEST", log=print)
    assert len(calls) == 1


def test_failing_polls_are_tried_again_until_their_deadline_and_a_refusal_never():
    lines: list[str] = []
    polls = FailingPolls("wait for a checkpoint in az://c/run", lines.append, "eval", 0.0)
    polls.failed(ConnectionResetError("connection reset by peer"))  # the first: poll again
    polls.succeeded()
    polls.failed(ConnectionResetError("connection reset by peer"))  # first since the success
    assert lines == ["eval | WARNING | poll failed, retrying | ConnectionResetError: connection "
                     "reset by peer"] * 2  # fmt: skip
    with pytest.raises(GaveUp, match=r"every poll failed for \d+ s\)$") as gave_up:
        polls.failed(ConnectionResetError("connection reset by peer"))
    assert str(gave_up.value).startswith("wait for a checkpoint in az://c/run: Connection")
    with pytest.raises(GaveUp, match=r"\(refused: not retried\)$") as refused:
        FailingPolls("poll", lines.append, "eval").failed(PermissionError("403 not authorized"))
    assert isinstance(refused.value, Refused) and len(lines) == 2


def test_a_data_root_that_cannot_be_listed_is_one_error_line_before_any_task(
    azurite, builtin_data, disttrain_home, tmp_path
):
    container = azurite.create_container()
    result = cli(
        "train",
        *small_job(str(tmp_path / "run"), builtin_data, name="dataroot"),
        "--set", "data.source=image_folder",
        "--set", f"data.root=az://{container}/images",
        env=azurite.env(WRONG_KEY),
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        f"error: data.root: list az://{container}/images: not authorized: a wrong account key "
        "or SAS token, or a credential without access to this account (AuthorizationFailure) "
        "(refused: not retried)"
    ], result.stderr
    assert WRONG_KEY not in result.stdout + result.stderr
    assert "starting" not in result.stdout  # no task was started


def test_a_sas_token_in_the_run_dir_url_is_refused_without_echoing_it():
    with pytest.raises(StorageError, match="AZURE_STORAGE_SAS_TOKEN") as raised:
        RunDir("az://c/run?sv=2024&sig=tokenvalue")
    assert "tokenvalue" not in str(raised.value)


def test_train_with_a_wrong_key_fails_before_any_task_starts(
    azurite, builtin_data, disttrain_home, tmp_path
):
    container = azurite.create_container()
    url = f"az://{container}/run"
    result = cli(
        "train",
        *small_job(url, builtin_data, "--set", "train.steps=20", name="wrongkey"),
        env=azurite.env(WRONG_KEY),
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert url in output and "wrong account key" in output
    assert WRONG_KEY not in output
    assert "starting" not in output  # no task was started
    assert azurite.blob_names(container) == []


@pytest.mark.parametrize("scale", ["fast", "0", "-1", "inf"])
def test_a_bad_backoff_scale_is_refused_in_one_line_naming_the_variable(scale):
    result = cli("status", env={"DISTTRAIN_STORAGE_BACKOFF_SCALE": scale})
    assert result.returncode == 2
    assert result.stderr == (
        f"error: DISTTRAIN_STORAGE_BACKOFF_SCALE: got {scale!r}; "
        "accepted: a finite number > 0 (1 unless set)\n"
    )


def test_the_backoff_scale_shortens_the_first_waits_between_tries():
    show = (
        "from disttrain import storage as s; "
        "print(s.RETRY_FIRST_DELAY_SECONDS, s.SDK_FIRST_BACKOFF_SECONDS)"
    )
    scaled = subprocess.run(
        [sys.executable, "-c", show],
        cwd=REPO,
        env={**os.environ, "DISTTRAIN_STORAGE_BACKOFF_SCALE": "0.1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert scaled.stdout.split() == ["0.05", "0.05"]
