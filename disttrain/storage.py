"""The one place disttrain talks to fsspec: a run directory named by any URL.

Local paths, mounted Azure Files shares (`/azure/<share>/...`, plain paths inside a pod)
and remote URLs (`memory://`, `az://container/path`, `abfs://...`) all go through
`RunDir`. Everything else in disttrain asks this module for files and never imports
fsspec itself.

Azure Blob / ADLS Gen2 URLs are opened through adlfs with credentials from the
environment, in this order: `AZURE_STORAGE_CONNECTION_STRING`; `AZURE_STORAGE_ACCOUNT_NAME`
with `AZURE_STORAGE_ACCOUNT_KEY`; `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_SAS_TOKEN`;
`AZURE_STORAGE_ACCOUNT_NAME` alone with the default Azure credential chain when
`azure-identity` is installed. A key or token is never part of a message this module
produces: every storage error goes through `redact`.

Every call on a remote run dir is retried here (`with_retries`): bounded by attempts and a
deadline, never for a refused request (a wrong key, no permission), and named by its URL
when it is given up. An object store fails a request now and then; no caller has to
remember to retry, and none retries without bound. A caller that retries a group of calls
itself (a checkpoint's upload) does so with its own bounds; the calls inside then try once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import math
import os
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

import fsspec
from fsspec.asyn import sync
from fsspec.core import url_to_fs

from disttrain.config import ConfigError
from disttrain.failures import Unrecoverable
from disttrain.progress import log as default_log

T = TypeVar("T")

# The public layout of a run directory (docs/architecture.md, "The run directory").
CONFIG_FILE = "config.yaml"
CLASS_NAMES_FILE = "class_names.json"  # the classes a run trains on, in label order
DONE_FILE = "DONE"
# The owner record of the job that writes the run dir (disttrain/lease.py); on a local path,
# LEASE.lock beside it is what makes a change of owner atomic (flock).
LEASE_FILE = "LEASE"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "checkpoints/LATEST"
TRAIN_LOGS = "logs/train"
EVAL_LOGS = "logs/eval"
EVAL_RESULTS = "eval/results.jsonl"
BEST_EXPORT = "export/best"
BEST_METRICS = "export/best/metrics.json"
# export/best/ is replaced by way of this folder: blob storage has no atomic rename
# (see export.publish_export). Transient; complete only while metrics.json is in it.
BEST_EXPORT_NEXT = "export/best.next"
BEST_NEXT_METRICS = "export/best.next/metrics.json"
# TensorFlow Serving's base path: the best export again, as version <step>/ (export.py).
SERVING_EXPORT = "export/serving"

AZURE_PROTOCOLS = ("az", "abfs", "abfss")
# Environment variables that may hold a secret; their values are scrubbed from messages.
SECRET_VARIABLES = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
)
# Secrets that can show up inside other text: a connection string's key or SAS, a URL's sig=.
_SECRET_PATTERNS = (
    re.compile(r"(AccountKey=)[^;\s'\"]+", re.IGNORECASE),
    re.compile(r"(SharedAccessSignature=)[^;\s'\"]+", re.IGNORECASE),
    re.compile(r"([?&]sig=)[^&\s'\"]+", re.IGNORECASE),
)
REDACTED = "<redacted>"


class StorageError(RuntimeError):
    """A run dir that cannot be used; the message names the URL and the cause, never a secret."""

    def __init__(self, url: str, cause: str):
        self.url, self.cause = redact(url), redact(cause)
        super().__init__(f"run dir {self.url}: {self.cause}")


def redact(text: str) -> str:
    """`text` with every Azure key, token and connection string replaced by <redacted>."""
    for name in SECRET_VARIABLES:
        secret = os.environ.get(name, "")
        if len(secret) >= 8:  # a short value would scrub innocent words
            text = text.replace(secret, REDACTED)
            text = text.replace(secret.lstrip("?"), REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def azure_options(url: str) -> tuple[dict, str]:
    """adlfs options for `url` from the environment, and which kind of credential it is.

    The second value names the credential kind and where it came from, never its value.
    """
    env = os.environ
    account = env.get("AZURE_STORAGE_ACCOUNT_NAME") or account_in_url(url)
    # Other processes write the run dir: fsspec's listing cache would hide their files.
    common = {"use_listings_cache": False}
    if env.get("AZURE_STORAGE_CONNECTION_STRING"):
        return (
            {**common, "connection_string": env["AZURE_STORAGE_CONNECTION_STRING"]},
            "connection string from AZURE_STORAGE_CONNECTION_STRING",
        )
    if account and env.get("AZURE_STORAGE_ACCOUNT_KEY"):
        return (
            {**common, "account_name": account, "account_key": env["AZURE_STORAGE_ACCOUNT_KEY"]},
            f"account key of {account!r} from AZURE_STORAGE_ACCOUNT_KEY",
        )
    if account and env.get("AZURE_STORAGE_SAS_TOKEN"):
        return (
            {**common, "account_name": account, "sas_token": env["AZURE_STORAGE_SAS_TOKEN"]},
            f"SAS token for {account!r} from AZURE_STORAGE_SAS_TOKEN",
        )
    if account and _has_azure_identity():
        # adlfs falls back to DefaultAzureCredential (managed identity, workload identity,
        # az login, ...) when it has neither key nor token and anon is false.
        return (
            {**common, "account_name": account, "anon": False},
            f"DefaultAzureCredential for {account!r}",
        )
    raise StorageError(
        url,
        "no Azure credentials in the environment; set AZURE_STORAGE_CONNECTION_STRING, or "
        "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN"
        + ("" if _has_azure_identity() else ", or install azure-identity")
        + (" (AZURE_STORAGE_ACCOUNT_NAME is not set)" if not account else ""),
    )


def account_in_url(url: str) -> str | None:
    """`abfs://container@account.dfs.core.windows.net/path` names its account."""
    match = re.match(r"^[a-z]+://[^/@]+@([^./]+)\.(?:dfs|blob)\.", url)
    return match.group(1) if match else None


def _has_azure_identity() -> bool:
    try:
        import azure.identity  # noqa: F401
    except ImportError:
        return False
    return True


def open_filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and root path for a run dir URL (Azure credentials included)."""
    if protocol_of(url) not in AZURE_PROTOCOLS:
        return url_to_fs(url)
    options, _ = azure_options(url)
    try:
        fs, root = url_to_fs(url, **options)
    except ImportError:
        raise StorageError(url, "Azure URLs need adlfs: pip install 'disttrain[azure]'") from None
    except Exception as exc:
        raise StorageError(url, f"cannot open the storage account: {describe(exc)}") from None
    _shorten_sdk_retries(fs)
    return fs, root


