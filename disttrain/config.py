"""The one typed config of a job: loaded from YAML, overridden with `--set`, validated.

Every error names the key path, the value received and what is accepted, and is raised
before any process starts. Unknown keys are rejected by name (a typo must never be a
silently ignored setting). This module is pure Python: launchers import it without
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from disttrain.model_names import accepted_model_names, model_name_problem

DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.yaml"  # package data


class ConfigError(ValueError):
    """A config value or key that is not accepted; the message says which and why.

    `key` is the dotted key at fault, when there is one. Validation reports every problem
    at once: `of` joins them into one error, one line each, and keeps them in `problems`.
    """

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key
        self.problems = [self]

    @classmethod
    def of(cls, problems: list[ConfigError]) -> ConfigError:
        if len(problems) == 1:
            return problems[0]
        lines = "\n".join(f"  {problem}" for problem in problems)
        error = cls(f"the config has {len(problems)} problems:\n{lines}")
        error.problems = problems
        return error


@dataclass
class DataConfig:
    source: Literal["builtin", "image_folder", "tfrecord", "tfds", "synthetic"] = "builtin"
    # image_folder: `<root>/<split>/<class>/*.{jpg,jpeg,png}`, a local path or any fsspec
    # URL (staged to scratch_dir first); tfrecord: the folder `disttrain data convert`
    # wrote; builtin: the built-in dataset's cache folder (empty: ~/.cache/disttrain).
    root: str = ""
    # Local scratch for staged remote folders (`/mnt/...` in pods); empty: ~/.cache/disttrain.
    scratch_dir: str = ""
    # A corrupt or non-image file: skip it (counted, path logged once) or fail the job.
    on_bad_file: Literal["skip", "fail"] = "skip"
    # TensorFlow Datasets: the dataset name (e.g. "cats_vs_dogs") and its prepared data_dir.
    tfds_name: str = ""
    tfds_data_dir: str = ""
    # The synthetic source (benchmarks): random uint8 images of image_size, this many classes.
    synthetic_classes: int = 10
    image_size: int = 32
    # Training crops keep this fraction of the image area up to all of it: 0.08 is the
    # Inception-style crop for photos; a dataset whose object fills the frame wants more.
    crop_min_area: float = 0.08
    # Flip training images left-right at random (in the step); evaluation never flips.
    random_flip: bool = True
    # A worker whose shard of an image folder fits in this many MiB once decoded (at
    # image_size) decodes each file once and crops from memory; 0: always decode per step.
    cache_mib: int = 256
    batch_size: int = 64
    shuffle_buffer: int = 2048
    train_split: str = "train"
    test_split: str = "test"


@dataclass
class ModelConfig:
    # A name registered in the entry-point group `disttrain.models` (the built-ins:
    # small_cnn, alexnet, resnet50) or `package.module:function`; see model_names.py.
    name: str = "small_cnn"
    # The built-ins' sizes; another model function reads what it likes from `options`.
    width: int = 32
    dropout: float = 0.1
    # Free settings passed through to the model function (as `config.options`).
    options: dict[str, Any] = field(default_factory=dict)
    # Shard variables of at least this many bytes across the ps (MinSizePartitioner);
    # 0 keeps every variable whole on one ps.
    partition_min_shard_bytes: int = 0

    def cross_field_problems(self, prefix: str = "") -> list[ConfigError]:
        """Whether `name` finds a model function: known without importing it."""
        problem = model_name_problem(self.name)
        if not problem:
            return []
        key = prefix + "name"
        return [
            ConfigError(
                f"{key}: got {self.name!r} ({problem}); accepted: {accepted_model_names()}", key
            )
        ]


@dataclass
class TrainConfig:
    steps: int = 1500
    # Steps packed into one scheduled function: amortises the coordinator's per-call cost.
    steps_per_schedule: int = 10
    # The recipe (steps.py builds it from Keras objects). The peak learning rate: every
    # schedule but piecewise (which lists its own rates) starts from it.
    learning_rate: float = 0.002
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    # sgd only: heavy-ball momentum, Nesterov's variant when nesterov is true.
    momentum: float = 0.9
    nesterov: bool = False
    # Decoupled weight decay (each step: variable -= learning rate * weight_decay * variable)
    # for any optimizer; adamw is adam with it, so adamw needs it > 0. 0: off.
    weight_decay: float = 0.0
    # constant: learning_rate; cosine: from learning_rate down to min_learning_rate over
    # decay_steps; piecewise: lr_values[i] from step lr_boundaries[i-1] on. Each follows the
    # optimizer's step count, which checkpoints hold: a resume continues the schedule.
    lr_schedule: Literal["constant", "cosine", "piecewise"] = "constant"
    # Linear warmup from 0 to the schedule's rate over the first warmup_steps steps. 0: none.
    warmup_steps: int = 0
    # cosine: the steps after the warmup it decays over; 0: until train.steps.
    decay_steps: int = 0
    min_learning_rate: float = 0.0
    # piecewise: the steps where the rate changes, and one more rate than boundaries.
    lr_boundaries: list[int] = field(default_factory=list)
    lr_values: list[float] = field(default_factory=list)
    # Rescale each step's gradients to at most this global norm. 0: off.
    clip_global_norm: float = 0.0
    # Training loss against (1 - s) * one-hot + s / classes; evaluation loss is unsmoothed.
    label_smoothing: float = 0.0
    seed: int = 0
    log_every_seconds: float = 5.0
    # The chief warns when no chunk has finished for this long, naming what it waits for
    # (a worker or ps that is stopped or hung stalls the job without an error). 0: off.
    stall_warning_seconds: float = 60.0
    # Compute dtype; variables stay float32. mixed_float16 adds dynamic loss scaling.
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    # Compile the forward and backward pass with XLA.
    jit_compile: bool = False
    # Start a new run from other weights, the model's only (not the optimizer's state, not
    # the step): another run's dir, whose published checkpoint is read, or a Keras weights
    # file (.weights.h5, .keras); a path or fsspec URL. A run dir with a checkpoint of its
    # own resumes from it instead. "": random initial weights.
    init_from: str = ""
    # init_from a run dir: the step of the checkpoint to read; 0: its newest.
    init_from_step: int = 0
    # Layers whose names start with one of these prefixes are not trained (fine-tuning a
    # pretrained backbone); the layers of a nested model are matched too.
    freeze: list[str] = field(default_factory=list)
    # On SIGTERM the chief publishes a checkpoint of the steps trained so far within this
    # part of the grace period (disttrain/preemption.py), then exits to be restarted. 0: it
    # exits at once, losing the steps since the last checkpoint.
    preemption_checkpoint: float = 0.75

    def cross_field_problems(self, prefix: str = "") -> list[ConfigError]:
        """The recipe's keys that only make sense together, or only with one schedule."""
        problems = []

        def refuse(key: str, got: str, accepted: str) -> None:
            problems.append(
                ConfigError(f"{prefix}{key}: got {got}; accepted: {accepted}", prefix + key)
            )

        if self.optimizer == "adamw" and self.weight_decay == 0:
            refuse("weight_decay", "0 with adamw", "> 0 (adamw without weight decay is adam)")
        if self.lr_schedule != "cosine":
            for key in ("decay_steps", "min_learning_rate"):
                if getattr(self, key):
                    refuse(
                        key,
                        f"{getattr(self, key)!r} with lr_schedule {self.lr_schedule}",
                        "0 (it is read only with lr_schedule: cosine)",
                    )
        if self.lr_schedule != "piecewise":
            for key in ("lr_boundaries", "lr_values"):
                if getattr(self, key):
                    refuse(
                        key,
                        f"{getattr(self, key)!r} with lr_schedule {self.lr_schedule}",
                        "[] (it is read only with lr_schedule: piecewise)",
                    )
        elif not self.lr_boundaries or len(self.lr_values) != len(self.lr_boundaries) + 1:
            refuse(
                "lr_values",
                f"{self.lr_values!r} with lr_boundaries {self.lr_boundaries!r}",
                "one rate more than boundaries, at least one boundary (lr_schedule: piecewise)",
            )
        problems += self.init_from_problems(prefix)
        if self.lr_schedule == "cosine":
            if self.min_learning_rate > self.learning_rate:
                refuse(
                    "min_learning_rate",
                    f"{self.min_learning_rate!r} above learning_rate {self.learning_rate!r}",
                    "a number from 0 to learning_rate",
                )
            if not self.decay_steps and self.warmup_steps >= self.steps:
                refuse(
                    "warmup_steps",
                    f"{self.warmup_steps} with steps {self.steps} and decay_steps 0",
                    "fewer than train.steps (or set train.decay_steps)",
                )
        return problems

    def init_from_problems(self, prefix: str = "") -> list[ConfigError]:
        """A weights file only in a format Keras 3 loads; a step only with a run dir."""
        source, accepted = (
            self.init_from,
            "a run dir, or a Keras weights file (.weights.h5, .keras)",
        )
        if source.endswith((".h5", ".hdf5")) and not is_keras_weights_file(source):
            key = prefix + "init_from"
            got = f"{source!r}, a legacy HDF5 file"
            return [ConfigError(f"{key}: got {got}; accepted: {accepted}", key)]
        if self.init_from_step > 0 and (not source or is_keras_weights_file(source)):
            key = prefix + "init_from_step"
            got = f"{self.init_from_step} with init_from {source!r}"
            accepted = "0 (a step is read only when train.init_from is a run dir)"
            return [ConfigError(f"{key}: got {got}; accepted: {accepted}", key)]
        return []


