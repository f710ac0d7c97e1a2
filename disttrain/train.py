"""The training loop: restore, schedule chunks, checkpoint, summarise, finish with DONE.

It owns the schedule (orbit's Controller cut); the math of a step is in steps.py. The
same loop drives all three strategies: under ParameterServerStrategy the chief
schedules chunks on workers through the ClusterCoordinator and keeps a bounded number
in flight; under MultiWorkerMirroredStrategy every worker runs this loop in lockstep
and only the chief publishes; alone, it is a plain single-process loop.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import tensorflow as tf

from disttrain import preemption
from disttrain.cadence import CheckpointCadence
from disttrain.checkpoints import (
    BackgroundPublisher,
    awaiting_evaluation,
    fetch_checkpoint,
    publish_checkpoint,
    staged_prefix,
)
from disttrain.cluster import CHIEF, ClusterShape, Task
from disttrain.config import Config, TrainConfig, dump_config
from disttrain.cutoff import CutOffWatch, servers_of
from disttrain.data.pipeline import decodes_once, train_dataset, worker_index_on_worker
from disttrain.data.sources import describe_split, list_split
from disttrain.data.split import Split
from disttrain.done import write_done
from disttrain.failures import Unrecoverable
from disttrain.lease import HeldLease
from disttrain.models import build_model
from disttrain.pictures import write_training_images
from disttrain.progress import Progress, log
from disttrain.stall import StallWatch, worker_running
from disttrain.startup import log_first_step, phase_done
from disttrain.steps import learning_rate_at, make_learning_rate, make_optimizer, make_train_chunk
from disttrain.storage import (
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    DONE_FILE,
    TRAIN_LOGS,
    RunDir,
    describe,
)
from disttrain.strategy import describe_placement, leave_together, make_strategy
from disttrain.summaries import SummaryMirror
from disttrain.warm_start import freeze_layers, warm_start


@dataclass
class Dispatcher:
    """Runs chunks: `send(num_steps)` starts one, `receive(handle)` waits for its sums."""

    send: Callable[[int], object]
    receive: Callable[[object], tuple[float, int, int, int]]  # loss, correct, examples, bad
    max_in_flight: int
    drain: Callable[[], None]
    # Where a sent chunk runs now, for the stall warning; "" when it cannot tell.
    where: Callable[[object], str] = lambda _handle: ""
    # Whether every chunk sent has finished, without waiting. None: under MWMS the replicas
    # save together, at a step they would first have to agree on, so none saves alone.
    idle: Callable[[], bool] | None = None


def train(config: Config, task: Task, shape: ClusterShape, lease: HeldLease | None = None) -> None:
    """Train; the chief writes through the run dir its `lease` fences (task.py takes it)."""
    run_dir = lease.run_dir if lease is not None else RunDir(config.run_dir)
    is_chief = task.role == CHIEF
    strategy, coordinator = make_strategy(shape, config.model.partition_min_shard_bytes)
    phase_done("connect to cluster")
    split = list_split(config.data, config.data.train_split)
    phase_done("data listing")
    log(describe_split(split, config.data.image_size))
    log(
        f"{task.name} | strategy: {type(strategy).__name__} | model: {config.model.name} | "
        f"precision: {config.train.precision} | jit_compile: {config.train.jit_compile} | "
        f"run dir: {run_dir.url}"
    )
    with strategy.scope():
        model = build_model(
            config.model, config.data.image_size, len(split.class_names), config.train.precision
        )
        # Before the optimizer is built: it makes slots for the trainable variables only.
        frozen = freeze_layers(model, config.train.freeze) if config.train.freeze else ""
        optimizer = make_optimizer(config.train, model)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    log(describe_placement(model.variables))
    log(describe_recipe(config.train))
    if frozen:
        log(frozen)
    phase_done("model build")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    staging = Path(tempfile.mkdtemp(prefix=f"disttrain-{task.name}-"))
    try:
        require_same_classes(run_dir, split.class_names)
        start = restore_latest(checkpoint, step_var, run_dir, staging / "restore")
        if config.train.init_from:
            log(warm_start(model, config.train, start, staging / "init_from"))
        if is_chief:  # the run's record, whichever launcher (or none) started it; written
            # only once the run dir's checkpoint fits this config, so a failed resume with
            # another model or other classes leaves the run's own config.yaml in place
            run_dir.write_text(CONFIG_FILE, dump_config(config))
            run_dir.write_text(CLASS_NAMES_FILE, json.dumps(list(split.class_names)))
        phase_done("restore")
        crop_in_step = config.data.crop_min_area if decodes_once(config.data, split) else 0.0
        chunk = make_train_chunk(
            strategy,
            model,
            optimizer,
            config.train.jit_compile,
            crop_min_area=crop_in_step,
            label_smoothing=config.train.label_smoothing,
            random_flip=config.data.random_flip,
            clip_global_norm=config.train.clip_global_norm,
        )
        dispatcher = make_dispatcher(config, shape, strategy, coordinator, split, chunk)
        phase_done("per-worker datasets")
        traced = coordinator is not None
        write = traced_checkpoint_writer(checkpoint) if traced else checkpoint.write
        # Set at each checkpoint: the global step, and the optimizer's count of applied
        # updates, which concurrent ParameterServerStrategy workers undercount (Keras
        # increments it by read-then-write: 189 of 200 steps were counted, measured with
        # 2 workers); the learning-rate schedule reads that count.
        counters = [step_var, optimizer.iterations]
        loop = TrainLoop(
            config, run_dir, is_chief, write, counters, dispatcher, staging, images_of=split
        )
        cut_off = cut_off_watch(config, coordinator if is_chief else None)
        cut_off.start()
        try:
            with preemption.polled():  # SIGTERM: the loop stops at its next chunk
                loop.run(start)
        finally:
            loop.stall.stop()
            cut_off.stop()  # the servers stop on DONE: no longer a reason to exit
        if is_chief:
            log(describe_traces({"train chunk": chunk, "checkpoint save": write}))
            if lease is not None:  # DONE is written: the next job may take the run dir now
                lease.release()
        leave_together(shape, config.cluster.chief_timeout_seconds, log)  # MWMS: after DONE
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cut_off_watch(config: Config, coordinator) -> CutOffWatch:
    """The coordinator's watch for being cut off from every server (disttrain/cutoff.py);
    one that watches nothing without a coordinator (MWMS, a single process, a worker)."""
    if coordinator is None:
        return CutOffWatch({}, 0, log)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()  # as make_strategy
    servers = servers_of(resolver.cluster_spec().as_dict())
    return CutOffWatch(servers, config.cluster.chief_timeout_seconds, log)


def traced_checkpoint_writer(checkpoint: tf.train.Checkpoint) -> tf.types.experimental.Function:
    """`write(prefix)`, a string tensor: `checkpoint.write`, traced on the first call only.

    Run eagerly with variables on more than one task (the ps under ParameterServerStrategy),
    TensorFlow's MultiDeviceSaver.save wraps each save in a new tf.function, so every save
    traced the whole save graph again, and from the fifth TF warned of retracing on the
    console. Called inside one tf.function of ours, with the prefix a string tensor, the
    saver builds plain graph ops: the save is traced once and then reused. The variables'
    values are read when it runs; which variables it saves is fixed at the first save,
    when the model and the optimizer have all theirs. (Anywhere else TF saves eagerly,
    with no tf.function to retrace: `checkpoint.write` as it is.)
    """

    @tf.function(autograph=False)
    def write(prefix):
        return checkpoint.write(prefix)

    return write


def describe_traces(functions: dict[str, Callable]) -> str:
    """A closing line: how often each tf.function was traced (each should be once)."""
    counts = [
        f"{name}: {function.experimental_get_tracing_count()}"
        for name, function in functions.items()
        if hasattr(function, "experimental_get_tracing_count")
    ]
    return f"tf.function | traced | {' | '.join(counts)}"


def describe_recipe(train: TrainConfig) -> str:
    """A start-up line: the optimizer, the learning-rate schedule and the regularisers."""
    optimizer = train.optimizer
    if optimizer == "sgd":
        optimizer += f" (momentum {train.momentum}{', nesterov' if train.nesterov else ''})"
    if train.lr_schedule == "piecewise":
        schedule = f"piecewise {train.lr_values} at steps {train.lr_boundaries}"
    elif train.lr_schedule == "cosine":
        over = train.decay_steps or train.steps - train.warmup_steps
        schedule = f"cosine {train.learning_rate} to {train.min_learning_rate} over {over} steps"
    else:
        schedule = f"constant {train.learning_rate}"
    return (
        f"recipe | optimizer: {optimizer} | learning rate: {schedule}, warmup "
        f"{train.warmup_steps} steps | weight decay: {train.weight_decay} | clip global norm: "
        f"{train.clip_global_norm or 'off'} | label smoothing: {train.label_smoothing}"
    )


def require_same_classes(run_dir: RunDir, class_names: list[str]) -> None:
    """A run continues on the classes it started with, in the same order: as many other
    classes would restore without an error, and train every label on the wrong images."""
    if not run_dir.exists(CLASS_NAMES_FILE):  # a new run (or one from before the record)
        return
    started_with = json.loads(run_dir.read_text(CLASS_NAMES_FILE))
    if started_with != list(class_names):
        raise Unrecoverable(
            f"run dir {run_dir.url} trains on the classes {', '.join(started_with)}; this "
            f"config's data has {', '.join(class_names)}. A run continues only with the "
            "classes it started with; start another run_dir otherwise"
        )


def restore_latest(
    checkpoint: tf.train.Checkpoint, step_var: tf.Variable, run_dir: RunDir, local_root: Path
) -> int:
    """Restore the newest good published checkpoint; the step to continue from (0: none)."""
    found = fetch_checkpoint(run_dir, local_root, log)
    if found is None:
        log("checkpoint | none published yet | starting at step 0")
        return 0
    step, prefix = found
    try:
        checkpoint.read(str(prefix)).assert_existing_objects_matched()
    except (ValueError, AssertionError) as exc:  # shapes or variables differ: another model
        raise Unrecoverable(
            f"run dir {run_dir.url} holds ckpt-{step} of a different model than this config "
            f"builds ({_first_line(exc)}). A run continues only with the model, image size "
            f"and classes it started with (its config.yaml); start another run_dir otherwise"
        ) from None
    resumed = int(step_var.numpy())
    restored = describe_restored(checkpoint.model, checkpoint.optimizer)
    log(f"checkpoint | restored | ckpt-{step} | resuming at step {resumed} | {restored}")
    return resumed


def describe_restored(model, optimizer) -> str:
    """What training starts from, read back after the restore from where the variables live
    (the ps, under ParameterServerStrategy): the optimizer's count of applied updates and
    the sum of the absolute values of the model's float weights. A reader of the checkpoint
    computes the same from its file (tests/test_e2e_k8s_faults.py): equal values show that
    the restored variables are the checkpoint's and not, say, a ps's left from an earlier
    chief that trained past it."""
    total = sum(
        float(np.abs(np.asarray(weight.numpy(), dtype=np.float64)).sum())
        for weight in model.weights
        if "float" in str(weight.dtype)
    )
    return f"optimizer updates: {int(optimizer.iterations.numpy())} | weights |w| sum: {total:.6e}"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def make_dispatcher(
    config: Config, shape: ClusterShape, strategy, coordinator, split: Split, chunk
) -> Dispatcher:
    if coordinator is not None:
        return _coordinator_dispatcher(config, shape, strategy, coordinator, split, chunk)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return train_dataset(
            config.data,
            split,
            context.num_input_pipelines,
            context.input_pipeline_id,
            seed=config.train.seed,
        )

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    return Dispatcher(
        send=lambda n: chunk(iterator, tf.constant(n)),
        receive=lambda sums: tuple(s.numpy() for s in sums),
        max_in_flight=1,
        drain=lambda: None,
        idle=(lambda: True) if shape.strategy == "single_process" else None,
    )


def _coordinator_dispatcher(config, shape, strategy, coordinator, split, chunk) -> Dispatcher:
    def dataset_fn(_context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Traced once on the chief, run on every worker: the shard index is read there.
        return train_dataset(config.data, split, shape.workers, worker_index_on_worker())

    per_worker = coordinator.create_per_worker_dataset(
        lambda: strategy.distribute_datasets_from_function(dataset_fn)
    )
    iterator = iter(per_worker)
    return Dispatcher(
        send=lambda n: coordinator.schedule(chunk, args=(iterator, tf.constant(n))),
        receive=lambda remote: tuple(s for s in remote.fetch()),
        # Two chunks queued per worker keep every worker busy without unbounded queues.
        max_in_flight=2 * shape.workers,
        drain=coordinator.join,
        where=_worker_running_it,
        idle=coordinator.done,
    )


def _worker_running_it(remote_value) -> str:
    index = worker_running(remote_value)
    return "no worker is running it: queued" if index is None else f"running on worker-{index}"


class TrainLoop:
    """Owns the schedule: chunk sizes, progress, summaries, checkpoints and DONE."""

    def __init__(
        self,
        config: Config,
        run_dir: RunDir,
        is_chief: bool,
        write_checkpoint: Callable[[tf.Tensor], object],
        step_counters: list[tf.Variable],
        dispatcher: Dispatcher,
        staging: Path,
        images_of: Split | None = None,
    ):
        self.config, self.run_dir, self.is_chief = config, run_dir, is_chief
        self.write_checkpoint, self.step_counters = write_checkpoint, step_counters
        self.dispatcher = dispatcher
        self.staging = staging
        # The split a few training images are shown from (chief), once, after the first step.
        self.images_of = images_of if is_chief else None
        self.pending: deque[tuple[object, int]] = deque()
        self.completed = 0
        self.bad_files = 0  # distinct undecodable files met (each counted once per worker)
        self.window = [0.0, 0, 0]  # loss sum, correct, examples since the last progress line
        evaluated_later = config.eval.enabled and not config.eval.latest_only
        self.unevaluated = (lambda: awaiting_evaluation(run_dir)) if evaluated_later else set
        self.publisher = BackgroundPublisher(
            run_dir,
            config.checkpoint.keep,
            log,
            unevaluated_steps=self.unevaluated,
            max_unevaluated=config.checkpoint.max_unevaluated,
        )
        events = staging / "events" / "train"
        self.writer = tf.summary.create_file_writer(str(events)) if is_chief else None
        self.mirror = SummaryMirror(events, run_dir, TRAIN_LOGS, log=log) if is_chief else None
        self.learning_rate = make_learning_rate(config.train)  # the optimizer's schedule
        self.stall = StallWatch(
            config.train.stall_warning_seconds if is_chief else 0,
            config.cluster.hung_task_seconds,
            self._waiting_for,
            log,
        )

    def _show_training_images(self) -> None:
        """A few training images as the step sees them, at the step this start began from.

        Called after the first step, not before: building their dataset (tf.data traces
        its functions) takes the chief seconds on a busy machine, which then stay out of
        the time to the first step and, under ParameterServerStrategy, overlap the chunks
        in flight.
        """
        split, self.images_of = self.images_of, None
        try:
            with self.writer.as_default():
                write_training_images(
                    self.config.data, split, self.started_at, self.config.train.seed
                )
            self.writer.flush()
            self.mirror.request_sync()
        except Exception as exc:  # a picture never stops training
            log(f"summaries | WARNING | no training images | {describe(exc)}")

    def run(self, start: int) -> None:
        total, saving = self.config.train.steps, self.config.checkpoint
        cadence = CheckpointCadence(saving.every_steps, saving.every_seconds)
        self.completed = self.started_at = start
        self.progress = Progress(start, total, self.config.train.log_every_seconds)
        step = start
        self.stall.start()
        while step < total:
            if preemption.requested():
                self._stop_for_preemption()
            boundary = cadence.steps_to_boundary(step)
            size = min(self.config.train.steps_per_schedule, total - step, boundary)
            self.pending.append((self.dispatcher.send(size), size))
            if step == start:
                phase_done("tracing")  # the chunk is traced when it is first sent
            step += size
            while len(self.pending) > self.dispatcher.max_in_flight:
                self._receive_oldest()
            if step == total or cadence.due(step):
                self._save(step)
                cadence.saved()
        self.stall.stop()  # what follows waits on storage, not on chunks
        self._finish(start, total)

    def _waiting_for(self) -> str:
        """What the loop waits on (for the stall warning, from its thread): the oldest
        chunk in flight and where it runs."""
        try:
            handle, size = self.pending[0]
        except IndexError:
            return f"step {self.completed}: no chunk in flight (tracing, sending or checkpointing)"
        where = self.dispatcher.where(handle)
        steps = f"steps {self.completed}-{self.completed + size}"
        return f"{steps}, {where}" if where else steps

    def _receive_oldest(self) -> None:
        handle, size = self.pending[0]  # still pending while awaited: the stall watch names it
        loss_sum, correct, examples, bad = (float(v) for v in self.dispatcher.receive(handle))
        self.pending.popleft()
        self.completed += size
        self.stall.progressed()
        if self.is_chief:
            log_first_step()  # remote function registration and the chunk's steps
        if not self.is_chief:
            return
        if bad:  # the paths are in the log of the worker that read them
            self.bad_files += int(bad)
            log(f"data | bad files skipped so far: {self.bad_files} | not decodable")
        with self.writer.as_default(step=self.completed):
            tf.summary.scalar("loss", loss_sum / max(examples, 1))
            tf.summary.scalar("accuracy", correct / max(examples, 1))
            tf.summary.scalar("learning_rate", learning_rate_at(self.learning_rate, self.completed))
        self.window = [w + v for w, v in zip(self.window, (loss_sum, correct, examples))]
        self._report(int(examples))
        if self.images_of is not None:  # after the first progress line, which it would delay
            self._show_training_images()

    def _report(self, new_examples: int, force: bool = False) -> None:
        loss_sum, correct, examples = self.window
        if force and not examples:  # nothing since the last line: not a line of zeros
            self.progress.end_line()
            return
        shown = self.progress.update(
            self.completed,
            loss_sum / max(examples, 1),
            correct / max(examples, 1),
            new_examples,
            force=force,
        )
        if shown is not None:
            self.window = [0.0, 0, 0]
            with self.writer.as_default(step=self.completed):
                tf.summary.scalar("examples_per_second", self.progress.rate())

    def _save(self, step: int) -> None:
        while self.pending:
            self._receive_oldest()
        self.dispatcher.drain()
        for counter in self.step_counters:
            counter.assign(step)
        folder = self._write_staged(step)
        if self.is_chief:
            self.publisher.submit(folder, step)
        else:
            shutil.rmtree(folder, ignore_errors=True)

    def _stop_for_preemption(self) -> NoReturn:
        """SIGTERM: publish the steps trained so far, within `train.preemption_checkpoint`
        of the grace period, and stop. Chunks in flight get half of that time to finish;
        those still running then are not in the checkpoint (at most max_in_flight chunks)."""
        part, idle = self.config.train.preemption_checkpoint, self.dispatcher.idle
        if not (self.is_chief and part and idle):
            why = "under MWMS the replicas save together" if part and not idle else "off"
            raise preemption.Preempted(f"train | preempted | no checkpoint ({why})")
        deadline = preemption.deadline(part)
        drain_until = (time.monotonic() + deadline) / 2
        while not idle() and time.monotonic() < drain_until:
            time.sleep(0.05)
        if idle():
            while self.pending:
                self._receive_oldest()
        self._report(0, force=True)
        step, in_flight = self.completed, len(self.pending)
        for counter in self.step_counters:
            counter.assign(step)
        self.publisher.submit(self._write_staged(step), step)
        published = self.publisher.flush(deadline - time.monotonic())
        self.writer.flush()
        self.mirror.request_sync()
        outcome = "published" if published and step in self.publisher.published else "NOT published"
        raise preemption.Preempted(
            f"train | preempted | ckpt-{step} {outcome} | chunks in flight left out: {in_flight}"
        )

    def _write_staged(self, step: int) -> Path:
        """Write a checkpoint to local staging; returns its own folder for the publisher.

        TensorFlow always writes to the same prefix; the folder is then renamed to one per
        step, so the publisher can upload it while training goes on.
        """
        writing = staged_prefix(self.staging / "writing", 0)
        shutil.rmtree(writing.parent, ignore_errors=True)
        writing.parent.mkdir(parents=True)  # TF creates it for a str prefix, not a tensor
        # A tensor, not a str: a traced writer takes any prefix without tracing again.
        self.write_checkpoint(tf.constant(str(writing)))  # under MWMS every worker takes part
        folder = staged_prefix(self.staging / "checkpoints", step).parent
        folder.parent.mkdir(parents=True, exist_ok=True)
        writing.parent.rename(folder)
        return folder

    def _finish(self, start: int, total: int) -> None:
        """Publish the last checkpoint and the summaries, then write DONE (chief only)."""
        if not self.is_chief:
            return
        if total > start:
            self._report(0, force=True)
        self.publisher.flush()
        if total > start and total not in self.publisher.published:
            # The background upload failed; the variables are still here: publish in line,
            # and let a failure here fail the chief (a restart resumes) rather than lose it.
            log(f"checkpoint | retrying ckpt-{total} synchronously")
            publish_checkpoint(
                self.run_dir,
                self._write_staged(total),
                total,
                self.config.checkpoint.keep,
                log=log,
                unevaluated_steps=self.unevaluated,
                max_unevaluated=self.config.checkpoint.max_unevaluated,
            )
        self.writer.flush()
        self.mirror.close()  # the final upload; a failure is logged, never fatal
        write_done(self.run_dir, total)
        log(f"chief | done | step: {total} | wrote {self.run_dir.url}/{DONE_FILE}")
