"""Decoding the Kubernetes protobuf request bodies helm sends, into the JSON form.

Helm's release storage writes its Secrets with a typed client that sends
`application/vnd.kubernetes.protobuf` (and accepts JSON back), and no client falls back to
JSON on 415. So the server reads the few kinds that arrive this way: Secret and ConfigMap
(release storage) and DeleteOptions (uninstall). Field numbers are those of Kubernetes'
`generated.proto` files; the envelope is the `k8s\\0` magic + `runtime.Unknown`.
"""

from __future__ import annotations

import base64
import datetime

MAGIC = b"k8s\x00"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited fields."""
    out, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _text(value: bytes) -> str:
    return value.decode()


def _map_entry(value: bytes) -> tuple[str, bytes]:
    entry = dict(fields(value))
    return _text(entry.get(1, b"")), entry.get(2, b"")


def _time(value: bytes) -> str:
    seconds = dict(fields(value)).get(1, 0)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_reference(value: bytes) -> dict:
    names = {
        1: "kind",
        3: "name",
        4: "uid",
        5: "apiVersion",
        6: "controller",
        7: "blockOwnerDeletion",
    }
    ref: dict = {}
    for number, raw in fields(value):
        if number in (6, 7):
            ref[names[number]] = bool(raw)
        elif number in names:
            ref[names[number]] = _text(raw)
    return ref


def object_meta(data: bytes) -> dict:
    strings = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    meta: dict = {}
    for number, value in fields(data):
        if number in strings:
            meta[strings[number]] = _text(value)
        elif number == 7:
            meta["generation"] = value
        elif number == 8:
            meta["creationTimestamp"] = _time(value)
        elif number in (11, 12):
            key, raw = _map_entry(value)
            meta.setdefault("labels" if number == 11 else "annotations", {})[key] = _text(raw)
        elif number == 13:
            meta.setdefault("ownerReferences", []).append(_owner_reference(value))
        elif number == 14:
            meta.setdefault("finalizers", []).append(_text(value))
    meta.pop("creationTimestamp", None) if meta.get("creationTimestamp", "").startswith(
        "1970"
    ) else None
    return meta


def _secret(data: bytes) -> dict:
    obj: dict = {"apiVersion": "v1", "kind": "Secret"}
    for number, value in fields(data):
        if number == 1:
            obj["metadata"] = object_meta(value)
        elif number == 2:
            key, raw = _map_entry(value)
            obj.setdefault("data", {})[key] = base64.b64encode(raw).decode()
        elif number == 3:
            obj["type"] = _text(value)
        elif number == 4:
            key, raw = _map_entry(value)
            obj.setdefault("stringData", {})[key] = _text(raw)
        elif number == 5:
            obj["immutable"] = bool(value)
    return obj


def _config_map(data: bytes) -> dict:
    obj: dict = {"apiVersion": "v1", "kind": "ConfigMap"}
    for number, value in fields(data):
        if number == 1:
            obj["metadata"] = object_meta(value)
        elif number in (2, 3):
            key, raw = _map_entry(value)
            if number == 2:
                obj.setdefault("data", {})[key] = _text(raw)
            else:
                obj.setdefault("binaryData", {})[key] = base64.b64encode(raw).decode()
        elif number == 4:
            obj["immutable"] = bool(value)
    return obj


def _delete_options(data: bytes) -> dict:
    options: dict = {"kind": "DeleteOptions", "apiVersion": "v1"}
    for number, value in fields(data):
        if number == 1:
            options["gracePeriodSeconds"] = value
        elif number == 3:
            options["orphanDependents"] = bool(value)
        elif number == 4:
            options["propagationPolicy"] = _text(value)
        elif number == 5:
            options.setdefault("dryRun", []).append(_text(value))
    return options


DECODERS = {"Secret": _secret, "ConfigMap": _config_map, "DeleteOptions": _delete_options}


def decode(body: bytes) -> dict:
    """The JSON form of a protobuf-encoded request body; ValueError for kinds not handled."""
    if not body.startswith(MAGIC):
        raise ValueError("not a Kubernetes protobuf body (no k8s\\0 magic)")
    envelope = dict(fields(body[len(MAGIC) :]))
    type_meta = dict(fields(envelope.get(1, b"")))
    kind = _text(type_meta.get(2, b""))
    if kind not in DECODERS:
        raise ValueError(
            f"protobuf bodies of kind {kind!r} are not supported (only "
            f"{sorted(DECODERS)}); send JSON"
        )
    return DECODERS[kind](envelope.get(2, b""))
