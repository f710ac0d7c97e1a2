"""The `disttrain` command line. Typer stays in this module; the library takes plain values.

Nothing heavy is imported at module level: `disttrain --help` must not load TensorFlow or
the Kubernetes client.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from disttrain.cluster import CHIEF, EVALUATOR, PS, WORKER
from disttrain.config import Config, ConfigError, load_config
from launchers import available_launchers

app = typer.Typer(
    help="Train TensorFlow models on a parameter-server cluster: local processes, "
    "Kubernetes or Helm, with checkpoints on a local path or Azure.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="markdown",  # a docstring paragraph may wrap over source lines
    pretty_exceptions_enable=False,
)

# The installed launchers (entry-point names; none is imported) shown as --launcher's choices.
INSTALLED_LAUNCHERS = tuple(available_launchers())
LauncherName = Literal[INSTALLED_LAUNCHERS] if INSTALLED_LAUNCHERS else str
Role = Literal[CHIEF, WORKER, PS, EVALUATOR]
DEFAULT_JOB_NAME = Config.name

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (default: the packaged default.yaml, configs/default.yaml in a "
        "checkout).",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one key, e.g. --set train.steps=200 "
        "(repeatable; values are parsed as YAML).",
    ),
]
LauncherOption = Annotated[
    LauncherName | None,
    typer.Option(
        "--launcher",
        "-l",
        help="Where tasks run (default: launcher.name in the config).",
    ),
]
JobLauncherOption = Annotated[
    LauncherName, typer.Option("--launcher", "-l", help="Where the job runs.")
]


def _local_job_names(incomplete: str) -> list[str]:
    """Shell completion of NAME: the local jobs (a cluster is not asked on every <TAB>)."""
    from launchers.local import default_state_dir

    names = sorted(path.parent.name for path in default_state_dir().glob("*/job.json"))
    return [name for name in names if name.startswith(incomplete)]


NameArgument = Annotated[
    str,
    typer.Argument(
        metavar="NAME",
        help="The job's name (the config key `name` it was trained with).",
        autocompletion=_local_job_names,
    ),
]
# Before `-n` meant --namespace, it meant --name: `--name` still works where the job's
# name is the only argument (status, stop, describe), with a warning.
LegacyNameOption = Annotated[
    str | None, typer.Option("--name", hidden=True, help="Deprecated: give NAME as an argument.")
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        help="k8s/helm: the namespace (default: for train, launcher.k8s.namespace in the "
        "config; else the kubeconfig context's, else default: where kubectl would look).",
    ),
]
OutputOption = Annotated[
    Literal["table", "json", "yaml"],
    typer.Option("--output", "-o", help="A table to read, or JSON or YAML for scripts."),
]
ContextOption = Annotated[
    str | None,
    typer.Option("--context", help="k8s/helm: the kubeconfig context (default: the current one)."),
]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _require_training(verb: str, modules: tuple[str, ...] = ()) -> None:
    """The verbs that run TensorFlow here say what to install, in one line, without it."""
    from disttrain.extras import TRAIN_MODULES, require

    try:
        require("train", (*TRAIN_MODULES, *modules), verb)
    except ConfigError as exc:
        _fail(str(exc))


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"disttrain {version('disttrain')}")
    except PackageNotFoundError:  # run from a source tree that was never installed
        typer.echo("disttrain (not installed: no version)")
    raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the installed disttrain version and exit.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="More output: debug lines, TensorFlow's own logs and the library noise the "
            "local console hides (task logs always hold everything).",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Less output: of the tasks' lines, only warnings and errors reach the "
            "console (their logs keep everything).",
        ),
    ] = False,
) -> None:
    """Options before the verb; the app's help is Typer(help=...) above."""
    if verbose and quiet:
        _fail("-v and -q: choose one")
    if verbose or quiet:
        _set_log_level("DEBUG" if verbose else "WARNING")


def _set_log_level(level: str) -> None:
    """This process's level, which a local job's console follows. -v also raises what the
    tasks log (their logs hold it); -q leaves them as they are: status and the job line
    read their progress lines."""
    import os

    from disttrain.progress import LEVEL_ENV, configure_logging

    if level == "DEBUG":
        os.environ[LEVEL_ENV] = level
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")  # TensorFlow's C++ logs too
    configure_logging(level)


