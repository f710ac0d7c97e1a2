"""The charts' values.schema.json, generated: `make charts` (`python -m launchers.chart_schema`)
writes launchers/charts/_shared/values.schema.json, and tests/test_helm_charts.py checks that
the committed file is what this module makes now.

Derived from launchers/k8s_options.py: every values key that is a `launcher.k8s` field (the
five roles' image, cpu, memory, gpus, nodeSelector and tolerations; storage; cluster.port;
serviceAccount, imagePullSecrets and the two deadlines), named as launchers/chart_values.py
names it. The field's type gives the JSON type; its RULES entry, when it is a
`kube_syntax.Syntax`, gives the pattern, length or bounds (the very object that checks the
config), and what the rule accepts becomes the description. Fields are required (not null:
Helm deletes a key set to null, and the config loader refuses null), except inside lists.
Rules that are Python functions (labels, tolerations, cross-field checks) stay Python-only:
a values file breaking one renders, and the API server or the pods refuse it.

Hand-written (`HAND_WRITTEN`), because no options dataclass holds it: the job's name, runDir
and the cluster counts with their "ps need a worker" condition (the trainer's Config, whose
rules are functions), `eval.once` (a chart-only switch), `config` (free-form: the trainer
validates it) and the 2017 sample's keys (traindir, evaldir, logdir, storage.accountbase64
and keybase64; storage.sharename takes azureFileShare's derived schema). Whether a pod can
reach the run dir is no schema at all: it needs several keys, and the charts' helper refuses
it with `fail` (`disttrain.runDir`), as launchers/k8s_checks.py does.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from disttrain.config import MIN_HUNG_TASK_SECONDS
from launchers.chart_values import MOVED, camel, value_fields
from launchers.k8s_options import K8sOptions
from launchers.kube_syntax import Syntax

SCHEMA_PATH = Path(__file__).resolve().parent / "charts" / "_shared" / "values.schema.json"
SCALARS = {str: "string", int: "integer", bool: "boolean"}

HAND_WRITTEN: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "disttrain charts (distrib-tensorflow, eval-tensorflow, tensorboard): one values file",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "global": {"type": "object"},
        "name": {"type": "string", "maxLength": 40, "pattern": "^([a-z]([-a-z0-9]*[a-z0-9])?)?$"},
        "runDir": {
            "type": "string",
            "description": "az://, abfs://, abfss:// URL or a path under /azure/<share>/",
            "pattern": "^((az|abfs|abfss)://.+|/azure/[^/]+/.+)?$",
        },
        "cluster": {
            "type": "object",
            "additionalProperties": False,
            "required": ["workers", "ps", "maxRestarts", "hungTaskSeconds"],
            "properties": {
                "workers": {"type": "integer", "minimum": 0},
                "ps": {"type": "integer", "minimum": 0},
                "maxRestarts": {"type": "integer", "minimum": 0},
                "hungTaskSeconds": {
                    "type": "integer",
                    "anyOf": [{"const": 0}, {"minimum": MIN_HUNG_TASK_SECONDS}],
                    "description": f"0 (off) or at least {MIN_HUNG_TASK_SECONDS}",
                },
            },
            "if": {"required": ["ps"], "properties": {"ps": {"minimum": 1}}},
            "then": {
                "properties": {
                    "workers": {
                        "minimum": 1,
                        "description": "parameter servers need at least one worker",
                    }
                }
            },
        },
        "eval": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"once": {"type": "boolean"}},
        },
        "traindir": {"type": "string"},
        "evaldir": {"type": "string"},
        "logdir": {"type": "string"},
        "config": {
            "type": "object",
            "description": "Trainer settings in disttrain's config keys; the trainer rejects "
            "unknown ones.",
        },
    },
}
# The 2017 sample's storage keys: the base64 account and key, and the share under its old name.
SAMPLE_STORAGE = {"accountbase64": {"type": "string"}, "keybase64": {"type": "string"}}
SAMPLE_ALIASES = {"sharename": "azureFileShare"}


def schema() -> dict:
    """The whole values.schema.json: the hand-written part with the derived one merged in."""
    found = copy.deepcopy(HAND_WRITTEN)
    derived = section_schema(K8sOptions)
    properties = derived["properties"]
    for field_name, (section, key) in MOVED.items():
        moved = found["properties"][section]
        moved["properties"][key] = properties.pop(camel(field_name))
        moved["required"].append(key)
        derived["required"].remove(camel(field_name))
    storage = properties["storage"]["properties"]
    storage.update(copy.deepcopy(SAMPLE_STORAGE))
    storage.update({old: dict(storage[new]) for old, new in SAMPLE_ALIASES.items()})
    found["properties"].update(properties)
    found["required"] = derived["required"]
    return found


def section_schema(cls: type, prefix: str = "", in_list: bool = False) -> dict:
    """An options dataclass as a closed object of its values keys."""
    hints = typing.get_type_hints(cls)
    rules = getattr(cls, "RULES", {})
    properties = {}
    for f in value_fields(cls, prefix):
        properties[camel(f.name)] = field_schema(hints[f.name], rules.get(f.name), prefix + f.name)
    found: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if not in_list:  # a list item may leave keys out; a section's keys are all in values.yaml
        found["required"] = list(properties)
    found["properties"] = properties
    return found


def field_schema(hint: Any, rule: tuple | None, key: str) -> dict:
    found = type_schema(hint, key)
    if rule is not None:
        check, accepted = rule
        if isinstance(check, Syntax):
            if check.numbers:
                found["type"] = [found["type"], "number"]
            for name, value in check.schema().items():
                found[name] = {**found.get(name, {}), **value} if name == "items" else value
        found["description"] = accepted
    return found


def type_schema(hint: Any, key: str) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return section_schema(hint, key + ".")
    if origin is list and dataclasses.is_dataclass(args[0]):
        return {"type": "array", "items": section_schema(args[0], key + ".", in_list=True)}
    if origin is list:
        return {"type": "array", "items": type_schema(args[0], key)}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1], key)}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):  # `X | None`: None is "not set", left out
        (inner,) = [a for a in args if a is not type(None)]
        return type_schema(inner, key)
    if hint in SCALARS:
        return {"type": SCALARS[hint]}
    raise TypeError(f"{key}: no JSON Schema for {hint!r}")


def schema_text() -> str:
    return json.dumps(schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    """Write the schema; with --check, only say whether the committed one is current."""
    if "--check" in argv:
        if SCHEMA_PATH.read_text() == schema_text():
            return 0
        print(f"{SCHEMA_PATH} is stale: run `make charts`", file=sys.stderr)
        return 1
    SCHEMA_PATH.write_text(schema_text())
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
