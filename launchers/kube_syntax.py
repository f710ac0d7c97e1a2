"""The syntax the Kubernetes API server demands of the values a config passes through to it.

Checked when the config loads, so a typo fails with the key that holds it, before anything
is sent, instead of as a 422 from the server (or never, for a dry run applied later).
Rules as in k8s.io/apimachinery: resource.Quantity, validation.IsQualifiedName and
IsValidLabelValue.

A rule that JSON Schema can state too is a `Syntax` (a regex, a length, integer bounds):
the same object checks a config value here and becomes that value's schema in the charts'
values.schema.json (launchers/chart_schema.py), so the two cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# "500m", "2", "1.5Gi", "1e3": a number and an optional SI, binary or exponent suffix. No
# sign: a request or a size limit is never negative.
QUANTITY_PATTERN = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?"
DNS_SUBDOMAIN_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # RFC 1035
_RFC1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)


@dataclass(frozen=True)
class Syntax:
    """A rule's test that JSON Schema can say as well: a whole-value regex, a maximum
    length, integer bounds; `each`: of every item of a list. `numbers`: YAML may write the
    value as a number (`cpu: 2`), which the API server takes as well (a config reads it as
    a string; a values file keeps the number)."""

    pattern: str | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    each: bool = False
    numbers: bool = False

    def __call__(self, value: Any) -> bool:
        if self.each:
            return all(map(self._accepts, value))
        return self._accepts(value)

    def _accepts(self, value: Any) -> bool:
        if self.pattern is not None and not re.fullmatch(self.pattern, value, re.ASCII):
            return False
        if self.max_length is not None and len(value) > self.max_length:
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return self.maximum is None or value <= self.maximum

    def schema(self) -> dict:
        """This check in JSON Schema (draft 7), for the value or, with `each`, its items."""
        found: dict[str, Any] = {}
        if self.pattern is not None:
            found["pattern"] = f"^({self.pattern})$"
        if self.max_length is not None:
            found["maxLength"] = self.max_length
        if self.minimum is not None:
            found["minimum"] = self.minimum
        if self.maximum is not None:
            found["maximum"] = self.maximum
        return {"items": found} if self.each else found


QUANTITY = Syntax(QUANTITY_PATTERN, numbers=True)
OBJECT_NAMES = Syntax(DNS_SUBDOMAIN_PATTERN, max_length=253, each=True)

QUANTITY_ACCEPTED = "a Kubernetes quantity, e.g. 500m, 2, 1.5Gi, 512Mi"
LABELS_ACCEPTED = (
    "label names ([prefix/]name: letters, digits, '-', '_', '.', at most 63 characters) "
    "mapped to label values (the same characters, at most 63, or empty)"
)
TOLERATIONS_ACCEPTED = (
    "tolerations whose key is a label name (empty only with operator Exists) and whose "
    "value is a label value (empty with operator Exists)"
)


def is_quantity(text: str) -> bool:
    return QUANTITY(text)


def is_service_name(name: str) -> bool:
    """A Service's name (the job's, which names its headless Service): an RFC 1035 label."""
    return len(name) <= 63 and bool(_DNS_LABEL.fullmatch(name))


def is_namespace(name: str) -> bool:
    """An RFC 1123 label: unlike a Service's name, it may start with a digit."""
    return len(name) <= 63 and bool(_RFC1123_LABEL.fullmatch(name))


NAMESPACE_ACCEPTED = (
    "a DNS label (lower-case letters, digits and '-', at most 63 characters, not starting "
    "or ending with '-')"
)


def is_label_name(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and bool(_NAME.fullmatch(name))


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_NAME.fullmatch(value)))


def are_labels(labels: dict[str, str]) -> bool:
    return all(is_label_name(k) and is_label_value(v) for k, v in labels.items())


def are_tolerations(tolerations: list) -> bool:
    """Each toleration as the API server accepts it (its operator and effect are typed)."""
    for toleration in tolerations:
        if toleration.operator == "Exists":
            if toleration.value or (toleration.key and not is_label_name(toleration.key)):
                return False
        elif not (is_label_name(toleration.key) and is_label_value(toleration.value)):
            return False
    return True
