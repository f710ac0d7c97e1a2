"""The one typed config of a job: loaded from YAML, overridden with `--set`, validated.

Every error names the key path, the value received and what is accepted, and is raised
before any process starts. Unknown keys are rejected by name (a typo must never be a
silently ignored setting). This module is pure Python: launchers import it without
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from disttrain import kube_syntax

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
    # A worker whose shard of an image folder fits in this many MiB once decoded (at
    # image_size) decodes each file once and crops from memory; 0: always decode per step.
    cache_mib: int = 256
    batch_size: int = 64
    shuffle_buffer: int = 2048
    train_split: str = "train"
    test_split: str = "test"


@dataclass
class ModelConfig:
    name: Literal["small_cnn", "alexnet", "resnet50"] = "small_cnn"
    width: int = 32
    dropout: float = 0.1
    # Shard variables of at least this many bytes across the ps (MinSizePartitioner);
    # 0 keeps every variable whole on one ps.
    partition_min_shard_bytes: int = 0


@dataclass
class TrainConfig:
    steps: int = 1500
    # Steps packed into one scheduled function: amortises the coordinator's per-call cost.
    steps_per_schedule: int = 10
    learning_rate: float = 0.002
    seed: int = 0
    log_every_seconds: float = 5.0
    # Compute dtype; variables stay float32. mixed_float16 adds dynamic loss scaling.
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    # Compile the forward and backward pass with XLA.
    jit_compile: bool = False


@dataclass
class CheckpointConfig:
    every_steps: int = 300
    keep: int = 5
    # Checkpoints the evaluator has not reached yet are kept beyond `keep`, at most this
    # many (the newest; deleting an older one is logged as a warning): a dead evaluator
    # must not make retention unbounded. 0: retention does not wait for the evaluator.
    max_unevaluated: int = 10


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


@dataclass
class LocalLauncherConfig:
    # Each job's state and logs live under $DISTTRAIN_HOME/local/<name> (~/.disttrain).
    host: str = "127.0.0.1"


WORKER_IMAGE = "disttrain/worker:0.1.0"  # GPU TensorFlow + the whole trainer
PS_IMAGE = "disttrain/ps:0.1.0"  # CPU-only TensorFlow, no data tooling: smaller


@dataclass
class K8sToleration:
    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


@dataclass
class K8sRoleConfig:
    """How the pods of one role run (the 2017 sample used nodeSelector `jobrole: ps|worker`)."""

    image: str = WORKER_IMAGE
    cpu: str = "1"  # requested; Kubernetes quantities ("500m", "2")
    memory: str = "2Gi"  # requested and the limit
    gpus: int = 0  # nvidia.com/gpu; > 0 also tolerates the nvidia.com/gpu taint
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[K8sToleration] = field(default_factory=list)


@dataclass
class K8sPsConfig(K8sRoleConfig):
    image: str = PS_IMAGE


@dataclass
class K8sBoardConfig(K8sRoleConfig):
    enabled: bool = False
    image: str = PS_IMAGE  # TensorBoard needs no GPU and no data tooling
    memory: str = "1Gi"


@dataclass
class K8sStorageConfig:
    # Secret holding AZURE_STORAGE_* keys (`disttrain secret create` makes it from the local
    # environment); pods get the values by reference, never through a manifest.
    secret: str = ""
    # The storage account of an az:// location, as AZURE_STORAGE_ACCOUNT_NAME in the pods:
    # needed when they authenticate with workload identity (service_account) and no Secret.
    account_name: str = ""
    # Azure Files share mounted at /azure/<share> (file.csi.azure.com, inline with `secret`,
    # or through an existing PersistentVolumeClaim when azure_file_claim is set).
    azure_file_share: str = ""
    azure_file_claim: str = ""
    # Scratch at /mnt for staging data: an emptyDir (optional size limit), or a folder of the
    # node (the sample's ephemeral SSD) when host_path is set; hostPath breaks the
    # "restricted" Pod Security Standard, so it is opt-in.
    scratch_size_limit: str = ""
    scratch_host_path: str = ""


@dataclass
class K8sLauncherConfig:
    # Empty: as kubectl does, the kubeconfig context's namespace, else "default".
    namespace: str = ""
    context: str = ""  # kubeconfig context; empty: the current one (or in-cluster)
    service_account: str = ""
    # Secrets of type kubernetes.io/dockerconfigjson for a private registry (none is needed
    # for an ACR attached to the AKS cluster).
    image_pull_secrets: list[str] = field(default_factory=list)
    port: int = 2222
    chief: K8sRoleConfig = field(default_factory=K8sRoleConfig)
    worker: K8sRoleConfig = field(default_factory=K8sRoleConfig)
    # A section given in YAML is built from its class defaults: the ps default lives there.
    ps: K8sPsConfig = field(default_factory=K8sPsConfig)
    evaluator: K8sRoleConfig = field(default_factory=K8sRoleConfig)
    tensorboard: K8sBoardConfig = field(default_factory=K8sBoardConfig)
    storage: K8sStorageConfig = field(default_factory=K8sStorageConfig)
    active_deadline_seconds: int = 0  # 0: no deadline
    ttl_seconds_after_finished: int = -1  # -1: keep the finished job's objects


@dataclass
class LauncherConfig:
    name: str = "local"
    local: LocalLauncherConfig = field(default_factory=LocalLauncherConfig)
    k8s: K8sLauncherConfig = field(default_factory=K8sLauncherConfig)


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
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


# Ranges checked after loading: key path -> (predicate, what is accepted).
_RULES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
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
    "train.steps": (lambda v: v >= 1, "an integer >= 1"),
    "train.steps_per_schedule": (lambda v: v >= 1, "an integer >= 1"),
    "train.learning_rate": (lambda v: v > 0, "a number > 0"),
    "train.log_every_seconds": (lambda v: v > 0, "a number > 0"),
    "checkpoint.every_steps": (lambda v: v >= 1, "an integer >= 1"),
    "checkpoint.keep": (lambda v: v >= 1, "an integer >= 1"),
    "checkpoint.max_unevaluated": (lambda v: v >= 0, "an integer >= 0 (0: do not wait)"),
    "eval.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval.poll_seconds": (lambda v: v > 0, "a number > 0"),
    "eval.max_examples": (lambda v: v >= 0, "an integer >= 0"),
    "cluster.workers": (lambda v: v >= 0, "an integer >= 0"),
    "cluster.ps": (lambda v: v >= 0, "an integer >= 0"),
    "cluster.peer_timeout_seconds": (lambda v: v > 0, "a number > 0"),
    "cluster.chief_timeout_seconds": (lambda v: v > 0, "a number > 0"),
    "cluster.max_restarts": (lambda v: v >= 0, "an integer >= 0"),
    "launcher.k8s.port": (lambda v: 1 <= v <= 65535, "a port from 1 to 65535"),
    "launcher.k8s.active_deadline_seconds": (lambda v: v >= 0, "an integer >= 0 (0: none)"),
    "launcher.k8s.ttl_seconds_after_finished": (lambda v: v >= -1, "an integer >= -1 (-1: keep)"),
}
_RULES["launcher.k8s.image_pull_secrets"] = (
    kube_syntax.are_object_names,
    "Secret names (lower-case letters, digits, '-' and '.')",
)
_RULES["launcher.k8s.storage.account_name"] = (
    lambda v: bool(re.fullmatch(r"([a-z0-9]{3,24})?", v)),
    "an Azure storage account name: 3 to 24 lower-case letters and digits",
)
_RULES["launcher.k8s.storage.scratch_size_limit"] = (
    lambda v: v == "" or kube_syntax.is_quantity(v),
    f"empty (no limit) or {kube_syntax.QUANTITY_ACCEPTED}",
)
for _role in ("chief", "worker", "ps", "evaluator", "tensorboard"):
    _RULES[f"launcher.k8s.{_role}.gpus"] = (lambda v: v >= 0, "an integer >= 0")
    for _resource in ("cpu", "memory"):
        _RULES[f"launcher.k8s.{_role}.{_resource}"] = (
            kube_syntax.is_quantity,
            kube_syntax.QUANTITY_ACCEPTED,
        )
    _RULES[f"launcher.k8s.{_role}.node_selector"] = (
        kube_syntax.are_labels,
        kube_syntax.LABELS_ACCEPTED,
    )
    _RULES[f"launcher.k8s.{_role}.tolerations"] = (
        kube_syntax.are_tolerations,
        kube_syntax.TOLERATIONS_ACCEPTED,
    )
    _RULES[f"launcher.k8s.{_role}.image"] = (
        lambda v: _is_pinned_image(v),
        "an image reference with a tag or digest, e.g. disttrain/worker:0.1.0",
    )


def _is_pinned_image(image: str) -> bool:
    """`repo[:port]/name:tag` or `...@sha256:<hex>`: never an implicit `latest`."""
    name, _, digest = image.partition("@")
    if digest:
        return bool(re.fullmatch(r"sha256:[0-9a-f]{64}", digest)) and bool(name.strip())
    last = name.rsplit("/", 1)[-1]
    repo, _, tag = last.partition(":")
    return bool(repo) and bool(re.fullmatch(r"\w[\w.-]{0,127}", tag)) and " " not in name


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load `path` (default: configs/default.yaml), apply `key.path=value` overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping, got {type(raw).__name__}"
        )
    for override in overrides or []:
        _apply_override(raw, override)
    overridden = {o.split("=", 1)[0].strip() for o in overrides or []}
    try:
        return config_from_dict(raw)
    except ConfigError as error:  # name the file for each bad value that came from it
        raise ConfigError.of(
            [
                problem
                if _set_by(overridden, problem.key)
                else ConfigError(f"{problem} (in config file {str(path)!r})", problem.key)
                for problem in error.problems
            ]
        ) from None


def _set_by(overridden: set[str], key: str) -> bool:
    """Whether an override set `key`: itself, a section or list holding it, or a key inside
    it (`--set a.b.c=1` is what makes an unknown section `a.b`)."""
    return bool(key) and any(_within(key, o) or _within(o, key) for o in overridden)


def _within(key: str, outer: str) -> bool:
    """`key` is `outer` or lies inside it (a key of its section, an item of its list)."""
    return key == outer or key.startswith((outer + ".", outer + "["))


def config_from_dict(raw: dict) -> Config:
    """Build and validate a Config from a plain mapping (e.g. a resolved config.yaml)."""
    problems: list[ConfigError] = []
    config = _build(Config, raw, "", problems)
    refused = [problem.key for problem in problems]
    problems += [  # a rule on a value refused above would judge a stand-in, not the user's
        problem
        for problem in _rule_problems(config)
        if not any(_within(key, problem.key) for key in refused)
    ]
    if problems:
        raise ConfigError.of(problems)
    return config


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    """The resolved config as YAML: what is written to `<run_dir>/config.yaml`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


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
    if origin is dict:  # dict[str, str]: labels such as a nodeSelector
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}; accepted: a mapping of names to strings", key)
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


def _rule_problems(config: Config) -> list[ConfigError]:
    problems = _query_string_problems(config)
    for key, (accepts, accepted) in _RULES.items():
        value = _lookup(config, key)
        if not accepts(value):
            problems.append(ConfigError(f"{key}: got {_shown(value)!r}; accepted: {accepted}", key))
    if config.cluster.ps > 0 and config.cluster.workers == 0:
        problems.append(
            ConfigError(
                f"cluster.workers: got 0 with cluster.ps = {config.cluster.ps}; accepted: at "
                "least 1 worker when there are parameter servers (or ps: 0 to train on the chief)",
                "cluster.workers",
            )
        )
    return problems


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


def _query_string_problems(config: Config) -> list[ConfigError]:
    """A URL's query (`?sv=...&sig=...`) is a SAS token: it would travel into config.yaml,
    ConfigMaps and Helm values. Refused before anything is written, without echoing it."""
    return [
        ConfigError(
            f"{key}: got {value.split('?', 1)[0]}?<query hidden>; accepted: a URL without "
            "a query string (give a SAS token through AZURE_STORAGE_SAS_TOKEN or a Secret)",
            key,
        )
        for key in ("run_dir", "data.root")
        if "://" in (value := _lookup(config, key)) and "?" in value
    ]