# Scales the waits between storage tries (with_retries' delays, and the SDK's first
# backoff and its base, so its second wait shrinks more), 1 unless set: a test whose job
# runs through injected faults in subprocesses shortens the waits (e.g. 0.1), never the
# number of tries, which its faults are scripted to outlast.
BACKOFF_SCALE_ENV = "DISTTRAIN_STORAGE_BACKOFF_SCALE"


def _backoff_scale() -> float:
    """The scale from the environment; a bad value is refused in one line, naming it."""
    text = os.environ.get(BACKOFF_SCALE_ENV) or "1"
    try:
        scale = float(text)
    except ValueError:
        scale = math.nan
    if not 0 < scale < math.inf:
        raise ConfigError(
            f"{BACKOFF_SCALE_ENV}: got {text!r}; accepted: a finite number > 0 (1 unless set)",
            BACKOFF_SCALE_ENV,
        )
    return scale


BACKOFF_SCALE = _backoff_scale()

# The Azure SDK's own retries of one request (a filesystem reads them when it is opened):
# it waits SDK_FIRST_BACKOFF_SECONDS + SDK_BACKOFF_BASE ** retry (+/- 0.2 s) before each.
# Module-level so that a test of an outage can lower them, as it lowers RETRY_*.
SDK_RETRIES = 2
SDK_FIRST_BACKOFF_SECONDS = 0.5 * BACKOFF_SCALE
SDK_BACKOFF_BASE = 2 * BACKOFF_SCALE


