"""Publishing checkpoints to the run dir, and fetching the newest good one back.

TensorFlow writes a checkpoint into a local staging folder; `publish_checkpoint` uploads
its files to `checkpoints/ckpt-<step>/`, then that folder's MANIFEST.json, then
`checkpoints/LATEST` last: a reader that trusts LATEST never sees a half-uploaded
checkpoint. `fetch_checkpoint` verifies sizes and sha256 and falls back to the previous
good checkpoint when the newest is incomplete or corrupt (keras' BackupAndRestore idea).
Retention deletes old checkpoints but keeps what LATEST and the best export point to and,
up to a limit, those the evaluator has not reached yet (`awaiting_evaluation`).

No TensorFlow here: the caller writes and reads the TF files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from disttrain.done import is_done
from disttrain.failures import Unrecoverable
from disttrain.storage import (
    BEST_METRICS,
    BEST_NEXT_METRICS,
    CHECKPOINTS_DIR,
    EVAL_RESULTS,
    LATEST_FILE,
    FailingPolls,
    RunDir,
    describe,
    with_retries,
)

MANIFEST = "MANIFEST.json"
# The TF checkpoint prefix inside every ckpt-<step> folder: ckpt.index, ckpt.data-*.
TF_PREFIX = "ckpt"
UPLOAD_THREADS = 4


@dataclass
class Manifest:
    step: int
    files: list[str]
    sizes: dict[str, int]
    sha256: dict[str, str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        return cls(int(raw["step"]), list(raw["files"]), dict(raw["sizes"]), dict(raw["sha256"]))


def checkpoint_folder(step: int) -> str:
    return f"{CHECKPOINTS_DIR}/ckpt-{step}"


def staged_prefix(staging_root: Path, step: int) -> Path:
    """Where TensorFlow should write the checkpoint of `step` before it is published."""
    return staging_root / f"ckpt-{step}" / TF_PREFIX


def manifest_of(folder: Path, step: int) -> Manifest:
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    return Manifest(
        step=step,
        files=files,
        sizes={name: (folder / name).stat().st_size for name in files},
        sha256={name: _sha256(folder / name) for name in files},
    )


def publish_checkpoint(
    run_dir: RunDir,
    staged_folder: Path,
    step: int,
    keep: int,
    protected_steps: Callable[[], set[int]] = set,
    log: Callable[[str], None] = print,
    unevaluated_steps: Callable[[], set[int]] = set,
    max_unevaluated: int = 0,
) -> Manifest:
    """Upload one staged checkpoint folder, then its manifest, then LATEST; apply retention
    (see `apply_retention` for what `unevaluated_steps` and `max_unevaluated` hold back)."""
    manifest = manifest_of(staged_folder, step)
    remote = checkpoint_folder(step)

    def upload(name: str) -> None:
        with_retries(
            lambda: run_dir.put_file(staged_folder / name, f"{remote}/{name}"),
            f"upload {run_dir.url_of(f'{remote}/{name}')}",
            log=log,
        )

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(upload, manifest.files))
    with_retries(
        lambda: run_dir.write_text(f"{remote}/{MANIFEST}", manifest.to_json()),
        f"write {run_dir.url_of(f'{remote}/{MANIFEST}')}",
        log=log,
    )
    with_retries(
        lambda: run_dir.write_text(LATEST_FILE, manifest.to_json()),
        f"write {run_dir.url_of(LATEST_FILE)}",
        log=log,
    )
    try:  # the checkpoint is committed; a failed clean-up is retried after the next one
        apply_retention(
            run_dir, keep, protected_steps() | {step}, log, unevaluated_steps(), max_unevaluated
        )
    except Exception as exc:
        log(f"checkpoint | WARNING | retention skipped | {describe(exc)}")
    return manifest


def published_steps(run_dir: RunDir) -> list[int]:
    """Steps of every checkpoint folder under checkpoints/, ascending (complete or not)."""
    steps = []
    for name in run_dir.list_names(CHECKPOINTS_DIR):
        if name.startswith("ckpt-") and name[5:].isdigit():
            steps.append(int(name[5:]))
    return sorted(steps)


def latest_manifest(run_dir: RunDir) -> Manifest | None:
    if not run_dir.exists(LATEST_FILE):
        return None
    return Manifest.from_json(run_dir.read_text(LATEST_FILE))


def referenced_steps(run_dir: RunDir) -> set[int]:
    """Steps that LATEST and the best export point to: retention never deletes these.

    The best export's metrics are in export/best/ and, while it is being replaced, in
    export/best.next/ (export.publish_export): both are protected.
    """
    referenced = set()
    for pointer in (LATEST_FILE, BEST_METRICS, BEST_NEXT_METRICS):
        try:
            referenced.add(int(json.loads(run_dir.read_text(pointer))["step"]))
        except FileNotFoundError:
            continue
    return referenced


def evaluated_steps(run_dir: RunDir) -> set[int]:
    """Steps that `eval/results.jsonl` records as evaluated."""
    if not run_dir.exists(EVAL_RESULTS):
        return set()
    lines = run_dir.read_text(EVAL_RESULTS).splitlines()
    return {json.loads(line)["step"] for line in lines if line.strip()}


def record_evaluation(run_dir: RunDir, result: dict) -> bool:
    """Add the line of `result["step"]` to `eval/results.jsonl`, unless it is there already.

    An object store has no append: the file is read, extended and rewritten. When the
    rewrite lands but its answer is lost, the evaluator sees a failure and evaluates the
    step again; recording it again would duplicate its line. False when it was there.
    """
    if result["step"] in evaluated_steps(run_dir):
        return False
    run_dir.append_line(EVAL_RESULTS, json.dumps(result, sort_keys=True))
    return True


def awaiting_evaluation(run_dir: RunDir) -> set[int]:
    """Published checkpoints newer than the last evaluated one: retention must keep them,
    or an evaluator that fell behind would find them deleted and skip them."""
    last = max(evaluated_steps(run_dir), default=-1)
    return {step for step in published_steps(run_dir) if step > last}


def apply_retention(
    run_dir: RunDir,
    keep: int,
    protected: set[int],
    log: Callable[[str], None] = print,
    unevaluated: set[int] = frozenset(),
    max_unevaluated: int = 0,
) -> None:
    """Keep the newest `keep` complete checkpoints and whatever LATEST, the best export or
    the caller (`protected`) points to; delete the rest, and incomplete folders (an upload
    cut short). Folders newer than LATEST are left alone: an upload may be in progress.

    Checkpoints the evaluator has not reached yet (`unevaluated`) are kept as well, but only
    the newest `max_unevaluated` of them: an evaluator that died or fell far behind must not
    make retention unbounded. Deleting one of them is logged as a warning.
    """
    waiting = sorted(unevaluated)
    held = set(waiting[-max_unevaluated:]) if max_unevaluated > 0 else set()
    protected = protected | held | referenced_steps(run_dir)
    latest = latest_manifest(run_dir)
    steps = [s for s in published_steps(run_dir) if latest is None or s <= latest.step]
    complete = [s for s in steps if run_dir.exists(f"{checkpoint_folder(s)}/{MANIFEST}")]
    doomed = [s for s in steps if s not in complete] + complete[: max(len(complete) - keep, 0)]
    for step in sorted(doomed):
        if step in protected:
            continue
        if step in unevaluated:
            log(
                f"checkpoint | WARNING | retention | delete ckpt-{step} before the evaluator "
                f"reached it: more than checkpoint.max_unevaluated ({max_unevaluated}) "
                "checkpoints wait for evaluation (is the evaluator running?)"
            )
        else:
            log(f"checkpoint | retention | delete ckpt-{step}")
        delete_checkpoint(run_dir, step)


def delete_checkpoint(run_dir: RunDir, step: int) -> None:
    """Its MANIFEST.json first: a deletion cut short leaves a folder that is incomplete by
    the rules (no manifest), never one whose manifest names files that are gone."""
    run_dir.delete(f"{checkpoint_folder(step)}/{MANIFEST}")
    run_dir.delete(checkpoint_folder(step))


def waiting_for_first_checkpoint(run_dir: RunDir, poll_seconds: float, timeout: float) -> str:
    """The evaluator's line while no checkpoint is published (`timeout` 0: no limit)."""
    how_long = f"at most {timeout:g}s" if timeout else "until the run is done"
    return (
        f"eval | waiting for the first checkpoint under {run_dir.url} | polling every "
        f"{poll_seconds:g}s, {how_long}"
    )


