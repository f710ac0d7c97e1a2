"""The object store behind the test API server: objects, resourceVersions, selectors, watches.

One lock guards everything; every change gets the next resourceVersion and is appended to
an event history that watches replay from any resourceVersion. Controllers (in-process)
call the store directly; the HTTP layer calls it for clients.
"""

from __future__ import annotations

import copy
import datetime
import re
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .resources import Resource


class ApiError(Exception):
    """An error the API server returns as a Kubernetes `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(res)} "{name}" not found',
        {"name": name, "group": res.group, "kind": res.plural},
    )


def _qualified(res: Resource) -> str:
    return f"{res.plural}.{res.group}" if res.group else res.plural


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- selectors -------------------------------------------------------------------------

_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside `in (a,b)` parentheses."""
    terms, depth, current = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    return [t for t in [*terms, current] if t.strip()]


def label_matcher(selector: str | None) -> Callable[[dict], bool]:
    """A predicate over labels, from a labelSelector string (=, ==, !=, in, notin, exists)."""
    checks: list[Callable[[dict], bool]] = []
    for term in _split_terms(selector or ""):
        set_term = _SET_TERM.match(term)
        if set_term:
            key, op, values = set_term.groups()
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            if op == "in":
                checks.append(lambda labels, k=key, a=allowed: labels.get(k) in a)
            else:
                checks.append(lambda labels, k=key, a=allowed: labels.get(k) not in a)
        elif "!=" in term:
            key, value = (p.strip() for p in term.split("!=", 1))
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = (p.strip() for p in term.replace("==", "=").split("=", 1))
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.strip().startswith("!"):
            absent = term.strip()[1:]
            checks.append(lambda labels, k=absent: k not in labels)
        else:
            present = term.strip()
            checks.append(lambda labels, k=present: k in labels)
    return lambda labels: all(check(labels or {}) for check in checks)


def selector_matches(selector: dict | None, labels: dict | None) -> bool:
    """A LabelSelector object (matchLabels + matchExpressions) against labels."""
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def field_matcher(selector: str | None) -> Callable[[dict], bool]:
    """fieldSelector terms over dotted paths (metadata.name=x, status.phase!=Running)."""
    checks = []
    for term in _split_terms(selector or ""):
        negate = "!=" in term
        path, value = (p.strip() for p in term.replace("==", "=").split("!=" if negate else "=", 1))
        checks.append((path.split("."), value, negate))

    def matches(obj: dict) -> bool:
        for path, value, negate in checks:
            found: object = obj
            for part in path:
                found = found.get(part) if isinstance(found, dict) else None
            if ((str(found) if found is not None else "") == value) == negate:
                return False
        return True

    return matches


# ---- the store -------------------------------------------------------------------------


@dataclass
class Event:
    resource_version: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: Resource
    obj: dict


