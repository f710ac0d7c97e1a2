"""The run dir's lease: one job writes a run dir at a time.

`LEASE` in the run dir is a small owner record (JSON): the job's name, where it runs
(`launcher`: local or kubernetes, and the host), a random incarnation id per process that
took it, that process's pid, its last heartbeat and when the lease expires. The chief takes
the lease when it starts and renews it on a heartbeat thread (every fifth of
`checkpoint.lease_seconds`). Every write it then makes to the run dir first checks that the
record still names its incarnation (`RunDir.fence`): a chief whose lease was taken over
stops at its next write, with an error naming the new owner (exit 4, not retried).

Who may take a lease that is held:
* the same job (same name, launcher and host; a pod's host is NAME-chief-0): a chief
  restarted after a crash or a preemption, or the job submitted again, takes it back;
* anyone, once it expired (`lease_seconds` after the last heartbeat) or was released (the
  chief releases it after DONE, the local launcher when its job ends);
* another job only when told to: `disttrain train --take-over`.

Every change of owner is a compare-and-swap on the record (`RunDir.write_if_unchanged`),
atomic on Azure Blob (If-None-Match / If-Match on the ETag) and on local paths (flock; a
mounted share as far as its filesystem honours flock): of two jobs starting in the same
instant, exactly one wins. Other fsspec backends get a read-compare-write that a race in
the same instant can defeat (`RunDir.conditional_writes` says which, in the log).

Limits: the fence is checked before each write, not during it, so a writer that loses the
lease while a write is in flight finishes that one write. Expiry compares the holder's
clock (`expires_at`) with the reader's: clocks must agree to well within lease_seconds.

Pure Python: launchers import it without TensorFlow.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from disttrain.config import Config
from disttrain.failures import Unrecoverable
from disttrain.storage import LEASE_FILE, RunDir, StorageError, describe

# The heartbeat renews the lease this often per lease_seconds: four renewals in a row may
# fail (a storage outage) before the lease lapses.
HEARTBEATS_PER_LEASE = 5
# Each failed compare-and-swap means another writer changed the record in between.
ACQUIRE_ATTEMPTS = 5
LOCAL, KUBERNETES = "local", "kubernetes"


@dataclass(frozen=True)
class Owner:
    """Who holds (or wants) a run dir's lease: the record in LEASE."""

    job: str
    launcher: str
    host: str
    incarnation: str
    pid: int
    heartbeat_at: float = 0.0  # seconds since the epoch, the holder's clock
    expires_at: float = 0.0
    released: bool = False

    @property
    def identity(self) -> tuple[str, str, str]:
        """What makes two owners the same job: a restart of it takes its lease back."""
        return self.job, self.launcher, self.host

    def is_live(self, now: float) -> bool:
        return not self.released and now < self.expires_at

    def excludes(self, other: Owner, now: float) -> bool:
        """Whether this holder keeps `other` out: another job's lease, still live."""
        return self.identity != other.identity and self.is_live(now)

    def renewed(self, lease_seconds: float, now: float) -> Owner:
        return replace(self, heartbeat_at=now, expires_at=now + lease_seconds, released=False)

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.released:
            state = f"released {now - self.expires_at:.0f} s ago"
        elif now >= self.expires_at:
            state = f"expired {now - self.expires_at:.0f} s ago"
        else:
            state = (
                f"heartbeat {now - self.heartbeat_at:.0f} s ago, "
                f"expires in {self.expires_at - now:.0f} s"
            )
        return (
            f"job {self.job} (launcher {self.launcher}, host {self.host}, pid {self.pid}, "
            f"incarnation {self.incarnation}; {state})"
        )

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Owner:
        """The record; an unreadable one (edited by hand) counts as an expired lease."""
        try:
            raw = json.loads(data)
            return cls(**{key: raw[key] for key in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):
            return cls("<unreadable LEASE>", "?", "?", "?", 0)


class LeaseHeld(Unrecoverable):
    """Another job holds the run dir: this one must not start writing."""

    def __init__(self, url: str, holder: Owner):
        self.holder = holder
        super().__init__(
            f"run dir {url} is held by {holder.describe()}: a run dir has one writer at a "
            f"time. Stop job {holder.job}, wait until its lease expires, or take the run dir "
            f"over: `disttrain train --take-over` (local launcher), or delete {url}/{LEASE_FILE}"
            "; its writers stop at their next write"
        )


class LeaseLost(Unrecoverable):
    """This writer's lease now belongs to another job: it must stop writing."""


def this_process(job: str) -> Owner:
    """The owner this process would be for `job`: a new incarnation. Pods are told apart
    from local processes by the variable Kubernetes sets in every container."""
    launcher = KUBERNETES if os.environ.get("KUBERNETES_SERVICE_HOST") else LOCAL
    return Owner(job, launcher, socket.gethostname(), uuid.uuid4().hex[:12], os.getpid())


def read_lease(run_dir: RunDir) -> tuple[Owner, str] | None:
    """The record and its version, or None when nobody ever took the lease."""
    found = run_dir.read_versioned(LEASE_FILE)
    return (Owner.from_bytes(found[0]), found[1]) if found else None


def check_not_held(run_dir: RunDir, me: Owner, take_over: bool = False) -> Owner | None:
    """Raise LeaseHeld when another job holds a live lease (unless `take_over`); the
    holder otherwise (None: nobody). Writes nothing: a refused job touches nothing."""
    found = read_lease(run_dir)
    if found is None:
        return None
    holder = found[0]
    if holder.excludes(me, time.time()) and not take_over:
        raise LeaseHeld(run_dir.url, holder)
    return holder


def acquire(
    run_dir: RunDir,
    me: Owner,
    lease_seconds: float,
    take_over: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Owner, str]:
    """Take the lease for `me` (compare-and-swap); returns the record written and its
    version. LeaseHeld when another job holds it, is live and `take_over` is false."""
    for _ in range(ACQUIRE_ATTEMPTS):
        now = time.time()
        found = read_lease(run_dir)
        holder, version = found if found else (None, None)
        if holder is not None and holder.excludes(me, now) and not take_over:
            raise LeaseHeld(run_dir.url, holder)
        mine = me.renewed(lease_seconds, now)
        written = run_dir.write_if_unchanged(LEASE_FILE, mine.to_bytes(), version)
        if written is not None:
            log(_acquired_line(run_dir, mine, holder, now))
            return mine, written
        # Another writer came first (or our own create landed and its answer was lost): the
        # next pass reads who holds it now.
    raise StorageError(
        run_dir.url, f"{LEASE_FILE} changed {ACQUIRE_ATTEMPTS} times while job {me.job} took it"
    )


def _acquired_line(run_dir: RunDir, mine: Owner, holder: Owner | None, now: float) -> str:
    if holder is None or holder.incarnation == mine.incarnation:
        how = "it was free"
    elif holder.identity == mine.identity:
        how = f"from this job's incarnation {holder.incarnation} (pid {holder.pid})"
    elif holder.excludes(mine, now):
        how = f"taken over from {holder.describe(now)}"
    else:
        how = f"after {holder.describe(now)}"
    return (
        f"lease | acquired | {run_dir.url} | job {mine.job}, incarnation {mine.incarnation}, "
        f"{mine.expires_at - now:.0f} s | {how} | {run_dir.conditional_writes}"
    )


def release_job(run_dir: RunDir, me: Owner) -> bool:
    """Mark the lease released if it is still `me`'s job's (any incarnation of it: the
    local launcher releases its chief's lease when the job ends). True if it did."""
    found = read_lease(run_dir)
    if found is None or found[0].identity != me.identity or found[0].released:
        return False
    holder, version = found
    released = replace(holder, released=True, expires_at=time.time())
    return run_dir.write_if_unchanged(LEASE_FILE, released.to_bytes(), version) is not None


class HeldLease:
    """The chief's lease: renewed on a heartbeat thread, checked before every write."""

    def __init__(
        self,
        run_dir: RunDir,
        owner: Owner,
        version: str,
        lease_seconds: float,
        log: Callable[[str], None] = print,
    ):
        self.run_dir, self.owner, self.version = run_dir, owner, version
        self.lease_seconds, self.log = lease_seconds, log
        self.lost: LeaseLost | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="lease", daemon=True)
        self._thread.start()

    def fence(self) -> None:
        """Raise LeaseLost unless the record still names this incarnation."""
        if self.lost is None:
            found = read_lease(self.run_dir)
            if found is None or found[0].incarnation != self.owner.incarnation:
                self._lose(found[0] if found else None)
        if self.lost is not None:
            raise self.lost

    def renew(self) -> None:
        """One heartbeat: push expires_at forward, if the record is still ours."""
        with self._lock:
            if self.lost is not None:
                return
            renewed = self.owner.renewed(self.lease_seconds, time.time())
            written = self.run_dir.write_if_unchanged(LEASE_FILE, renewed.to_bytes(), self.version)
            if written is not None:
                self.owner, self.version = renewed, written
                return
            found = read_lease(self.run_dir)
            if found is not None and found[0].incarnation == self.owner.incarnation:
                self.owner, self.version = found  # our write landed; its answer was lost
                return
            self._lose(found[0] if found else None)

    def release(self) -> None:
        """Stop renewing and mark the lease released: another job may take it at once."""
        self.close()
        with self._lock:
            if self.lost is not None:
                return
            released = replace(self.owner, released=True, expires_at=time.time())
            if self.run_dir.write_if_unchanged(LEASE_FILE, released.to_bytes(), self.version):
                self.log(f"lease | released | {self.run_dir.url} | job {self.owner.job}")

    def close(self) -> None:
        """Stop renewing (the lease then lapses lease_seconds after the last heartbeat)."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _heartbeat(self) -> None:
        interval = self.lease_seconds / HEARTBEATS_PER_LEASE
        while not self._stopped.wait(interval) and self.lost is None:
            try:
                self.renew()
            except Exception as exc:  # storage outage: the next heartbeat tries again
                self.log(
                    f"lease | WARNING | heartbeat failed, next in {interval:.0f} s | "
                    f"{describe(exc)}"
                )

    def _lose(self, holder: Owner | None) -> None:
        now_held_by = holder.describe() if holder else f"nobody ({LEASE_FILE} was deleted)"
        self.lost = LeaseLost(
            f"run dir {self.run_dir.url}: job {self.owner.job} (incarnation "
            f"{self.owner.incarnation}) lost the run dir's lease, now held by {now_held_by}. "
            "It stops writing: a run dir has one writer at a time"
        )
        self.log(f"lease | ERROR | {self.lost}")


def hold_run_dir(run_dir: RunDir, config: Config, log: Callable[[str], None] = print) -> HeldLease:
    """The chief's start: take the lease for the job (LeaseHeld if another job holds it),
    renew it from now on, and fence every write through `run_dir`."""
    lease_seconds = config.checkpoint.lease_seconds
    owner, version = acquire(run_dir, this_process(config.name), lease_seconds, log=log)
    lease = HeldLease(run_dir, owner, version, lease_seconds, log)
    run_dir.fence = lease.fence
    return lease


def fence_for_job(run_dir: RunDir, job: str) -> Callable[[], None]:
    """A fence for the evaluator: it writes while the lease names its job, any incarnation
    (a restarted chief of the job is the same writer), or while there is no lease (a run
    from before leases). Called once here: another job's lease refuses the evaluator now."""

    def fence() -> None:
        found = read_lease(run_dir)
        if found is not None and found[0].job != job:
            raise LeaseLost(
                f"run dir {run_dir.url} is held by {found[0].describe()}, not by job {job}: "
                f"the evaluator of job {job} does not write there (one writer at a time)"
            )

    fence()
    return fence