def wait_for_first_checkpoint(
    run_dir: RunDir, steps: int, poll_seconds: float, log: Callable[[str], None] = print
) -> None:
    """Block until a checkpoint is published (LATEST) or the run of `steps` is DONE.

    It needs no TensorFlow, so a task with nothing to do yet (the evaluator before the
    first checkpoint) waits here without importing it and leaves the cores to the tasks
    that are starting to train (issue 13).
    """
    said, failures = False, FailingPolls(f"wait for a checkpoint in {run_dir.url}", log, "eval")
    while True:
        try:
            if run_dir.exists(LATEST_FILE) or is_done(run_dir, steps):
                return
            failures.succeeded()
        except Exception as exc:  # storage outage: the next poll tries again, for a while
            failures.failed(exc)
        if not said:
            log(waiting_for_first_checkpoint(run_dir, poll_seconds, 0))
            said = True
        time.sleep(poll_seconds)


def fetch_checkpoint(
    run_dir: RunDir, local_root: Path, log: Callable[[str], None] = print, step: int | None = None
) -> tuple[int, Path] | None:
    """Download and verify the newest good checkpoint (or exactly `step`).

    Returns (step, local TF prefix), or None when the run dir has no usable checkpoint.
    A checkpoint that fails verification is reported and the next older one is tried.
    """
    for candidate in [step] if step is not None else _candidates_newest_first(run_dir, log):
        problem = _download_verified(run_dir, candidate, local_root / f"ckpt-{candidate}")
        if problem is None:
            return candidate, local_root / f"ckpt-{candidate}" / TF_PREFIX
        log(
            f"checkpoint | WARNING | ckpt-{candidate} is unusable ({problem}); "
            "falling back to the previous checkpoint"
        )
    return None