def _job_name(name: str, legacy: str | None) -> str:
    """NAME, or the deprecated --name given instead of it."""
    if legacy is None:
        return name
    typer.echo("WARNING: --name is deprecated; give the job's name as an argument", err=True)
    if name not in (DEFAULT_JOB_NAME, legacy):
        _fail(f"NAME: got {name!r} and --name {legacy!r}; give the job's name once")
    return legacy


@app.command()
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    launcher: LauncherOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what would be started and start nothing: local, each task's command "
            "and TF_CONFIG; k8s, the manifests (for kubectl apply -f -); helm, helm template. "
            "The config is checked; the data is not listed and the run dir not probed.",
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="k8s/helm: wait for the job's result after submitting (local always waits).",
        ),
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="k8s/helm: print the chief's output and wait (local always prints every task's).",
        ),
    ] = False,
    namespace: NamespaceOption = None,
    context: ContextOption = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="local: start the job even if the resource check says this machine "
            "cannot hold it (launcher.local.force). It does not take a run dir over.",
        ),
    ] = False,
    take_over: Annotated[
        bool,
        typer.Option(
            "--take-over",
            help="local: take the run dir over from the job that holds its lease (one "
            "writer a run dir); that job's chief and evaluator stop at their next write "
            "(launcher.local.take_over). Without it, a held run dir is refused until its "
            "lease expires (checkpoint.lease_seconds after its last heartbeat).",
        ),
    ] = False,
) -> None:
    """Train: start the chief, workers, ps and evaluator, and wait for the result.

    The exit code is the job's: 0 when the chief finished. Re-running into the same
    run_dir continues that run from its latest checkpoint (same model and classes).
    The job is named by the config key `name` (--set name=exp1), which status, logs,
    stop and describe take as their NAME argument. Every key, with its default and
    accepted values: configs/default.yaml and disttrain/config.py (launcher.NAME keys:
    launchers/); the README's "Data and models" section lists the data sources.
    """
    try:
        cfg, backend = _job(config, set_ or [], launcher, namespace, context, force, take_over)
        plan = backend.plan(cfg)
        for warning in plan.warnings:
            typer.echo(f"WARNING: {warning}", err=True)
        if dry_run:
            typer.echo(plan.render())
            return
        code = backend.submit(plan, wait=wait, follow=follow)
    except ConfigError as exc:
        _fail(str(exc))
    except Exception as exc:  # a run dir that cannot be opened: its message is redacted
        from disttrain.storage import StorageError

        if not isinstance(exc, StorageError):
            raise
        _fail(str(exc))
    raise typer.Exit(code)


def _job(
    config: str | None,
    overrides: list[str],
    launcher: str | None,
    namespace: str | None,
    context: str | None,
    force: bool = False,
    take_over: bool = False,
):
    """The config and its launcher, which validated its own `launcher.<section>` and took
    the flags it declares (--namespace, --context: launcher.k8s keys; --force, --take-over:
    launcher.local)."""
    from launchers import load_job

    flags = {
        "namespace": namespace,
        "context": context,
        "force": force or None,
        "take-over": take_over or None,
    }
    return load_job(config, overrides, launcher, flags)


@app.command()
def task(
    config: Annotated[
        str,
        typer.Option("--config", "-c", help="The job's resolved config (a path or fsspec URL)."),
    ],
) -> None:
    """Run one task of a job; the role comes from TF_CONFIG. Launchers run this for you."""
    _require_training("disttrain task")
    from disttrain.preemption import Preempted
    from disttrain.task import run_task

    try:
        run_task(config)
    except Preempted as exc:
        _exit_preempted(str(exc))
    except ConfigError as exc:
        _fail(str(exc))
    except Exception as exc:
        from disttrain.failures import EXIT_UNRECOVERABLE, unrecoverable_cause
        from disttrain.peers import PeerTimeout

        if isinstance(exc, PeerTimeout):
            _fail(str(exc), code=3)
        cause = unrecoverable_cause(exc)
        if cause is not None:  # a restart would fail the same way: say why, once
            _fail(str(cause), code=EXIT_UNRECOVERABLE)
        raise


