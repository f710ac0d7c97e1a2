"""The syntax the Kubernetes API server demands of the values a config passes through to it.

Checked when the config loads, so a typo fails with the key that holds it, before anything
is sent, instead of as a 422 from the server (or never, for a dry run applied later).
Rules as in k8s.io/apimachinery: resource.Quantity, validation.IsQualifiedName and
IsValidLabelValue.
"""

from __future__ import annotations

import re

# "500m", "2", "1.5Gi", "1e3": a number and an optional SI, binary or exponent suffix. No
# sign: a request or a size limit is never negative.
_QUANTITY = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?")
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # RFC 1035
_RFC1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

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
    return bool(_QUANTITY.fullmatch(text))


def is_service_name(name: str) -> bool:
    """A Service's name (the job's, which names its headless Service): an RFC 1035 label."""
    return len(name) <= 63 and bool(_DNS_LABEL.fullmatch(name))


def is_namespace(name: str) -> bool:
    """An RFC 1123 label: unlike a Service's name, it may start with a digit."""
    return len(name) <= 63 and bool(_RFC1123_LABEL.fullmatch(name))


def are_object_names(names: list[str]) -> bool:
    """Names of objects such as Secrets: DNS subdomains (lower-case, '-', '.')."""
    return all(len(n) <= 253 and _DNS_SUBDOMAIN.fullmatch(n) for n in names)


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