def _shorten_sdk_retries(fs: fsspec.AbstractFileSystem) -> None:
    """Make the Azure SDK give up in seconds instead of its default ~1 minute.

    disttrain retries whole operations itself (`with_retries`), with backoff it logs; the
    SDK's own 15 s / 18 s / 24 s waits would leave a publish or a preflight silent for a
    minute. adlfs does not pass retry options through, so the policy is tuned in place;
    should its internals move, the SDK defaults simply stay.
    """
    policy = getattr(
        getattr(getattr(fs, "service_client", None), "_config", None), "retry_policy", None
    )
    if policy is None or not hasattr(policy, "initial_backoff"):
        return
    policy.initial_backoff, policy.increment_base = SDK_FIRST_BACKOFF_SECONDS, SDK_BACKOFF_BASE
    policy.random_jitter_range = 0.2
    policy.total_retries = policy.connect_retries = policy.read_retries = SDK_RETRIES
    policy.status_retries = SDK_RETRIES


# Azure error codes -> the cause a user can act on (the SDK's text is long and generic).
_AZURE_CAUSES = {
    "AuthenticationFailed": "authentication failed: the account key, SAS token or credential "
    "is wrong or expired",
    "InvalidAuthenticationInfo": "authentication failed: the credential is malformed or expired",
    "AuthorizationFailure": "not authorized: a wrong account key or SAS token, or a credential "
    "without access to this account",
    "AuthorizationPermissionMismatch": "permission denied: the credential may not use this "
    "container (it needs read, write, list and delete)",
    "AuthorizationResourceTypeMismatch": "permission denied: the SAS token does not cover "
    "containers and objects",
    "ContainerNotFound": "the container does not exist",
    "AccountIsDisabled": "the storage account is disabled",
}


def describe(exc: BaseException) -> str:
    """A short, secret-free cause for a storage exception."""
    if isinstance(exc, GaveUp):  # says what it gave up on, its cause, and why it stopped
        return str(exc)
    code = getattr(exc, "error_code", None) or ""
    code = str(getattr(code, "value", code))  # the SDK gives a StorageErrorCode enum
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if code in _AZURE_CAUSES:
        cause = f"{_AZURE_CAUSES[code]} ({code})"
    elif "No such container" in str(exc) or "ContainerNotFound" in str(exc):
        cause = f"the container does not exist ({text})"
    elif type(exc).__name__ in ("ServiceRequestError", "ClientConnectorError", "ConnectionError"):
        cause = f"cannot reach the storage endpoint ({type(exc).__name__}: {text})"
    elif isinstance(exc, PermissionError) or getattr(exc, "status_code", None) == 403:
        cause = f"permission denied ({type(exc).__name__}: {text})"
    else:
        cause = f"{type(exc).__name__}: {text}"
    return redact(cause)