def _exit_preempted(why: str) -> None:
    """Exit with EXIT_PREEMPTED now. Not through the interpreter's shutdown: it would wait
    for an upload thread still running past its deadline, or TensorFlow's own threads, while
    the grace period runs out."""
    from disttrain.failures import EXIT_PREEMPTED, exit_at_once
    from disttrain.progress import log

    log(why)
    exit_at_once(EXIT_PREEMPTED)


@app.command("eval")
def eval_(
    config: ConfigOption = None,
    set_: SetOption = None,
    run_dir: Annotated[
        str | None,
        typer.Option(
            help="Evaluate this run dir with the config.yaml stored in it (--set overrides its "
            "keys, e.g. data.root; --config is not needed then)."
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Evaluate the latest checkpoint once and exit (one the run has evaluated "
            "already is shown, not recorded again).",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="Without --once: give up (exit 1) after this many seconds with no new "
            "checkpoint to evaluate; 0 waits until the run is done.",
        ),
    ] = 0,
) -> None:
    """Evaluate a run's checkpoints on the test split (continuously, or --once).

    Continuously, it says what it waits for, evaluates each new checkpoint once, and ends
    when the run is done and its last checkpoint evaluated.
    """
    _require_training("disttrain eval")
    from disttrain.storage import StorageError

    try:
        cfg = _config_for_run(config, set_ or [], run_dir)
    except (ConfigError, StorageError) as exc:
        _fail(str(exc))
    from disttrain.evaluator import Evaluator
    from disttrain.failures import EXIT_UNRECOVERABLE, Unrecoverable

    try:
        evaluator = Evaluator(cfg)
        try:
            if once:
                if evaluator.run_once() is None:
                    raise typer.Exit(1)
            elif not evaluator.run_continuously(timeout):
                _fail(f"no new checkpoint in {timeout:g}s (--timeout)", code=1)
        finally:
            evaluator.close()
    except Unrecoverable as exc:  # e.g. another job holds the run dir's lease
        _fail(str(exc), code=EXIT_UNRECOVERABLE)


@app.command()
def predict(
    images: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE",
            help="JPEG or PNG files of any size: paths or fsspec URLs (az://container/x.jpg).",
        ),
    ],
    run_dir: Annotated[
        str, typer.Option(help="The run dir whose best export (export/best/) classifies them.")
    ],
    output: OutputOption = "table",
) -> None:
    """Classify image files with a run's best export: each one's class and probability.

    Each file is decoded, centrally cropped and resized as evaluation does it, by the
    export's `serving_bytes` signature, which TensorFlow Serving serves too (README,
    "Serve the model"). The evaluator writes the best export whenever a checkpoint beats
    the best so far; for a run trained without it, `disttrain eval --run-dir DIR --once`.
    """
    _require_training("disttrain predict")
    import os

    # Below errors, TensorFlow's C++ log is noise here: its start-up lines, and the failed
    # op's warning about a file that does not decode, which one error line names; -v shows it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from disttrain.predict import PredictError, predict_images
    from disttrain.storage import StorageError

    try:
        predictions = [p.to_dict() for p in predict_images(run_dir, images)]
    except (PredictError, StorageError) as exc:
        _fail(str(exc))
    if output == "table":
        from launchers.job_status import format_table

        rows = [{**row, "probability": f"{row['probability']:.4f}"} for row in predictions]
        typer.echo(format_table(rows))
    else:
        typer.echo(_formatted(predictions, output))


