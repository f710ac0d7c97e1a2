"""What every launcher does before it starts a task, and the report after a success.

Pure Python (fsspec, no TensorFlow): bad input fails here, before any process starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from disttrain.config import Config, ConfigError, dump_config
from disttrain.done import done_step
from disttrain.extras import TRAIN_MODULES, require
from disttrain.lease import (
    KUBERNETES,
    LeaseHeld,
    Owner,
    acquire,
    check_not_held,
    release_job,
    this_process,
)
from disttrain.storage import (
    AZURE_PROTOCOLS,
    CONFIG_FILE,
    DONE_FILE,
    EVAL_RESULTS,
    LATEST_FILE,
    RunDir,
    StorageError,
    describe,
    preflight,
    protocol_of,
)
from launchers.k8s_options import K8sOptions

# Credentials this machine may hold for a remote run dir (the account name alone is none).
LOCAL_CREDENTIALS = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
)


def check_training_installed() -> None:
    """Tasks started on this machine train here: say what to install before any starts."""
    require(
        "train",
        TRAIN_MODULES,
        "launcher local (it trains on this machine, unlike -l k8s and -l helm)",
    )


def check_data(config: Config) -> None:
    """Fail early on data the tasks could not read: both splits listed, classes matching.

    Every local task sees this machine's files, so the check is the tasks' own listing; a
    remote image folder is staged to scratch here, once, before any task starts (the tasks
    then reuse the copy). TFDS is left to the tasks: opening it would import TensorFlow.
    """
    from disttrain.data.sources import check_data_source
    from disttrain.data.split import DataError

    if config.data.source == "tfds":
        return
    try:
        check_data_source(config.data)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    except StorageError as exc:  # a remote data.root that cannot be listed or copied
        raise ConfigError(f"data.root: {exc}") from None


def check_inputs(config: Config, log: Callable[[str], None], take_over: bool = False) -> None:
    """Bad input (the data, the run dir, the weights to start from) is refused before a
    local job writes anything: the built-in dataset made, both splits listed, the run dir's
    lease read and the run dir probed, `train.init_from` found."""
    if config.data.source == "builtin":
        from disttrain.data.builtin import ensure_builtin_dataset

        log("data | preparing the built-in dataset (generated once, then cached)")
        log(f"data | built-in dataset at {ensure_builtin_dataset(config.data.root or None)}")
    check_data(config)
    check_run_dir(config, log, this_process(config.name), take_over)
    check_init_from(config)


def prepare_run_dir(config: Config, log: Callable[[str], None], take_over: bool = False) -> None:
    """Take the run dir's lease for the job, then write the resolved config and clear a
    previous run's DONE marker (after `check_inputs`, by the job that holds the name).

    The lease comes first, atomically: of two jobs that passed `check_inputs` at the same
    moment, the second is refused here, before it writes anything. Its chief takes it
    over from the launcher, as the same job. Submitting a job into a run dir that holds a
    finished run continues that run: the chief resumes from its latest checkpoint (so
    raising train.steps trains further).
    """
    run_dir = RunDir(config.run_dir)
    try:
        acquire(run_dir, this_process(config.name), config.checkpoint.lease_seconds, take_over, log)
    except LeaseHeld as exc:
        raise ConfigError(f"run_dir: {exc}", "run_dir") from None
    if run_dir.exists(DONE_FILE):
        step = done_step(run_dir)
        log(
            f"run dir | {run_dir.url} holds a finished run (step {step}); "
            f"continuing it to train.steps = {config.train.steps}"
        )
        run_dir.delete(DONE_FILE)
    if not run_dir.exists(LATEST_FILE):  # a resumed run's chief rewrites it once it fits
        run_dir.write_text(CONFIG_FILE, dump_config(config))


def holds_nothing(config: Config) -> bool:
    """Whether the run dir is new: empty or not there yet."""
    return not RunDir(config.run_dir).list_names("")


def discard_untrained(config: Config, log: Callable[[str], None]) -> None:
    """Remove what an interrupted job wrote into the run dir it found new, unless a
    checkpoint was published: a config.yaml and logs of no trained step would make the
    next job there resume a run that never was."""
    run_dir = RunDir(config.run_dir)
    if run_dir.exists(LATEST_FILE):
        return
    for name in run_dir.list_names(""):
        run_dir.delete(name)
    log("run dir | interrupted before the first checkpoint: removed what the job wrote")


def release_run_dir(config: Config, log: Callable[[str], None]) -> None:
    """The local job ended: release the run dir's lease if it still names this job (its
    chief releases it after DONE; not after a crash, a stop or Ctrl-C)."""
    try:
        if release_job(RunDir(config.run_dir), this_process(config.name)):
            log(f"lease | released | {config.run_dir} | job {config.name}")
    except Exception as exc:  # it expires checkpoint.lease_seconds after the last heartbeat
        log(f"lease | WARNING | not released, it expires by itself | {describe(exc)}")


def check_run_dir(
    config: Config, log: Callable[[str], None], owner: Owner, take_over: bool = False
) -> None:
    """Before any task starts: refuse a run dir whose lease another job holds (`owner` is
    what this job's chief will be), unless `take_over`; then write, list, read back and
    delete a probe in it. A refused job writes nothing in the run dir."""
    try:
        run_dir = RunDir(config.run_dir)
        holder = check_not_held(run_dir, owner, take_over)
    except LeaseHeld as exc:
        raise ConfigError(f"run_dir: {exc}", "run_dir") from None
    except Exception:  # storage trouble: the probe below names its cause
        holder = None
    if take_over and holder is not None and holder.identity != owner.identity:
        log(f"run dir | --take-over | {config.run_dir} | from {holder.describe()}")
    try:
        log(preflight(config.run_dir))
    except StorageError as exc:
        raise ConfigError(f"run_dir: {exc}") from None


def check_init_from(config: Config) -> None:
    """The weights a new run starts from exist (`train.init_from`); a run dir that resumes
    from its own checkpoint ignores them, so they are not looked for then."""
    if not config.train.init_from or RunDir(config.run_dir).exists(LATEST_FILE):
        return
    from disttrain.warm_start import init_source_problem

    try:
        problem = init_source_problem(config.train)
    except StorageError as exc:  # no credentials for it, say
        raise ConfigError(f"train.init_from: {exc}", "train.init_from") from None
    if problem:
        raise ConfigError(problem, "train.init_from")


def check_cluster_run_dir(config: Config, k8s: K8sOptions, log: Callable[[str], None]) -> None:
    """The run dir preflight for a job submitted to a cluster, when this machine can do it.

    The pods are what must reach the run dir, with their own credentials; this machine can
    only vouch for it with credentials of its own. So: an az:// or abfs:// URL is checked with
    the key, SAS or connection string in this environment (a wrong one fails here instead of
    as a chief crash in the cluster); without any, or for a path on the pods' mounted share,
    one line says why it was skipped and the job is submitted anyway.
    """
    reason = _why_not_checked_here(config, k8s)
    if reason:
        log(f"storage | preflight skipped | {config.run_dir} | {reason}")
        return
    check_run_dir(config, log, kubernetes_chief(config.name))


def kubernetes_chief(job: str) -> Owner:
    """Who the chief of a Kubernetes job is to the run dir's lease (its pod's host name)."""
    from disttrain.cluster import CHIEF, Task
    from launchers.k8s_objects import task_host

    return Owner(job, KUBERNETES, task_host(job, Task(CHIEF, 0)), "", 0)


def _why_not_checked_here(config: Config, k8s: K8sOptions) -> str | None:
    if protocol_of(config.run_dir) == "file":
        return "a path on the pods' mounted Azure Files share, not visible from this machine"
    if protocol_of(config.run_dir) not in AZURE_PROTOCOLS:
        return None
    if any(os.environ.get(name) for name in LOCAL_CREDENTIALS):
        return None
    if k8s.storage.secret:
        pods_use = f"the pods use the Secret {k8s.storage.secret!r}"
    else:
        pods_use = f"the pods use service account {k8s.service_account!r}"
    return f"none of {', '.join(LOCAL_CREDENTIALS)} is set here ({pods_use})"


def final_report(config: Config) -> str:
    """The lines printed when a job succeeds: final accuracy and where things are."""
    run_dir = RunDir(config.run_dir)
    lines = []
    if run_dir.exists(EVAL_RESULTS):
        results = [json.loads(x) for x in run_dir.read_text(EVAL_RESULTS).splitlines() if x]
        last = max(results, key=lambda r: r["step"])
        lines.append(
            f"final eval | step: {last['step']} | accuracy: {last['accuracy']:.4f} | "
            f"loss: {last['loss']:.4f} | examples: {last['examples']}"
        )
    lines.append(f"checkpoints     : {run_dir.url_of('checkpoints')}")  # az:// keeps its scheme
    lines.append(
        f"tensorboard logs: {run_dir.url_of('logs')} "
        f"(view: disttrain board --run-dir {config.run_dir})"
    )
    return "\n".join(lines)
