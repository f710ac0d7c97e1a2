"""Deletion as the API server and the garbage collector do it.

* `propagationPolicy`: Orphan removes the owner reference from dependents; Background
  removes the object now and the collector deletes dependents afterwards; Foreground keeps
  the object (deletionTimestamp + `foregroundDeletion` finalizer) until its dependents are
  gone. Without a policy, batch/v1 Jobs orphan their pods (as a real API server does for
  backwards compatibility); everything else is Background.
* A pod that is still running is deleted gracefully: it gets a deletionTimestamp, the
  kubelet stops its containers, then removes it.
* A namespace deletes everything in it, then itself.
"""

from __future__ import annotations

import threading

from .resources import BY_KIND, RESOURCES, Resource
from .store import ApiError, Store, run_control_loop

NAMESPACES = BY_KIND[("v1", "Namespace")]
PODS = BY_KIND[("v1", "Pod")]
FOREGROUND = "foregroundDeletion"


def default_propagation(res: Resource) -> str:
    return "Orphan" if res.kind == "Job" else "Background"


def delete(
    store: Store,
    res: Resource,
    namespace: str,
    name: str,
    propagation: str | None = None,
    grace_seconds: int | None = None,
) -> dict:
    propagation = propagation or default_propagation(res)
    if propagation not in ("Orphan", "Background", "Foreground"):
        raise ApiError(
            422,
            "Invalid",
            f"propagationPolicy: Unsupported value: {propagation!r}: "
            'supported values: "Orphan", "Background", "Foreground"',
        )
    with store.lock:
        obj = store.get(res, namespace, name)
        if obj["metadata"].get("deletionTimestamp") and grace_seconds != 0:
            return obj
        if res.kind == "Namespace":
            store.mutate(
                res,
                "",
                name,
                lambda o: o.setdefault("status", {}).update(phase="Terminating"),
                "status",
            )
            return store.mark_deleted(res, "", name)
        if propagation == "Orphan":
            _orphan_dependents(store, obj["metadata"]["uid"])
        if propagation == "Foreground":
            return _start_foreground(store, res, namespace, name)
        if res is PODS and _pod_is_active(obj) and grace_seconds != 0:
            grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            grace = grace if grace_seconds is None else grace_seconds
            return store.mark_deleted(res, namespace, name, deletionGracePeriodSeconds=grace)
        if obj["metadata"].get("finalizers"):
            return store.mark_deleted(res, namespace, name)
        return store.remove(res, namespace, name)


def _pod_is_active(pod: dict) -> bool:
    return bool(pod["spec"].get("nodeName")) and pod.get("status", {}).get("phase") in (
        None,
        "Pending",
        "Running",
    )


def _orphan_dependents(store: Store, owner_uid: str) -> None:
    for res in RESOURCES:
        for dependent in store.list(res)[0]:
            refs = dependent["metadata"].get("ownerReferences") or []
            if any(ref["uid"] == owner_uid for ref in refs):

                def drop(o: dict, uid: str = owner_uid) -> None:
                    kept = [r for r in o["metadata"]["ownerReferences"] if r["uid"] != uid]
                    if kept:
                        o["metadata"]["ownerReferences"] = kept
                    else:
                        o["metadata"].pop("ownerReferences")

                meta = dependent["metadata"]
                store.mutate(res, meta.get("namespace", ""), meta["name"], drop)


def _start_foreground(store: Store, res: Resource, namespace: str, name: str) -> dict:
    def add_finalizer(o: dict) -> None:
        finalizers = o["metadata"].setdefault("finalizers", [])
        if FOREGROUND not in finalizers:
            finalizers.append(FOREGROUND)

    store.mutate(res, namespace, name, add_finalizer)
    return store.mark_deleted(res, namespace, name)


class GarbageCollector:
    """Deletes dependents whose owners are gone or being deleted in the foreground, finishes
    foreground deletions, and empties terminating namespaces."""

    def __init__(self, store: Store):
        self.store = store
        self.thread = threading.Thread(target=self._run, name="garbage-collector", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        run_control_loop(self.store, self.collect)

    def collect(self) -> None:
        everything = [(res, obj) for res in RESOURCES for obj in self.store.list(res)[0]]
        alive = {o["metadata"]["uid"]: o for _, o in everything}
        foreground = {
            uid
            for uid, o in alive.items()
            if FOREGROUND in (o["metadata"].get("finalizers") or [])
            and o["metadata"].get("deletionTimestamp")
        }
        terminating = {
            o["metadata"]["name"]
            for res, o in everything
            if res is NAMESPACES and o["metadata"].get("deletionTimestamp")
        }
        owners_with_dependents: set[str] = set()
        for res, obj in everything:
            meta = obj["metadata"]
            owners = [r["uid"] for r in meta.get("ownerReferences") or []]
            owners_with_dependents.update(owners)
            in_dying_namespace = res.namespaced and meta.get("namespace") in terminating
            orphaned = owners and all(uid not in alive or uid in foreground for uid in owners)
            if (orphaned or in_dying_namespace) and not meta.get("deletionTimestamp"):
                policy = "Foreground" if any(uid in foreground for uid in owners) else "Background"
                delete(self.store, res, meta.get("namespace", ""), meta["name"], policy)
        for res, obj in everything:
            meta = obj["metadata"]
            if meta["uid"] in foreground and meta["uid"] not in owners_with_dependents:
                self.store.mutate(res, meta.get("namespace", ""), meta["name"], _drop_foreground)
            if res is NAMESPACES and meta["name"] in terminating:
                if not any(
                    o["metadata"].get("namespace") == meta["name"]
                    for r, o in everything
                    if r.namespaced
                ):
                    self.store.remove(res, "", meta["name"])


def _drop_foreground(obj: dict) -> None:
    obj["metadata"]["finalizers"] = [f for f in obj["metadata"]["finalizers"] if f != FOREGROUND]