# The files `train.init_from` loads with Keras; anything else names a run dir.
KERAS_WEIGHTS_SUFFIXES = (".weights.h5", ".keras")


def is_keras_weights_file(source: str) -> bool:
    return source.endswith(KERAS_WEIGHTS_SUFFIXES)


@dataclass
class CheckpointConfig:
    every_steps: int = 300
    # Also save once this many seconds have passed since the last save (or the loop's
    # start), so the evaluator sees progress while steps are slow; 0 or null: off.
    every_seconds: float | None = 0.0
    keep: int = 5
    # Checkpoints the evaluator has not reached yet are kept beyond `keep`, at most this
    # many (the newest; deleting an older one is logged as a warning): a dead evaluator
    # must not make retention unbounded. 0: retention does not wait for the evaluator.
    max_unevaluated: int = 10
    # The run dir's lease (disttrain/lease.py): how long after the chief's last heartbeat
    # another job may take the run dir without --take-over. The chief renews it every
    # fifth of this; a restart of the same job takes it back at once.
    lease_seconds: float = 300.0


@dataclass
class EvalConfig:
    enabled: bool = True
    batch_size: int = 256
    poll_seconds: float = 2.0
    # Examples of the test split per evaluation; 0 means the whole split.
    max_examples: int = 0
    # What picks export/best: accuracy (higher is better) or loss (lower is better).
    best_metric: Literal["accuracy", "loss"] = "accuracy"
    # Evaluate only the newest published checkpoint at each poll, skipping older ones.
    latest_only: bool = False