def _candidates_newest_first(run_dir: RunDir, log: Callable[[str], None]) -> list[int]:
    try:
        latest = latest_manifest(run_dir)
    except (ValueError, KeyError) as exc:  # each folder's own MANIFEST still verifies it
        log(f"checkpoint | WARNING | {LATEST_FILE} is unreadable ({exc}); trying every folder")
        latest = None
    newest = latest.step if latest else None
    # Folders newer than LATEST were never committed (an upload was cut short): skip them.
    return [s for s in reversed(published_steps(run_dir)) if newest is None or s <= newest]


def _download_verified(run_dir: RunDir, step: int, local: Path) -> str | None:
    remote = checkpoint_folder(step)
    try:
        manifest = Manifest.from_json(run_dir.read_text(f"{remote}/{MANIFEST}"))
    except FileNotFoundError:
        return f"{remote}/{MANIFEST} is missing"
    except (ValueError, KeyError) as exc:
        return f"{remote}/{MANIFEST} is unreadable: {exc}"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    for name in manifest.files:
        try:
            run_dir.get_file(f"{remote}/{name}", local / name)
        except FileNotFoundError:
            return f"{remote}/{name} is missing"
        size = (local / name).stat().st_size
        if size != manifest.sizes[name]:
            return f"{remote}/{name} has {size} bytes, the manifest says {manifest.sizes[name]}"
        if _sha256(local / name) != manifest.sha256[name]:
            return f"{remote}/{name} does not match its sha256"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BackgroundPublisher:
    """Publishes staged checkpoints on a thread so the training loop never waits on storage.

    At most one checkpoint waits behind the one uploading: a newer one supersedes it (its
    staging folder is dropped), so a slow store costs checkpoints, not memory or disk. A
    failed publish is retried with the next checkpoint, except an Unrecoverable one (the
    run dir's lease lost to another job, a request the store refused): that one is raised
    by the next `submit` or `flush`, in the training loop, and nothing more is published.
    """

    def __init__(
        self,
        run_dir: RunDir,
        keep: int,
        log: Callable[[str], None] = print,
        protected_steps: Callable[[], set[int]] = set,
        unevaluated_steps: Callable[[], set[int]] = set,
        max_unevaluated: int = 0,
    ):
        self._run_dir, self._keep, self._log = run_dir, keep, log
        self._protected = protected_steps
        self._unevaluated, self._max_unevaluated = unevaluated_steps, max_unevaluated
        self._pending: tuple[Path, int] | None = None
        self._busy = False
        self._cond = threading.Condition()
        self._errors: list[str] = []
        self._fatal: Unrecoverable | None = None
        self.published: list[int] = []
        self._thread = threading.Thread(target=self._run, name="checkpoint-publisher", daemon=True)
        self._thread.start()

    def submit(self, staged_folder: Path, step: int) -> None:
        self._raise_fatal()
        with self._cond:
            if self._pending is not None:
                dropped_folder, dropped_step = self._pending
                self._log(f"checkpoint | superseded | ckpt-{dropped_step} by ckpt-{step}")
                shutil.rmtree(dropped_folder, ignore_errors=True)
            self._pending = (staged_folder, step)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted is published (or has failed and been reported),
        at most `timeout` seconds; whether it is."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._pending is None and not self._busy,
                max(timeout, 0) if timeout is not None else None,
            )
        self._raise_fatal()
        return done

    @property
    def errors(self) -> list[str]:
        return list(self._errors)

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                folder, step = self._pending
                self._pending, self._busy = None, True
            try:
                self._raise_fatal()  # nothing is published after an Unrecoverable error
                publish_checkpoint(
                    self._run_dir,
                    folder,
                    step,
                    self._keep,
                    self._protected,
                    self._log,
                    self._unevaluated,
                    self._max_unevaluated,
                )
                self.published.append(step)
                self._log(f"checkpoint | published | ckpt-{step} | {self._run_dir.url}")
            except Unrecoverable as exc:
                if self._fatal is None:
                    self._fatal = exc
                    self._log(f"checkpoint | ERROR | ckpt-{step} not published | {exc}")
            except Exception as exc:  # keep training; the next checkpoint tries again
                self._errors.append(f"ckpt-{step}: {describe(exc)}")
                self._log(f"checkpoint | ERROR | ckpt-{step} not published | {describe(exc)}")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