class RunDir:
    """A run directory: relative paths in, bytes and files out."""

    def __init__(self, url: str, retries: bool = True):
        """`retries=False` for a command that only looks (`status`, `board`, reading a run's
        config): it says at once that storage cannot be reached, not after minutes of
        retries; the tasks, which must ride out a flaky store, retry."""
        if "?" in url and protocol_of(url) in AZURE_PROTOCOLS:
            raise StorageError(
                url.split("?", 1)[0],
                "a query string in the URL is not accepted; put a SAS token in "
                "AZURE_STORAGE_SAS_TOKEN (it must never be part of config.yaml)",
            )
        self.url = url.rstrip("/") or url
        self.retries = retries
        self.fs, self.root = open_filesystem(self.url)
        self.is_local = "file" in _protocols(self.fs)
        if self.is_local:
            self.root = os.path.abspath(self.root)
        self.is_azure = protocol_of(self.url) in AZURE_PROTOCOLS
        # Set by the holder of the run dir's lease (lease.py): called before every write,
        # it raises once another job owns the run dir, so a writer that lost it stops.
        self.fence: Callable[[], None] | None = None
        self.flock_refused = False  # a network filesystem without flock: see conditional_writes

    def __repr__(self) -> str:
        return f"RunDir({self.url!r})"

    def path(self, relative: str = "") -> str:
        return posixpath.join(self.root, relative) if relative else self.root

    def url_of(self, relative: str) -> str:
        """The URL of a file under the run dir, for messages."""
        return f"{self.url}/{relative}" if relative else self.url

    def exists(self, relative: str) -> bool:
        return self._retried("look up", relative, lambda: self.fs.exists(self.path(relative)))

    def read_bytes(self, relative: str) -> bytes:
        return self._retried("read", relative, lambda: self.fs.cat_file(self.path(relative)))

    def read_text(self, relative: str) -> str:
        return self.read_bytes(relative).decode()

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a whole object; readers never see it half-written."""
        self._retried("write", relative, lambda: self._write_whole(relative, data), write=True)

    def _write_whole(self, relative: str, data: bytes) -> None:
        target = self.path(relative)
        self._make_parent(target)
        if self.is_local:
            partial = f"{target}.partial-{os.getpid()}"
            with open(partial, "wb") as out:
                out.write(data)
            os.replace(partial, target)
        else:  # a blob PUT is atomic: the old or the new object, never a mix; so is a retry
            self.fs.pipe_file(target, data)

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode())

    def append_line(self, relative: str, line: str) -> None:
        """Append one line (object stores have no append: read, extend, rewrite).

        Not idempotent: when the rewrite lands but its answer is lost, appending again
        adds the line twice. A caller that may repeat an append checks for its line first
        (as `checkpoints.record_evaluation` does).
        """
        existing = self.read_text(relative) if self.exists(relative) else ""
        self.write_text(relative, existing + line.rstrip("\n") + "\n")

    def put_file(self, local_path: str | Path, relative: str) -> None:
        self._retried("upload", relative, lambda: self._upload(local_path, relative), write=True)

    def _upload(self, local_path: str | Path, relative: str) -> None:
        target = self.path(relative)
        self._make_parent(target)
        self.fs.put_file(str(local_path), target)

    def get_file(self, relative: str, local_path: str | Path) -> None:
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        self._retried(
            "download", relative, lambda: self.fs.get_file(self.path(relative), str(local_path))
        )

    def size(self, relative: str) -> int:
        return int(self._retried("look up", relative, lambda: self.fs.size(self.path(relative))))

    def list_names(self, relative: str) -> list[str]:
        """Names directly under a folder; an absent folder has none."""
        try:
            entries = self._retried(
                "list", relative, lambda: self.fs.ls(self.path(relative), detail=False)
            )
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def list_files(self, relative: str) -> list[str]:
        """Every file under a folder, as paths relative to that folder."""
        return sorted(self.file_sizes(relative))

    def file_sizes(self, relative: str) -> dict[str, int]:
        """Every file under a folder (relative to it) with its size in bytes."""
        base = self.path(relative).rstrip("/")
        try:
            found = self._retried("list", relative, lambda: self.fs.find(base, detail=True))
        except FileNotFoundError:
            return {}
        # Backends disagree on a leading "/" (local and memory:// keep it, az:// does not).
        return {
            posixpath.relpath(name.lstrip("/"), base.lstrip("/")): int(info.get("size") or 0)
            for name, info in found.items()
            if info.get("type") != "directory"
        }

    def rename(self, relative: str, to: str) -> None:
        """Rename a file or folder in one atomic step: local run dirs only (object stores
        have no rename; their writers order their uploads instead)."""
        if not self.is_local:
            raise StorageError(self.url, f"cannot rename {relative}: not a local run dir")
        os.replace(self.path(relative), self.path(to))

    def delete(self, relative: str) -> None:
        """Delete a file or a folder; one that is not there (or no longer) is fine."""
        self._retried("delete", relative, lambda: self._delete_if_there(relative), write=True)

    def _delete_if_there(self, relative: str) -> None:
        # A retried delete whose first answer was lost finds the object gone: done.
        try:
            if self.fs.exists(self.path(relative)):
                self.fs.rm(self.path(relative), recursive=True)
        except FileNotFoundError:
            pass

    def _retried(self, verb: str, relative: str, action: Callable[[], T], write: bool = False) -> T:
        """`action` (a write: once the lease's fence passes), retried on a remote run dir (a
        local disk error is not transient), unless the caller retries it already: its own
        bounds and name then apply."""

        def attempt() -> T:
            if write:
                self._check_fence()
            return action()

        if self.is_local or not self.retries:
            return attempt()
        return with_retries(attempt, f"{verb} {self.url_of(relative)}", log=default_log)

    def read_versioned(self, relative: str) -> tuple[bytes, str] | None:
        """An object's bytes and a version that changes with every write (Azure: its ETag;
        elsewhere: the bytes' sha256); None when there is no such object."""
        if self.is_azure:
            return self._retried("read", relative, lambda: self._azure_read_versioned(relative))
        try:
            data = self.read_bytes(relative)
        except FileNotFoundError:
            return None
        return data, _digest(data)

    def write_if_unchanged(self, relative: str, data: bytes, version: str | None) -> str | None:
        """Write an object only if it is still at `version` (None: only if there is none).

        Returns the new version, or None when another writer changed (or created) the
        object first. Atomic where the backend allows (`conditional_writes` says how); not
        checked by `fence`: this is how the lease itself is written. A write that landed
        but whose answer was lost is retried and then finds the object changed: None as
        well, so a caller re-reads the object to learn who wrote it (lease.py does).
        """
        if self.is_azure:
            return self._retried(
                "write", relative, lambda: self._azure_write_if_unchanged(relative, data, version)
            )
        if self.is_local:
            with _file_lock(self.path(relative) + ".lock") as locked:
                self.flock_refused = self.flock_refused or not locked
                return self._compare_and_write(relative, data, version)
        return self._compare_and_write(relative, data, version)

    @property
    def conditional_writes(self) -> str:
        """How `write_if_unchanged` is made atomic on this backend (for log lines)."""
        if self.is_azure:
            return "atomic: Azure conditional writes (If-None-Match: *, If-Match: ETag)"
        if self.is_local and not self.flock_refused:
            return "atomic: an flock on LEASE.lock in the run dir"
        if self.is_local:
            return (
                "best effort: this filesystem refuses flock, so two writers starting in the "
                "same instant may both win"
            )
        return (
            f"best effort: {'/'.join(_protocols(self.fs))}:// has no conditional write here, "
            "so two writers starting in the same instant may both win"
        )

    def _compare_and_write(self, relative: str, data: bytes, version: str | None) -> str | None:
        found = self.read_versioned(relative)
        if (found[1] if found else None) != version:
            return None
        target = self.path(relative)
        self._make_parent(target)
        if self.is_local:  # a unique name: threads of one process may race to here
            partial = f"{target}.partial-{os.getpid()}-{threading.get_ident()}"
            with open(partial, "wb") as out:
                out.write(data)
            os.replace(partial, target)
        else:
            self.fs.pipe_file(target, data)
        return _digest(data)

    def _azure_read_versioned(self, relative: str) -> tuple[bytes, str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        async def download() -> tuple[bytes, str]:
            async with self._azure_blob(relative) as blob:
                stream = await blob.download_blob()
                return await stream.readall(), stream.properties.etag

        try:
            return sync(self.fs.loop, download)
        except ResourceNotFoundError:
            return None

    def _azure_write_if_unchanged(
        self, relative: str, data: bytes, version: str | None
    ) -> str | None:
        """Put Blob with If-None-Match: * (version None) or If-Match: <ETag> (azure-storage-blob
        sends the first for overwrite=False, the second for match_condition IfNotModified)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )

        condition = (
            {}
            if version is None
            else {
                "etag": version,
                "match_condition": MatchConditions.IfNotModified,
            }
        )

        async def upload() -> str:
            async with self._azure_blob(relative) as blob:
                result = await blob.upload_blob(data, overwrite=version is not None, **condition)
                return result["etag"]

        try:
            return sync(self.fs.loop, upload)
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            return None  # 409 it exists, 412 its ETag moved on, 404 it was deleted

    def _azure_blob(self, relative: str):
        """adlfs's own async client for one blob: its credentials and retry policy."""
        container, blob, _ = self.fs.split_path(self.path(relative))
        return self.fs.service_client.get_blob_client(container=container, blob=blob)

    def _check_fence(self) -> None:
        if self.fence is not None:
            self.fence()

    def _make_parent(self, target: str) -> None:
        if self.is_local:
            os.makedirs(posixpath.dirname(target), exist_ok=True)


def read_file_at(url: str) -> bytes:
    """The bytes of one file named by a path or any fsspec URL (Azure credentials as for a
    run dir). FileNotFoundError when there is none."""
    fs, path = open_filesystem(url)
    return fs.cat_file(path)


def file_exists(url: str) -> bool:
    """Whether one file (a weights file, not a run dir) exists at a path or URL."""
    fs, path = open_filesystem(url)
    return fs.isfile(path)


def local_copy(url: str, scratch: Path) -> Path:
    """A local path to the file at `url`: the file itself when it is local, else a copy
    in `scratch` under the same name (h5py and TensorFlow's readers open local files)."""
    fs, path = open_filesystem(url)
    if "file" in _protocols(fs):
        return Path(path)
    local = scratch / posixpath.basename(path)
    scratch.mkdir(parents=True, exist_ok=True)
    fs.get_file(path, str(local))
    return local


@contextmanager
def _file_lock(path: str) -> Iterator[bool]:
    """An exclusive flock on `path`, created if needed and never deleted (deleting a lock
    file lets a second locker lock a new file while the first still holds the old one). The
    kernel drops the lock however its holder ends. Yields False, unlocked, on a filesystem
    that refuses flock (some network shares): writing there is better than not at all."""
    os.makedirs(posixpath.dirname(path), exist_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def preflight(url: str) -> str:
    """Prove the run dir is usable: write, list, read back and delete a probe object.

    Raises StorageError naming the URL, the step that failed and the cause (no
    credentials, wrong key, no container, no permission). Returns a one-line summary.
    """
    run_dir = RunDir(url)
    probe = f".disttrain-preflight-{uuid.uuid4().hex[:12]}"
    payload = f"disttrain preflight {probe}".encode()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("write a probe object", lambda: run_dir.write_bytes(probe, payload)),
        ("list the run dir", lambda: _expect(probe in run_dir.list_names(""), "probe not listed")),
        ("read the probe back", lambda: _expect(run_dir.read_bytes(probe) == payload, "changed")),
        ("delete the probe", lambda: run_dir.delete(probe)),
    ]
    for what, action in steps:
        try:
            action()
        except GaveUp as exc:  # the step's own URL is a probe's: the run dir's is named
            raise StorageError(url, f"could not {what}: {exc.cause}") from None
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(url, f"could not {what}: {describe(exc)}") from None
    how = azure_options(url)[1] if protocol_of(url) in AZURE_PROTOCOLS else "no credentials needed"
    return f"storage | preflight ok | {redact(run_dir.url)} | {how}"


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise OSError(problem)


class GaveUp(StorageError):
    """A storage action that failed for good: refused (`Refused`), or still failing when
    its attempts or deadline ran out."""

    def __init__(self, what: str, cause: str, tried: str):
        self.url, self.cause = "", redact(cause)
        RuntimeError.__init__(self, redact(f"{what}: {cause} ({tried})"))


class Refused(GaveUp, Unrecoverable):
    """A request the storage service refused (authentication, permission): a retry would
    be refused the same way, and so would a restarted task (exit code 4)."""

    def __init__(self, what: str, cause: str):
        super().__init__(what, cause, "refused: not retried")


# Failures a retry cannot fix: a wrong or expired credential, a credential without access.
_REFUSED_STATUS = (401, 403)
_REFUSED_TYPES = ("AzureSigningError", "ClientAuthenticationError", "PermissionError")
# Answers, not failures: asked again, the store gives the same one (an absent object).
_ANSWERS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


def is_answer(exc: BaseException) -> bool:
    """Whether `exc` is the store's answer (no such object or container), not a failure."""
    return isinstance(exc, _ANSWERS) or _is_missing_container(exc)


def _is_missing_container(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", None) or ""
    code = str(getattr(code, "value", code))
    return code == "ContainerNotFound" or any(
        words in str(exc) for words in ("No such container", "ContainerNotFound")
    )


def is_refused(exc: BaseException) -> bool:
    """Whether the storage service refused the request itself (no retry can succeed)."""
    if isinstance(exc, GaveUp):
        return isinstance(exc, Refused)
    if isinstance(exc.__cause__, Exception) and is_refused(exc.__cause__):
        return True  # adlfs wraps a failed delete in a RuntimeError
    code = getattr(exc, "error_code", None) or ""
    code = str(getattr(code, "value", code))
    return (
        getattr(exc, "status_code", None) in _REFUSED_STATUS
        or code.startswith(("Authentication", "Authorization", "InvalidAuthentication"))
        or any(t.__name__ in _REFUSED_TYPES for t in type(exc).__mro__)
    )


# Set while a with_retries loop runs its action, in that thread: a with_retries inside it
# (a RunDir call the caller wrapped) tries once, and the caller's loop does the retrying,
# with the caller's bounds and name, instead of one bounded loop inside another.
_RETRYING = ContextVar("disttrain_storage_retrying", default=False)


# The default bounds of with_retries, read at each call: module-level so that a test whose
# outage must outlast the retries can lower them (pytest's monkeypatch) instead of waiting.
RETRY_ATTEMPTS = 5
RETRY_FIRST_DELAY_SECONDS = 0.5 * BACKOFF_SCALE
RETRY_DEADLINE_SECONDS = 120.0


def with_retries(
    action: Callable[[], T],
    what: str,
    attempts: int | None = None,
    first_delay: float | None = None,
    log: Callable[[str], None] = print,
    deadline_seconds: float | None = None,
) -> T:
    """Run a storage action, retrying transient failures with exponential backoff.

    Every retry is logged; the loop is bounded by `attempts` and by `deadline_seconds`,
    and when either runs out the failure is raised as GaveUp, saying what was given up
    on. A refused request (wrong key, no permission) is not retried: it fails at once. An
    absent object or container is an answer, not a failure: it is raised as it is.
    Called inside another with_retries, it runs `action` once: the outer loop retries.
    Bounds not given are RETRY_ATTEMPTS, RETRY_FIRST_DELAY_SECONDS, RETRY_DEADLINE_SECONDS.
    """
    if _RETRYING.get():
        return action()
    attempts = RETRY_ATTEMPTS if attempts is None else attempts
    first_delay = RETRY_FIRST_DELAY_SECONDS if first_delay is None else first_delay
    deadline_seconds = RETRY_DEADLINE_SECONDS if deadline_seconds is None else deadline_seconds
    started, delay = time.monotonic(), first_delay
    for attempt in range(1, attempts + 1):
        try:
            return _run_retrying(action)
        except Exception as exc:  # storage SDKs raise many unrelated types
            if isinstance(exc, (Unrecoverable, GaveUp)) or is_answer(exc):
                raise
            if is_refused(exc):
                raise Refused(what, describe(exc)) from None
            elapsed = time.monotonic() - started
            if attempt == attempts or elapsed + delay > deadline_seconds:
                tried = f"gave up after {attempt} attempt(s) in {elapsed:.0f} s"
                raise GaveUp(what, describe(exc), tried) from None
            log(f"storage | retry {attempt}/{attempts - 1} | {what} | {describe(exc)}")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def _run_retrying(action: Callable[[], T]) -> T:
    token = _RETRYING.set(True)
    try:
        return action()
    finally:
        _RETRYING.reset(token)


# How long a polling loop rides out storage failing on every poll before it gives up.
POLL_OUTAGE_SECONDS = 600.0


class FailingPolls:
    """Storage failures met by a polling loop (the evaluator's), one poll after another.

    A poll that fails is tried again at the next one, but not without bound: once polls
    have failed for `deadline_seconds` in a row the loop gives up with GaveUp, saying on
    what; an Unrecoverable error, a refused request among them, is raised at once.
    """

    def __init__(
        self,
        what: str,
        log: Callable[[str], None],
        prefix: str,
        deadline_seconds: float = POLL_OUTAGE_SECONDS,
    ):
        self.what, self.log, self.prefix = what, log, prefix
        self.deadline_seconds = deadline_seconds
        self.failing_since: float | None = None

    def succeeded(self) -> None:
        self.failing_since = None

    def failed(self, exc: BaseException) -> None:
        """Log the failure and return (poll again), or raise GaveUp."""
        if isinstance(exc, Unrecoverable):  # a lost lease, a refusal: polling will not help
            raise exc
        if is_refused(exc):
            raise Refused(self.what, describe(exc))
        now = time.monotonic()
        self.failing_since = now if self.failing_since is None else self.failing_since
        failing = now - self.failing_since
        if failing > self.deadline_seconds:
            raise GaveUp(self.what, describe(exc), f"every poll failed for {failing:.0f} s")
        self.log(f"{self.prefix} | WARNING | poll failed, retrying | {describe(exc)}")