class Store:
    def __init__(self, defaults: Callable[[Resource, dict], None] = lambda res, obj: None):
        """`defaults(res, obj)` fills in what a real API server defaults, once uid is set."""
        self.defaults = defaults
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[tuple[str, str, str], dict] = {}  # (res.key, namespace, name)
        self.history: list[Event] = []
        self.revision = 1
        self.closed = False

    # -- reads
    def get(self, res: Resource, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.objects.get((res.key, namespace, name))
            if obj is None:
                raise not_found(res, name)
            return copy.deepcopy(obj)

    def find(self, res: Resource, namespace: str, name: str) -> dict | None:
        try:
            return self.get(res, namespace, name)
        except ApiError:
            return None

    def list(
        self,
        res: Resource,
        namespace: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> tuple[list[dict], int]:
        label_ok, field_ok = label_matcher(labels), field_matcher(fields)
        with self.lock:
            items = [
                copy.deepcopy(o)
                for (key, ns, _), o in sorted(self.objects.items())
                if key == res.key
                and (namespace is None or ns == namespace)
                and label_ok(o["metadata"].get("labels"))
                and field_ok(o)
            ]
            return items, self.revision

    # -- writes
    def create(self, res: Resource, namespace: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        with self.lock:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(
                    422,
                    "Invalid",
                    f"{res.kind} is invalid: metadata.name: Required value",
                    {"kind": res.kind, "causes": [{"field": "metadata.name"}]},
                )
            if res.namespaced:
                meta["namespace"] = namespace
                if ("namespaces", "", namespace) not in self.objects:
                    raise ApiError(
                        404,
                        "NotFound",
                        f'namespaces "{namespace}" not found',
                        {"name": namespace, "kind": "namespaces"},
                    )
            key = (res.key, namespace if res.namespaced else "", name)
            if key in self.objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{_qualified(res)} "{name}" already exists',
                    {"name": name, "group": res.group, "kind": res.plural},
                )
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            self.defaults(res, obj)
            for server_set in ("deletionTimestamp", "resourceVersion"):
                meta.pop(server_set, None)
            self._commit("ADDED", res, key, obj)
            return copy.deepcopy(obj)

    def replace(self, res: Resource, obj: dict, subresource: str | None = None) -> dict:
        """An update (PUT): status only through the status subresource, spec only without."""
        meta = obj.get("metadata") or {}
        with self.lock:
            key = (res.key, meta.get("namespace", "") if res.namespaced else "", meta.get("name"))
            current = self.objects.get(key)
            if current is None:
                raise not_found(res, meta.get("name", ""))
            asked = meta.get("resourceVersion")
            if asked and asked != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {_qualified(res)} "{key[2]}": '
                    "the object has been modified; please apply your changes to the "
                    "latest version and try again",
                    {"name": key[2], "group": res.group, "kind": res.plural},
                )
            updated = copy.deepcopy(current)
            if subresource == "status":
                updated["status"] = copy.deepcopy(obj.get("status", {}))
            else:
                updated = copy.deepcopy(obj)
                updated["apiVersion"], updated["kind"] = res.api_version, res.kind
                if "status" in current or "status" in updated:
                    updated["status"] = copy.deepcopy(current.get("status", {}))
                for server_set in (
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                    "namespace",
                ):
                    if server_set in current["metadata"]:
                        updated["metadata"][server_set] = current["metadata"][server_set]
                if _spec_of(updated) != _spec_of(current):
                    updated["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
            if updated == current:
                return copy.deepcopy(current)
            if updated["metadata"].get("deletionTimestamp") and not updated["metadata"].get(
                "finalizers"
            ):
                self.remove(res, key[1], key[2])
                return updated
            self._commit("MODIFIED", res, key, updated)
            return copy.deepcopy(updated)

    def mutate(
        self,
        res: Resource,
        namespace: str,
        name: str,
        change: Callable[[dict], None],
        subresource: str | None = None,
    ) -> dict:
        """Read-modify-write under the lock (controllers use this; no conflicts possible)."""
        with self.lock:
            obj = self.get(res, namespace, name)
            change(obj)
            obj["metadata"].pop("resourceVersion", None)
            return self.replace(res, obj, subresource)

    def mark_deleted(self, res: Resource, namespace: str, name: str, **extra: object) -> dict:
        """Set deletionTimestamp (finalizers or a graceful pod deletion keep the object)."""

        def stamp(obj: dict) -> None:
            obj["metadata"].setdefault("deletionTimestamp", now())
            obj["metadata"].update(extra)

        with self.lock:
            obj = self.get(res, namespace, name)
            stamp(obj)
            key = (res.key, namespace if res.namespaced else "", name)
            self._commit("MODIFIED", res, key, obj)
            return copy.deepcopy(obj)

    def remove(self, res: Resource, namespace: str, name: str) -> dict:
        with self.lock:
            key = (res.key, namespace if res.namespaced else "", name)
            obj = self.objects.get(key)
            if obj is None:
                raise not_found(res, name)
            del self.objects[key]
            gone = copy.deepcopy(obj)
            self._commit("DELETED", res, None, gone)
            return gone

    def _commit(self, kind: str, res: Resource, key: tuple | None, obj: dict) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        if key is not None:
            self.objects[key] = obj
        self.history.append(Event(self.revision, kind, res, copy.deepcopy(obj)))
        self.changed.notify_all()

    # -- watches
    def events_since(
        self,
        revision: int,
        res: Resource,
        namespace: str | None,
        labels: str | None,
        fields: str | None,
        timeout: float,
        stop: Callable[[], bool],
    ) -> Iterator[Event | None]:
        """Events after `revision` that match; yields None on idle ticks (for keep-alive)."""
        label_ok, field_ok = label_matcher(labels), field_matcher(fields)
        deadline = _monotonic() + timeout
        position = _first_after(self.history, revision)
        while not self.closed and not stop() and _monotonic() < deadline:
            with self.lock:
                batch = self.history[position:]
                position = len(self.history)
                if not batch:
                    self.changed.wait(min(1.0, max(0.0, deadline - _monotonic())))
            for event in batch:
                ns = event.obj["metadata"].get("namespace")
                if (
                    event.resource.key == res.key
                    and (namespace is None or ns == namespace)
                    and label_ok(event.obj["metadata"].get("labels"))
                    and field_ok(event.obj)
                ):
                    yield event
            if not batch:
                yield None

    def wake(self) -> None:
        with self.lock:
            self.changed.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()


def run_control_loop(store: Store, reconcile: Callable[[], None]) -> None:
    """Call `reconcile()` after every change, and at least twice a second (level-triggered)."""
    seen = -1
    while not store.closed:
        with store.lock:
            if store.revision == seen:
                store.changed.wait(0.5)
            seen = store.revision
        try:
            reconcile()
        except ApiError:
            pass  # raced with a client; the next pass sees the new state
        except Exception:
            traceback.print_exc()  # a bug in the test cluster: loud, but keep the cluster up


def _first_after(history: list[Event], revision: int) -> int:
    lo, hi = 0, len(history)
    while lo < hi:
        mid = (lo + hi) // 2
        if history[mid].resource_version <= revision:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _spec_of(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _monotonic() -> float:
    import time

    return time.monotonic()