@dataclass
class ClusterConfig:
    workers: int = 2
    ps: int = 1
    # A chief is always present; with workers == 0 and ps == 0 the chief trains alone.
    peer_timeout_seconds: float = 120.0
    # Workers and ps stop on their own when the chief has been unreachable this long.
    chief_timeout_seconds: float = 300.0
    # Restarts the launcher may spend on failed tasks before it declares the job failed.
    max_restarts: int = 3
    # A task whose heartbeat (disttrain/heartbeat.py) is older than this is stopped or hung:
    # it is killed and restarted as a crashed one, spending a restart. 0: never.
    hung_task_seconds: int = 300


# A rule of a section: (accepts the value?, what is accepted); see `rule_problems`.
Rule = tuple[Callable[[Any], bool], str]
MIN_HUNG_TASK_SECONDS = 10


# Ranges checked after loading: key path -> (predicate, what is accepted).
CONFIG_RULES: dict[str, Rule] = {
    "name": (
        lambda v: v.replace("-", "").isalnum() and v[:1].isalpha() and len(v) <= 40,
        "letters, digits and '-', starting with a letter, at most 40 characters",
    ),
    "run_dir": (lambda v: bool(v.strip()), "a non-empty path or fsspec URL"),
    "data.image_size": (lambda v: 8 <= v <= 1024, "an integer from 8 to 1024"),
    "data.crop_min_area": (lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    "data.cache_mib": (lambda v: v >= 0, "an integer >= 0 (0: off)"),
    "data.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.shuffle_buffer": (lambda v: v >= 1, "an integer >= 1"),
    "data.synthetic_classes": (lambda v: v >= 2, "an integer >= 2"),
    "model.partition_min_shard_bytes": (lambda v: v >= 0, "an integer >= 0 (0: off)"),
    "model.width": (lambda v: v >= 1, "an integer >= 1"),
    "model.dropout": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "model.options": (
        lambda v: all(k.isidentifier() for k in v),
        "a mapping of option names (identifiers) to any values",
    ),
    "train.steps": (lambda v: v >= 1, "an integer >= 1"),
    "train.steps_per_schedule": (lambda v: v >= 1, "an integer >= 1"),
    "train.learning_rate": (lambda v: v > 0, "a number > 0"),
    "train.momentum": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "train.weight_decay": (lambda v: v >= 0, "a number >= 0 (0: off)"),
    "train.warmup_steps": (lambda v: v >= 0, "an integer >= 0 (0: no warmup)"),
    "train.decay_steps": (lambda v: v >= 0, "an integer >= 0 (0: until train.steps)"),
    "train.min_learning_rate": (lambda v: v >= 0, "a number >= 0"),
    "train.lr_boundaries": (
        lambda v: all(b >= 1 for b in v) and v == sorted(set(v)),
        "increasing step numbers >= 1",
    ),
    "train.lr_values": (lambda v: all(x > 0 for x in v), "numbers > 0"),
    "train.clip_global_norm": (lambda v: v >= 0, "a number >= 0 (0: off)"),
    "train.label_smoothing": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "train.log_every_seconds": (lambda v: v > 0, "a number > 0"),
    "train.stall_warning_seconds": (lambda v: v >= 0, "a number >= 0 (0: off)"),
    "train.init_from_step": (lambda v: v >= 0, "an integer >= 0 (0: the newest checkpoint)"),
    "train.freeze": (
        lambda v: all(p.strip() == p != "" for p in v) and len(set(v)) == len(v),
        "layer-name prefixes, each non-empty, without spaces around it, none twice",
    ),
    "train.preemption_checkpoint": (
        lambda v: 0.0 <= v < 1.0,
        "a number in [0, 1): the part of the grace period after SIGTERM (0: off)",
    ),
    "checkpoint.every_steps": (lambda v: v >= 1, "an integer >= 1"),
    "checkpoint.every_seconds": (
        lambda v: v is None or v >= 0,
        "a number of seconds >= 0 (0 or null: off)",
    ),
    "checkpoint.keep": (lambda v: v >= 1, "an integer >= 1"),
    "checkpoint.max_unevaluated": (lambda v: v >= 0, "an integer >= 0 (0: do not wait)"),
    "checkpoint.lease_seconds": (
        lambda v: v >= 10,
        "a number of seconds >= 10 (the chief renews the lease every fifth of it)",
    ),
    "eval.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval.poll_seconds": (lambda v: v > 0, "a number > 0"),
    "eval.max_examples": (lambda v: v >= 0, "an integer >= 0"),
    "cluster.workers": (lambda v: v >= 0, "an integer >= 0"),
    "cluster.ps": (lambda v: v >= 0, "an integer >= 0"),
    "cluster.peer_timeout_seconds": (lambda v: v > 0, "a number > 0"),
    "cluster.chief_timeout_seconds": (lambda v: v > 0, "a number > 0"),
    "cluster.max_restarts": (lambda v: v >= 0, "an integer >= 0"),
    # A heartbeat every few seconds (at most a quarter of this): shorter would restart a
    # task for a pause of its interpreter (a large import, a loaded machine).
    "cluster.hung_task_seconds": (
        lambda v: v == 0 or v >= MIN_HUNG_TASK_SECONDS,
        f"0 (off) or an integer >= {MIN_HUNG_TASK_SECONDS}",
    ),
}


@dataclass
class Config:
    name: str = "default"
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    RULES: ClassVar[dict[str, Rule]] = CONFIG_RULES

    def cross_field_problems(self, prefix: str = "") -> list[ConfigError]:
        """What no single key's rule can see: the shape, and secrets inside URLs."""
        problems = _query_string_problems(self) + _containerless_url_problems(self)
        problems += _stall_warning_problems(self)
        if self.train.init_from and same_location(self.train.init_from, self.run_dir):
            problems.append(
                ConfigError(
                    f"train.init_from: got {self.train.init_from!r}, this run's own run_dir; "
                    "accepted: another run's dir or a weights file (a run dir resumes from its "
                    "own checkpoints by itself)",
                    "train.init_from",
                )
            )
        if self.cluster.ps > 0 and self.cluster.workers == 0:
            problems.append(
                ConfigError(
                    f"cluster.workers: got 0 with cluster.ps = {self.cluster.ps}; accepted: at "
                    "least 1 worker when there are parameter servers (or ps: 0 to train on "
                    "the chief)",
                    "cluster.workers",
                )
            )
        every_seconds = self.checkpoint.every_seconds or 0
        if every_seconds > 0 and self.cluster.workers and not self.cluster.ps:
            problems.append(
                ConfigError(
                    f"checkpoint.every_seconds: got {every_seconds:g} with "
                    f"cluster.workers = {self.cluster.workers} and cluster.ps = 0 "
                    "(MultiWorkerMirroredStrategy); accepted: 0 or null there (every worker "
                    "saves in the same step, and each has its own clock: use "
                    "checkpoint.every_steps)",
                    "checkpoint.every_seconds",
                )
            )
        return problems


# Where the launchers' settings live in a config file. The trainer never reads them: the
# launchers declare their sections (launchers/), and the tasks' config.yaml holds none.
LAUNCHER_KEY = "launcher"


@dataclass
class LauncherChoice:
    """The `launcher:` section: which launcher runs the job, and the validated options of
    every section the installed launchers declare (their defaults where the file is silent)."""

    name: str = "local"
    options: dict[str, Any] = field(default_factory=dict)


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, shown_as: str = ""
) -> Config:
    """The trainer's part of `path` (default: the packaged default.yaml) with `key.path=value`
    overrides applied, validated. A `launcher:` section is left to the launchers. Errors
    name the file as `shown_as` when given (a copy stands in for a remote file)."""
    return load_job_config(path, overrides, None, shown_as=shown_as)[0]