@app.command()
def board(
    run_dir: Annotated[str, typer.Option(help="The run dir whose logs to show.")],
    port: Annotated[int, typer.Option(help="Port for TensorBoard.")] = 6006,
    host: Annotated[
        str,
        typer.Option(
            help="Address TensorBoard listens on: 127.0.0.1 is this machine only; "
            "0.0.0.0 serves every network the machine is on (the board pod uses it)."
        ),
    ] = "127.0.0.1",
    refresh_seconds: Annotated[
        float, typer.Option(help="How often a remote run dir's logs are mirrored again.")
    ] = 10.0,
) -> None:
    """Start TensorBoard on a run's train and eval logs and print the URL to open.

    A remote run dir (az://...) is mirrored into ~/.cache/disttrain/board while it runs.
    """
    _require_training("disttrain board", ("tensorboard",))
    from disttrain.board import BoardError, run_board
    from disttrain.storage import StorageError

    try:
        code = run_board(run_dir, port, host, refresh_seconds)
    except (StorageError, BoardError) as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def status(
    name: NameArgument = DEFAULT_JOB_NAME,
    launcher: JobLauncherOption = "local",
    namespace: NamespaceOption = None,
    context: ContextOption = None,
    output: OutputOption = "table",
    legacy_name: LegacyNameOption = None,
) -> None:
    """Show a job's result, every task (state, restarts) and its progress: the last step,
    examples/s and ETA (from the chief's log), the last checkpoint and evaluation."""
    name = _job_name(name, legacy_name)
    backend = _launcher(launcher, namespace=namespace, context=context)
    if output == "table":
        typer.echo(backend.status(name))  # helm adds its releases' status
    else:
        typer.echo(_formatted(backend.job_status(name).to_dict(), output))


@app.command()
def logs(
    name: NameArgument = DEFAULT_JOB_NAME,
    role: Annotated[
        Role | None, typer.Argument(metavar="ROLE", help="The task's role (default: every task).")
    ] = None,
    index: Annotated[
        int, typer.Argument(metavar="INDEX", help="The task's index within its role.")
    ] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output while the job runs.")
    ] = False,
    previous: Annotated[
        bool,
        typer.Option("--previous", help="k8s/helm: the output of the run before the last restart."),
    ] = False,
    launcher: JobLauncherOption = "local",
    namespace: NamespaceOption = None,
    context: ContextOption = None,
) -> None:
    """Print a task's output (or every task's, prefixed with its name)."""
    _launcher(launcher, namespace=namespace, context=context).logs(
        name, role, index, follow, previous=previous
    )


@app.command()
def stop(
    name: NameArgument = DEFAULT_JOB_NAME,
    launcher: JobLauncherOption = "local",
    namespace: NamespaceOption = None,
    context: ContextOption = None,
    legacy_name: LegacyNameOption = None,
) -> None:
    """Stop a job and every process or object it started."""
    name = _job_name(name, legacy_name)
    typer.echo(_launcher(launcher, namespace=namespace, context=context).stop(name))


@app.command()
def describe(
    name: NameArgument = DEFAULT_JOB_NAME,
    launcher: JobLauncherOption = "local",
    namespace: NamespaceOption = None,
    context: ContextOption = None,
    legacy_name: LegacyNameOption = None,
) -> None:
    """Show a job's tasks as planned (local: commands and environments; k8s: the objects),
    their states and how they last ended (local: exit code and last log line; k8s: each
    pod's phase and last termination reason)."""
    name = _job_name(name, legacy_name)
    try:
        typer.echo(_launcher(launcher, namespace=namespace, context=context).describe(name))
    except ConfigError as exc:
        _fail(str(exc))


@app.command("list")
def list_(
    launcher: JobLauncherOption = "local",
    namespace: NamespaceOption = None,
    context: ContextOption = None,
    output: OutputOption = "table",
) -> None:
    """List the jobs a launcher can see (local: this machine's; k8s: in the namespace)
    with their results."""
    try:
        jobs = _launcher(launcher, namespace=namespace, context=context).list_jobs()
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(jobs.render() if output == "table" else _formatted(jobs.jobs, output))


secret_app = typer.Typer(help="The storage Secret Kubernetes pods read Azure credentials from.")
app.add_typer(secret_app, name="secret")


