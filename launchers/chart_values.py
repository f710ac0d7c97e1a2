"""The charts' values file: the shape of `launchers/charts/_shared/values.yaml`, both ways.

`values_from_config` writes the values file the helm launcher installs with;
`job_from_values` reads a values file (the launcher's, or one written by hand, in the 2017
sample's shape too) back into the trainer's Config and the `launcher.k8s` options, so the
Python builders (`launchers.k8s_objects.objects_from_values`) render what the charts render,
and tests/test_helm_charts.py compares the two on the same input.

A values key is its `launcher.k8s` field in camelCase (`node_selector` -> `nodeSelector`),
with these exceptions, each written once here: `port` sits under `cluster` (next to the
counts it serves), and the fields below that are no values at all.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from disttrain.config import (
    ClusterConfig,
    Config,
    ConfigError,
    build_section,
    config_from_dict,
    config_to_dict,
)
from launchers.k8s_options import K8sOptions, Toleration

TRAIN_CHART, EVAL_CHART, BOARD_CHART = "distrib-tensorflow", "eval-tensorflow", "tensorboard"
CHARTS = (TRAIN_CHART, EVAL_CHART, BOARD_CHART)
# `launcher.k8s` fields that are no values: the namespace and context are helm's flags
# (--namespace, --kube-context), and whether TensorBoard runs is whether its chart is
# installed (the launcher's choice of releases).
NOT_VALUES = frozenset({"namespace", "context", "tensorboard.enabled"})
# The values key of a field the values file keeps elsewhere than at its camelCase name.
MOVED = {"port": ("cluster", "port")}
# The release of each chart is the job's name with this suffix (helm.releases, stop).
RELEASE_SUFFIX = {TRAIN_CHART: "", EVAL_CHART: "-eval", BOARD_CHART: "-tensorboard"}
# The trainer's cluster keys that the values hold under `cluster` (camelCase).
CLUSTER_KEYS = ("workers", "ps", "max_restarts", "hung_task_seconds")
NAME_MAX = 40  # the charts' `disttrain.name` truncates here (the config's name rule: 40)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def value_fields(cls: type, prefix: str = "") -> list[dataclasses.Field]:
    """The fields of an options dataclass that the values file holds, in declaration order."""
    return [f for f in dataclasses.fields(cls) if prefix + f.name not in NOT_VALUES]


# ---------------------------------------------------------------- config -> values


def values_from_config(config: Config, k8s: K8sOptions) -> dict:
    """The charts' values for this config: the file a user would write by hand."""
    options = _to_values(k8s)
    for field_name, (section, key) in MOVED.items():
        options.setdefault(section, {})[key] = options.pop(camel(field_name))
    cluster = {camel(key): getattr(config.cluster, key) for key in CLUSTER_KEYS}
    cluster.update(options.pop("cluster"))
    return {
        "name": config.name,
        "runDir": config.run_dir,
        "cluster": cluster,
        **options,
        "eval": {"once": False},
        "config": config_to_dict(config),
    }


def _to_values(section: Any, prefix: str = "") -> Any:
    if isinstance(section, Toleration):  # as the API spells it: the Pods' own shape
        return section.manifest()
    if dataclasses.is_dataclass(section):
        return {
            camel(f.name): _to_values(getattr(section, f.name), f"{prefix}{f.name}.")
            for f in value_fields(type(section), prefix)
        }
    if isinstance(section, list):
        return [_to_values(item, prefix) for item in section]
    if isinstance(section, dict):
        return dict(section)
    return section


# ---------------------------------------------------------------- values -> config


def job_from_values(values: dict, namespace: str, release: str = "") -> tuple[Config, K8sOptions]:
    """The Config and `launcher.k8s` options a values file describes, as the charts read it:
    a key left out takes its default, the 2017 sample's keys (traindir, storage.sharename,
    accountbase64/keybase64) stand in for the new ones, and the job is named `values.name`,
    else `release` (the training release). Validated like a config file; every problem at once.
    """
    values = _with_sample_keys(values, release)
    problems: list[ConfigError] = []
    k8s = build_section(K8sOptions, _options_raw(values), "", problems)
    if problems:
        raise ConfigError.of(problems)
    k8s.namespace = namespace
    cluster = values.get("cluster", {})
    config_raw = dict(values.get("config") or {})
    config_raw["name"] = _job_name(values, release)
    config_raw["run_dir"] = values.get("runDir", "")
    # The chart lays its cluster keys over the config's, from values.yaml when the values
    # leave them out: those defaults are the trainer's (as the differential test checks).
    defaults = ClusterConfig()
    config_raw["cluster"] = {
        **(config_raw.get("cluster") or {}),
        **{key: cluster.get(camel(key), getattr(defaults, key)) for key in CLUSTER_KEYS},
    }
    return config_from_dict(config_raw), k8s


def legacy_secret_name(values: dict, release: str = "") -> str:
    """The Secret the training chart makes from the 2017 sample's base64 keys ("" if none)."""
    storage = values.get("storage") or {}
    if storage.get("secret") or not storage.get("keybase64"):
        return ""
    return f"{_job_name(values, release)}-storage"


def _job_name(values: dict, release: str) -> str:
    name = (values.get("name") or release)[:NAME_MAX]
    return name.removesuffix("-")


def _with_sample_keys(values: dict, release: str) -> dict:
    """The 2017 sample's keys read as the new ones (as `disttrain.runDir`, `disttrain.share`
    and `disttrain.secretName` in the charts' helper do)."""
    values = {**values, "storage": dict(values.get("storage") or {})}
    storage = values["storage"]
    if not values.get("runDir") and values.get("traindir"):
        values["runDir"] = values["traindir"]
    if not storage.get("azureFileShare") and storage.get("sharename"):
        storage["azureFileShare"] = storage["sharename"]
    if legacy_secret_name(values, release):
        storage["secret"] = legacy_secret_name(values, release)
    return values


def _options_raw(values: dict) -> dict:
    """The `launcher.k8s` section (config keys) that the values file holds."""
    values = {**values}
    for field_name, (section, key) in MOVED.items():
        moved = values.get(section) or {}
        if key in moved:
            values[camel(field_name)] = moved[key]
    return _from_values(K8sOptions, values)


def _from_values(cls: type, raw: dict, prefix: str = "") -> dict:
    hints = typing.get_type_hints(cls)
    found = {}
    for f in value_fields(cls, prefix):
        if camel(f.name) not in raw:
            continue
        value, hint = raw[camel(f.name)], hints[f.name]
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_values(hint, value, f"{prefix}{f.name}.")
        elif dataclasses.is_dataclass(item) and isinstance(value, list):
            value = [_from_values(item, v, "") if isinstance(v, dict) else v for v in value]
        found[f.name] = value
    return found