def load_job_config(
    path: str | Path | None,
    overrides: list[str] | None,
    launcher_sections: Mapping[str, type] | None,
    other_sections: Collection[str] = (),
    settings: Mapping[str, str] | None = None,
    shown_as: str = "",
) -> tuple[Config, LauncherChoice]:
    """The config and its `launcher:` section. `launcher_sections` (section name -> options
    dataclass) are the chosen launcher's: validated; None: the section is not read.
    `other_sections` may appear unread (other installed launchers'). `settings` are dotted
    keys set to strings as given (CLI flags: never parsed as YAML). Every problem at once,
    each naming the file unless --set or a flag gave it."""
    path = Path(path) if path else DEFAULT_CONFIG
    raw = _read_config_file(path, shown_as or str(path))
    _apply_overrides(raw, overrides or [])
    apply_settings(raw, settings or {})
    overridden = {o.split("=", 1)[0].strip() for o in overrides or []} | set(settings or {})
    try:
        return job_config_from_dict(raw, launcher_sections, other_sections)
    except ConfigError as error:  # name the file for each bad value that came from it
        raise ConfigError.of(
            [
                problem
                if _set_by(overridden, problem.key)
                else ConfigError(
                    f"{problem} (in config file {shown_as or str(path)!r})", problem.key
                )
                for problem in error.problems
            ]
        ) from None


