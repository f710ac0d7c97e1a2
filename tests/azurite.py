"""Azurite (the Azure Storage emulator) for tests: a real Blob endpoint on 127.0.0.1.

`make test` installs it (scripts/install-azurite.sh, into .tools/). A test module imports
the fixtures it needs: `from azurite import azurite, azurite_env  # noqa: F401`.
The well-known development account is fine here; it is public and only ever local.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AZURITE_BLOB = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's published development key (docs: "Azurite well-known storage account").
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass
class Azurite:
    """One azurite-blob process; `stop()` and `start()` keep its port and its data."""

    location: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None
    # The address it listens on and clients use (the test cluster's gateway, for pods).
    host: str = "127.0.0.1"

    def start(self) -> None:
        if not AZURITE_BLOB.exists():
            raise RuntimeError(
                f"{AZURITE_BLOB} is missing: run scripts/install-azurite.sh (make test does)"
            )
        self.location.mkdir(parents=True, exist_ok=True)
        log = open(self.location / "azurite.log", "ab")
        self.process = subprocess.Popen(
            [
                str(AZURITE_BLOB),
                "--blobHost",
                self.host,
                "--blobPort",
                str(self.port),
                "--location",
                str(self.location),
                "--skipApiVersionCheck",
                "--loose",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not _accepts(self.port, self.host):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"azurite-blob did not start on port {self.port}: "
                    + (self.location / "azurite.log").read_text()[-2000:]
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the emulator as an outage would: connections drop, stored data stays.

        Azurite saves its metadata on SIGINT but then waits for every client connection
        to close; once it reports being closed, the process is killed outright.
        """
        if self.process is None or self.process.poll() is not None:
            return
        log = self.location / "azurite.log"
        closed_before = log.read_text().count("successfully closed")
        os.killpg(self.process.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while log.read_text().count("successfully closed") == closed_before:
            if self.process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def connection_string(self, key: str = ACCOUNT_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint=http://{self.host}:{self.port}/{ACCOUNT};"
        )

    def env(self, key: str = ACCOUNT_KEY) -> dict[str, str]:
        """Environment variables that point disttrain at this emulator."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string(key)}

    def create_container(self, name: str | None = None) -> str:
        from azure.storage.blob import BlobServiceClient

        name = name or f"run{uuid.uuid4().hex[:10]}"
        client = BlobServiceClient.from_connection_string(self.connection_string())
        client.create_container(name)
        return name

    def blob_names(self, container: str) -> list[str]:
        """Every blob in a container, read with the Azure SDK (not through disttrain)."""
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient.from_connection_string(self.connection_string())
        return sorted(b.name for b in client.get_container_client(container).list_blobs())


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Azurite:
    """One emulator for the whole session (tests that stop it start their own)."""
    emulator = Azurite(tmp_path_factory.mktemp("azurite"))
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def azurite_env(azurite, monkeypatch) -> Azurite:
    """The session emulator, with this process's environment pointing at it."""
    for name, value in azurite.env().items():
        monkeypatch.setenv(name, value)
    return azurite


@pytest.fixture
def own_azurite(tmp_path, monkeypatch) -> Azurite:
    """A private emulator that a test may stop and restart."""
    emulator = Azurite(tmp_path / "azurite")
    emulator.start()
    for name, value in emulator.env().items():
        monkeypatch.setenv(name, value)
    yield emulator
    emulator.stop()
