"""Strict validation of every object written to the test API server.

The schema half is `kubernetes-validate` in strict mode (unknown fields, wrong types and
missing required fields are rejected) against the Kubernetes version the server reports.
The other half is the handful of semantic rules a real API server adds and that the
schema cannot express, for the fields our launchers set: DNS names, label syntax, the
restart policies a Job accepts, an Indexed Job's completions.
"""

from __future__ import annotations

import re

import kubernetes_validate

from .resources import KUBERNETES_VERSION, Resource
from .store import ApiError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def invalid(res: Resource, name: str, field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'{res.kind} "{name}" is invalid: {field}: {message}',
        {
            "name": name,
            "group": res.group,
            "kind": res.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}],
        },
    )


def validate(res: Resource, obj: dict) -> None:
    name = (obj.get("metadata") or {}).get("name", "")
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        field = ".".join(str(p) for p in error.path) or "<root>"
        raise invalid(res, name, field, error.message) from None
    except kubernetes_validate.SchemaNotFoundError:
        pass  # types without a published schema are stored as they come
    _check_metadata(res, obj)
    checks = {"Job": _check_job, "Service": _check_service, "Pod": _check_pod}
    if res.kind in checks:
        checks[res.kind](res, obj)


def _check_metadata(res: Resource, obj: dict) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    pattern, limit = (DNS_1035_LABEL, 63) if res.kind == "Service" else (DNS_SUBDOMAIN, 253)
    if res.kind in ("Namespace", "Job"):
        pattern, limit = DNS_LABEL, 63
    if name and (not pattern.match(name) or len(name) > limit):
        raise invalid(
            res,
            name,
            "metadata.name",
            f"Invalid value: {name!r}: must be a lowercase RFC 1123 name of at most "
            f"{limit} characters",
        )
    for key, value in (meta.get("labels") or {}).items():
        bare = key.split("/")[-1]
        if not LABEL_NAME.match(bare) or len(bare) > 63:
            raise invalid(
                res,
                name,
                "metadata.labels",
                f"Invalid value: {key!r}: name part "
                "must be at most 63 alphanumeric characters, '-', '_' or '.'",
            )
        if not isinstance(value, str) or not LABEL_VALUE.match(value) or len(value) > 63:
            raise invalid(
                res,
                name,
                "metadata.labels",
                f"Invalid value: {value!r}: a label value "
                "must be at most 63 alphanumeric characters, '-', '_' or '.'",
            )


def _check_pod_spec(res: Resource, name: str, spec: dict, field: str) -> None:
    for key in ("hostname", "subdomain"):
        value = spec.get(key)
        if value and (not DNS_LABEL.match(value) or len(value) > 63):
            raise invalid(
                res,
                name,
                f"{field}.{key}",
                f"Invalid value: {value!r}: must be a DNS label (at most 63 characters)",
            )
    seen = set()
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if container["name"] in seen:
            raise invalid(
                res, name, f"{field}.containers", f"Duplicate value: {container['name']!r}"
            )
        seen.add(container["name"])
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for container in spec.get("containers", []):
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                raise invalid(
                    res,
                    name,
                    f"{field}.containers.volumeMounts.name",
                    f"Not found: {mount['name']!r}",
                )


def _check_pod(res: Resource, obj: dict) -> None:
    _check_pod_spec(res, obj["metadata"].get("name", ""), obj.get("spec", {}), "spec")


def _check_job(res: Resource, obj: dict) -> None:
    name, spec = obj["metadata"].get("name", ""), obj.get("spec", {})
    pod_spec = spec.get("template", {}).get("spec", {})
    policy = pod_spec.get("restartPolicy", "Always")
    if policy not in ("Never", "OnFailure"):
        raise invalid(
            res,
            name,
            "spec.template.spec.restartPolicy",
            f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
        )
    if spec.get("podFailurePolicy") and policy != "Never":  # a restart in place hides exits
        raise invalid(
            res,
            name,
            "spec.template.spec.restartPolicy",
            f'Unsupported value: "{policy}": supported values: "Never" (with podFailurePolicy)',
        )
    if spec.get("completionMode") == "Indexed" and spec.get("completions") is None:
        raise invalid(
            res, name, "spec.completions", "Required value: when completion mode is Indexed"
        )
    _check_pod_spec(res, name, pod_spec, "spec.template.spec")


def _check_service(res: Resource, obj: dict) -> None:
    name = obj["metadata"].get("name", "")
    ports = obj.get("spec", {}).get("ports", [])
    if len(ports) > 1 and any(not p.get("name") for p in ports):
        raise invalid(res, name, "spec.ports.name", "Required value: when there are several ports")