def launcher_named_in(path: str | Path | None, overrides: list[str] | None) -> str:
    """The `launcher.name` a config file and its overrides give (a bad one is reported when
    the config loads; here it reads as the default)."""
    raw = _read_config_file(Path(path) if path else DEFAULT_CONFIG)
    _apply_overrides(raw, overrides or [])
    section = raw.get(LAUNCHER_KEY)
    name = section.get("name") if isinstance(section, dict) else None
    return name if isinstance(name, str) else LauncherChoice.name


def apply_settings(raw: dict, settings: Mapping[str, str]) -> None:
    """Set each dotted key of `settings` in `raw` to its string, unparsed."""
    for key, value in settings.items():
        *sections, last = key.split(".")
        node = raw
        for part in sections:
            child = node.get(part)
            node[part] = node = child if isinstance(child, dict) else {}
        node[last] = value


def _read_config_file(path: Path, shown_as: str = "") -> dict:
    shown_as = shown_as or str(path)
    if not path.is_file():
        raise ConfigError(f"config file {shown_as!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {shown_as!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {shown_as!r} must hold a mapping, got {type(raw).__name__}")
    return raw


def _set_by(overridden: set[str], key: str) -> bool:
    """Whether an override set `key`: itself, a section or list holding it, or a key inside
    it (`--set a.b.c=1` is what makes an unknown section `a.b`)."""
    return bool(key) and any(_within(key, o) or _within(o, key) for o in overridden)


