"""The PATCH flavours clients send: JSON merge patch, strategic merge patch, JSON patch, apply.

Strategic merge covers what kubectl and helm produce for the built-in types: lists of
objects merged by their merge key (`name` for containers, env, volumes, ports...), the
`$patch: delete|replace` and `$retainKeys` directives, and `$setElementOrder` (ignored:
order is kept). Server-side apply is simplified to "the applied configuration is the
object" (one manager owns all its fields; no conflict detection).
"""

from __future__ import annotations

import copy
import json

import yaml

from .store import ApiError

# Merge keys of the lists of objects in the built-in types we serve.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "tolerations": None,
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "secrets": "name",
}
# Service ports merge by port, not containerPort.
SERVICE_PORT_KEY = "port"


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(
    target: object, patch: object, field: str = "", in_service: bool = False
) -> object:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [v for v in result.get(name, []) if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, key, in_service)
        else:
            result[key] = strategic_merge_patch(result.get(key), value, key, in_service)
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(current: list | None, patch: list, field: str, in_service: bool) -> list:
    merge_key = SERVICE_PORT_KEY if (field == "ports" and in_service) else MERGE_KEYS.get(field)
    if not merge_key or not all(isinstance(item, dict) for item in patch):
        if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
            return [i for i in patch if not (isinstance(i, dict) and "$patch" in i)]
        return copy.deepcopy(patch)
    merged = [copy.deepcopy(item) for item in current or []]
    for item in patch:
        position = next(
            (i for i, old in enumerate(merged) if old.get(merge_key) == item.get(merge_key)), None
        )
        if item.get("$patch") == "delete":
            if position is not None:
                merged.pop(position)
        elif position is None:
            merged.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            merged[position] = strategic_merge_patch(merged[position], item, field, in_service)
    return merged


def json_patch(target: dict, operations: list) -> dict:
    """RFC 6902."""
    doc = copy.deepcopy(target)
    for op in operations:
        kind, path = op["op"], _pointer(op["path"])
        if kind == "test":
            if _get(doc, path) != op["value"]:
                raise ApiError(422, "Invalid", f"json patch test failed at {op['path']}")
        elif kind == "remove":
            _remove(doc, path)
        elif kind in ("add", "replace"):
            if kind == "replace":
                _remove(doc, path)
            _add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = _pointer(op["from"])
            value = copy.deepcopy(_get(doc, source))
            if kind == "move":
                _remove(doc, source)
            _add(doc, path, value)
    return doc


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _get(doc: object, path: list[str]) -> object:
    for part in path:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _add(doc: object, path: list[str], value: object) -> None:
    parent = _get(doc, path[:-1])
    if isinstance(parent, list):
        parent.insert(len(parent) if path[-1] == "-" else int(path[-1]), value)
    else:
        parent[path[-1]] = value


def _remove(doc: object, path: list[str]) -> None:
    parent = _get(doc, path[:-1])
    if isinstance(parent, list):
        parent.pop(int(path[-1]))
    else:
        parent.pop(path[-1], None)


def apply_patch(current: dict | None, applied: dict) -> dict:
    """Server-side apply, simplified: the applied configuration replaces what it names.

    Server-set metadata (uid, creationTimestamp, resourceVersion...) and status stay; labels
    and annotations set by others stay unless the applied configuration names them too.
    """
    if current is None:
        return copy.deepcopy(applied)
    result = {k: copy.deepcopy(v) for k, v in applied.items() if k != "metadata"}
    meta = copy.deepcopy(current["metadata"])
    for key, value in (applied.get("metadata") or {}).items():
        if key in ("labels", "annotations"):
            meta[key] = {**(meta.get(key) or {}), **value}
        elif key not in ("uid", "creationTimestamp", "resourceVersion", "generation"):
            meta[key] = copy.deepcopy(value)
    result["metadata"] = meta
    if "status" in current:
        result["status"] = copy.deepcopy(current["status"])
    return result


def apply_content_type(
    content_type: str, current: dict | None, body: bytes, in_service: bool = False
) -> dict:
    """The patched object for a PATCH body of the given Content-Type."""
    kind = content_type.split(";")[0].strip()
    try:
        if kind == "application/apply-patch+yaml":
            return apply_patch(current, yaml.safe_load(body) or {})
        patch = json.loads(body)
    except (ValueError, yaml.YAMLError) as error:
        raise ApiError(
            400, "BadRequest", f"the body of the request was in an unknown format: {error}"
        ) from error
    if current is None:
        raise ApiError(500, "InternalError", "patch of a missing object")
    if kind == "application/merge-patch+json":
        return merge_patch(current, patch)
    if kind == "application/strategic-merge-patch+json":
        return strategic_merge_patch(current, patch, in_service=in_service)
    if kind == "application/json-patch+json":
        return json_patch(current, patch)
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the server does not support the media type {content_type!r} for PATCH",
    )
