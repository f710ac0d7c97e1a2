"""Deployment and ReplicaSet controllers (apps/v1), for evaluator and TensorBoard Deployments.

A Deployment owns one ReplicaSet per pod template (`<name>-<template hash>`); a template
change scales the old ReplicaSets to zero (as a Recreate rollout would). A ReplicaSet keeps
`replicas` active pods. Status carries what `kubectl rollout status` and helm's readiness
checks read: observedGeneration, replicas, updated/ready/available replicas, conditions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import uuid

from . import garbage
from .resources import BY_KIND
from .store import Store, now, run_control_loop

DEPLOYMENTS = BY_KIND[("apps/v1", "Deployment")]
REPLICASETS = BY_KIND[("apps/v1", "ReplicaSet")]
PODS = BY_KIND[("v1", "Pod")]
HASH_LABEL = "pod-template-hash"


def _owner(obj: dict) -> dict:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owned(obj: dict, owner_uid: str) -> bool:
    return any(r["uid"] == owner_uid for r in obj["metadata"].get("ownerReferences") or [])


def _active(pod: dict) -> bool:
    return pod["status"].get("phase") in ("Pending", "Running") and not pod["metadata"].get(
        "deletionTimestamp"
    )


def _ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


class DeploymentController:
    def __init__(self, store: Store, create):
        """`create(resource, namespace, obj)` goes through the API server (validated)."""
        self.store, self.create = store, create
        self.thread = threading.Thread(target=self._loop, name="deployments", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        run_control_loop(self.store, self.sync_all)

    def sync_all(self) -> None:
        for deployment in self.store.list(DEPLOYMENTS)[0]:
            self.sync_deployment(deployment)
        for replica_set in self.store.list(REPLICASETS)[0]:
            self.sync_replica_set(replica_set)

    def sync_deployment(self, deployment: dict) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        if meta.get("deletionTimestamp"):
            return
        namespace = meta["namespace"]
        template_hash = hashlib.sha256(
            json.dumps(spec["template"], sort_keys=True).encode()
        ).hexdigest()[:10]
        owned = [rs for rs in self.store.list(REPLICASETS, namespace)[0] if _owned(rs, meta["uid"])]
        current = next(
            (rs for rs in owned if rs["metadata"]["labels"].get(HASH_LABEL) == template_hash), None
        )
        if current is None:
            current = self._new_replica_set(deployment, template_hash)
        for rs in owned:
            wanted = spec.get("replicas", 1) if rs is current else 0
            if rs["spec"].get("replicas") != wanted:
                self.store.mutate(
                    REPLICASETS,
                    namespace,
                    rs["metadata"]["name"],
                    lambda o, n=wanted: o["spec"].update(replicas=n),
                )
        pods = [
            p
            for p in self.store.list(PODS, namespace)[0]
            if _active(p) and any(_owned(p, rs["metadata"]["uid"]) for rs in owned)
        ]
        updated = [p for p in pods if _owned(p, current["metadata"]["uid"])]
        ready = [p for p in updated if _ready(p)]
        available = len(ready) >= spec.get("replicas", 1)
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(pods),
            "updatedReplicas": len(updated),
            "readyReplicas": len(ready),
            "availableReplicas": len(ready),
            "unavailableReplicas": max(0, spec.get("replicas", 1) - len(ready)),
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available else "False",
                    "reason": "MinimumReplicasAvailable"
                    if available
                    else "MinimumReplicasUnavailable",
                    "lastUpdateTime": now(),
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                    "lastUpdateTime": now(),
                },
            ],
        }
        old = deployment.get("status") or {}
        if {k: v for k, v in status.items() if k != "conditions"} != {
            k: v for k, v in old.items() if k != "conditions"
        } or [c["status"] for c in status["conditions"]] != [
            c.get("status") for c in old.get("conditions", [])
        ]:
            self.store.mutate(
                DEPLOYMENTS, namespace, meta["name"], lambda o: o.update(status=status), "status"
            )

    def _new_replica_set(self, deployment: dict, template_hash: str) -> dict:
        meta, spec = deployment["metadata"], deployment["spec"]
        template = copy.deepcopy(spec["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = template_hash
        selector = copy.deepcopy(spec["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = template_hash
        labels = {
            **(spec["template"].get("metadata", {}).get("labels") or {}),
            HASH_LABEL: template_hash,
        }
        replica_set = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta['name']}-{template_hash}",
                "labels": labels,
                "ownerReferences": [_owner(deployment)],
            },
            "spec": {
                "replicas": spec.get("replicas", 1),
                "selector": selector,
                "template": template,
            },
        }
        return self.create(REPLICASETS, meta["namespace"], replica_set)

    def sync_replica_set(self, replica_set: dict) -> None:
        meta, spec = replica_set["metadata"], replica_set["spec"]
        if meta.get("deletionTimestamp"):
            return
        namespace = meta["namespace"]
        pods = [
            p for p in self.store.list(PODS, namespace)[0] if _owned(p, meta["uid"]) and _active(p)
        ]
        wanted = spec.get("replicas", 1)
        for _ in range(wanted - len(pods)):
            template = copy.deepcopy(spec["template"])
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    **template.get("metadata", {}),
                    "name": f"{meta['name']}-{uuid.uuid4().hex[:5]}",
                    "ownerReferences": [_owner(replica_set)],
                },
                "spec": template["spec"],
            }
            self.create(PODS, namespace, pod)
        for pod in pods[wanted:]:
            garbage.delete(self.store, PODS, namespace, pod["metadata"]["name"])
        ready = sum(_ready(p) for p in pods)
        status = {
            "replicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "fullyLabeledReplicas": len(pods),
            "observedGeneration": meta.get("generation"),
        }
        if (replica_set.get("status") or {}) != status:
            self.store.mutate(
                REPLICASETS, namespace, meta["name"], lambda o: o.update(status=status), "status"
            )