def _within(key: str, outer: str) -> bool:
    """`key` is `outer` or lies inside it (a key of its section, an item of its list)."""
    return key == outer or key.startswith((outer + ".", outer + "["))


def config_from_dict(raw: dict) -> Config:
    """Build and validate a Config from a plain mapping (e.g. a resolved config.yaml); a
    `launcher:` section, which older run dirs hold, is not the trainer's to read."""
    return job_config_from_dict(raw, None)[0]


def job_config_from_dict(
    raw: dict, launcher_sections: Mapping[str, type] | None, other_sections: Collection[str] = ()
) -> tuple[Config, LauncherChoice]:
    """`config_from_dict`, plus the launcher section validated as `load_job_config` does."""
    problems: list[ConfigError] = []
    raw = dict(raw)
    launcher_raw = raw.pop(LAUNCHER_KEY, None)
    config = build_section(Config, raw, "", problems)
    launcher = LauncherChoice()
    if launcher_sections is not None:
        launcher = _build_launcher(launcher_raw, launcher_sections, other_sections, problems)
    if problems:
        raise ConfigError.of(problems)
    return config, launcher


def build_section(cls: type, raw: Any, prefix: str, problems: list[ConfigError]) -> Any:
    """A section dataclass from `raw`, then its `RULES` (and those of the sections inside
    it) checked. Each bad key or value goes to `problems` and keeps its default; a rule on
    a value already refused is skipped: it would judge the stand-in, not the user's value."""
    found: list[ConfigError] = []
    section = _build(cls, raw, prefix, found)
    refused = [problem.key for problem in found]
    found += [
        problem
        for problem in rule_problems(section, prefix)
        if not any(_within(key, problem.key) for key in refused)
    ]
    problems += found
    return section


def _build_launcher(
    raw: Any, sections: Mapping[str, type], others: Collection[str], problems: list[ConfigError]
) -> LauncherChoice:
    prefix = LAUNCHER_KEY + "."
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(ConfigError(f"launcher must be a mapping, got {raw!r}", LAUNCHER_KEY))
        raw = {}
    name = raw.get("name", LauncherChoice.name)
    if not isinstance(name, str):
        problems.append(
            ConfigError(f"launcher.name: got {name!r}; accepted: a string", "launcher.name")
        )
        name = LauncherChoice.name
    options = {}
    for section in raw:
        if section != "name" and section not in sections and section not in others:
            accepted = ", ".join(["name", *sorted({*sections, *others})])
            problems.append(
                ConfigError(
                    f"unknown config key {prefix + section!r}; keys accepted in launcher "
                    f"(sections of the installed launchers): {accepted}",
                    prefix + section,
                )
            )
    for section, cls in sections.items():
        options[section] = build_section(cls, raw.get(section), f"{prefix}{section}.", problems)
    return LauncherChoice(name, options)


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    """The resolved config as YAML: what is written to `<run_dir>/config.yaml`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _apply_overrides(raw: dict, overrides: list[str]) -> None:
    """Apply every override; all that cannot be applied are reported at once."""
    problems = []
    for override in overrides:
        try:
            _apply_override(raw, override)
        except ConfigError as problem:
            problems.append(problem)
    if problems:
        raise ConfigError.of(problems)


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like key.path=value")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    # YAML parsing gives `--set train.steps=10` an int and `--set eval.enabled=false` a bool.
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""


def _build(cls: type, raw: Any, prefix: str, problems: list[ConfigError]) -> Any:
    """`cls` from `raw`; each bad key or value goes to `problems` and keeps its default."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        key = prefix.rstrip(".")
        problems.append(ConfigError(f"{key or 'config'} must be a mapping, got {raw!r}", key))
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        if name not in fields:
            where = prefix.rstrip(".") or "the top level"
            problems.append(
                ConfigError(
                    f"unknown config key {prefix + name!r}; keys accepted in {where}: "
                    + ", ".join(sorted(fields)),
                    prefix + name,
                )
            )
            continue
        try:
            values[name] = _coerce(hints[name], value, prefix + name, problems)
        except ConfigError as problem:
            problems.append(problem)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, problems: list[ConfigError]) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", problems)
    origin = typing.get_origin(hint)
    if origin is dict:  # dict[str, str]: labels such as a nodeSelector; dict[str, Any]: free
        free = typing.get_args(hint)[1] is Any
        if not isinstance(value, dict):
            values = "values" if free else "strings"
            accepted = f"a mapping of names to {values}"
            raise ConfigError(f"{key}: got {value!r}; accepted: {accepted}", key)
        if free:
            return {str(k): v for k, v in value.items()}
        return {str(k): _coerce_scalar(str, v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: got {value!r}; accepted: a list", key)
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            accepted = ", ".join(map(str, choices))
            raise ConfigError(f"{key}: got {value!r}; accepted: {accepted}", key)
        return value
    if origin in (typing.Union, types.UnionType):
        # Only `X | None` is used.
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner, value, key, problems)
    return _coerce_scalar(hint, value, key)


def _coerce_scalar(hint: type, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}; accepted: true or false", key)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}; accepted: an integer", key)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; accepted: a number", key)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: got {value!r}; accepted: a string", key)
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def rule_problems(section: Any, prefix: str = "") -> list[ConfigError]:
    """What `section` and the sections inside it break of their classes' `RULES`: ranges
    and syntax the types alone cannot say, as {relative key: (accepts, what is accepted)}."""
    problems = []
    for key, (accepts, accepted) in getattr(type(section), "RULES", {}).items():
        value = _lookup(section, key)
        if not accepts(value):
            problems.append(
                ConfigError(
                    f"{prefix}{key}: got {_shown(value)!r}; accepted: {accepted}", prefix + key
                )
            )
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            problems += rule_problems(value, f"{prefix}{item.name}.")
    check = getattr(section, "cross_field_problems", None)
    return problems + (check(prefix) if check else [])