@secret_app.command("create")
def secret_create(
    secret_name: Annotated[
        str, typer.Option("--name", help="The Secret's name (launcher.k8s.storage.secret).")
    ] = "disttrain-storage",
    namespace: NamespaceOption = None,
    context: ContextOption = None,
) -> None:
    """Create or replace the storage Secret from AZURE_STORAGE_* in this environment.

    Reads AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT_NAME,
    AZURE_STORAGE_ACCOUNT_KEY and AZURE_STORAGE_SAS_TOKEN; prints key names, never values.
    """
    import os

    from launchers.kubernetes import create_storage_secret

    try:
        typer.echo(create_storage_secret(secret_name, namespace, context, dict(os.environ)))
    except ConfigError as exc:
        _fail(str(exc))


data_app = typer.Typer(help="Prepare training data.")
app.add_typer(data_app, name="data")


@data_app.command("convert")
def data_convert(
    source: Annotated[
        str, typer.Argument(help="An image folder ROOT/SPLIT/CLASS/IMAGE: a path or fsspec URL.")
    ],
    out_dir: Annotated[str, typer.Argument(help="Local folder for the shards and classes.json.")],
    shards: Annotated[
        int, typer.Option(help="Shard files per split (any count works with any worker count).")
    ] = 16,
    on_bad_file: Annotated[
        Literal["skip", "fail"],
        typer.Option(help="skip (log the path, leave it out) or fail on a bad image."),
    ] = "skip",
    scratch_dir: Annotated[
        str,
        typer.Option(
            help="Where a remote folder is staged first (default: ~/.cache/disttrain/staged)."
        ),
    ] = "",
) -> None:
    """Write TFRecord shards from an image folder (then train with data.source=tfrecord).

    Every visible subfolder of SOURCE is a split (train, test, ...), each holding one folder
    per class. Images are stored as they are (not resized or re-encoded); every split is
    listed and its classes checked before anything is written. Rewriting into OUT_DIR
    replaces classes.json, which lists the shards a reader uses.
    """
    _require_training("disttrain data convert")
    from pathlib import Path

    from disttrain.data.sources import is_remote, scratch_dir_for
    from disttrain.data.split import DataError

    if shards < 1:
        _fail(f"--shards: got {shards}, accepted: 1 or more")
    from disttrain.data.staging import stage_folder
    from disttrain.data.tfrecords import convert_image_folder
    from disttrain.progress import log

    try:
        root = stage_folder(source, scratch_dir_for(scratch_dir)) if is_remote(source) else None
        root = root or Path(source.removeprefix("file://"))
        convert_image_folder(root, Path(out_dir), shards, on_bad_file, log)
    except DataError as exc:
        _fail(str(exc))


def _formatted(data, output: str) -> str:
    if output == "json":
        import json

        return json.dumps(data, indent=2)
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip()


def _launcher(name: str, **flags: str | None):
    from launchers import get_launcher

    try:
        return get_launcher(name, flags)
    except ConfigError as exc:
        _fail(str(exc))


def _config_for_run(config: str | None, overrides: list[str], run_dir: str | None):
    if run_dir is None:
        return load_config(config, overrides)
    import tempfile

    from disttrain.storage import CONFIG_FILE, RunDir, StorageError, describe

    stored = RunDir(run_dir, retries=False)  # a look before the work: said at once
    try:
        text = stored.read_text(CONFIG_FILE) if stored.exists(CONFIG_FILE) else None
    except Exception as exc:  # an unreachable or refusing account: one line, no traceback
        raise StorageError(stored.url, f"cannot read {CONFIG_FILE}: {describe(exc)}") from None
    if text is None:
        raise ConfigError(f"--run-dir: {run_dir!r} has no {CONFIG_FILE}")
    with tempfile.TemporaryDirectory(prefix="disttrain-config-") as scratch:
        path = Path(scratch) / CONFIG_FILE
        path.write_text(text)
        shown_as = f"{run_dir.rstrip('/')}/{CONFIG_FILE}"
        return load_config(path, [*overrides, f"run_dir={run_dir}"], shown_as=shown_as)


def main() -> None:
    from launchers import LauncherError

    try:
        app(prog_name="disttrain")  # also under `python -m disttrain`: one completion script
    except LauncherError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except ConfigError as exc:  # bad input or a missing extra, found after the flags parsed
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