def _shown(value: Any) -> Any:
    """A value as the user wrote it: a list of sections (tolerations) as mappings."""
    if isinstance(value, list):
        return [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return value


def _lookup(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


# The keys that may hold a URL, checked for secrets and for a missing container.
URL_KEYS = ("run_dir", "data.root", "train.init_from")


def same_location(a: str, b: str) -> bool:
    """Whether two paths or URLs name the same place (a trailing "/" aside; a relative
    local path against the absolute one it resolves to)."""
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def _query_string_problems(config: Config) -> list[ConfigError]:
    """A URL's query (`?sv=...&sig=...`) is a SAS token: it would travel into config.yaml,
    ConfigMaps and Helm values. Refused before anything is written, without echoing it."""
    return [
        ConfigError(
            f"{key}: got {value.split('?', 1)[0]}?<query hidden>; accepted: a URL without "
            "a query string (give a SAS token through AZURE_STORAGE_SAS_TOKEN or a Secret)",
            key,
        )
        for key in URL_KEYS
        if "://" in (value := _lookup(config, key)) and "?" in value
    ]


# URL schemes whose first part names a container (Blob, ADLS Gen2) or a bucket.
_CONTAINER_SCHEMES = ("az", "abfs", "abfss", "s3", "gs", "gcs")


def _stall_warning_problems(config: Config) -> list[ConfigError]:
    """The stall warning must come before the restart of the hung task it warns about."""
    warn, restart = config.train.stall_warning_seconds, config.cluster.hung_task_seconds
    if not warn or restart < MIN_HUNG_TASK_SECONDS or warn < restart:  # off, or refused already
        return []
    key = "train.stall_warning_seconds"
    return [
        ConfigError(
            f"{key}: got {warn} with cluster.hung_task_seconds = {restart}; accepted: less "
            "than cluster.hung_task_seconds (the hung task is restarted by then), or 0 (off)",
            key,
        )
    ]


def _containerless_url_problems(config: Config) -> list[ConfigError]:
    """`az://` or `az:///path` names no container: fsspec would take the path for a local
    folder named `az:` and train into it. Refused here, before anything is written."""
    problems = []
    for key in URL_KEYS:
        value = _lookup(config, key)
        scheme, found, rest = value.partition("://")
        container = rest.split("/", 1)[0].split("@", 1)[0]  # abfs://<container>@<account>
        if found and scheme.lower() in _CONTAINER_SCHEMES and not container.strip():
            problems.append(
                ConfigError(
                    f"{key}: got {value!r}, which names no container; accepted: "
                    f"{scheme}://<container>/<path>",
                    key,
                )
            )
    return problems
