"""The Job controller (batch/v1), for the features our launchers use.

* Completion modes NonIndexed and Indexed. An Indexed pod gets the completion index as the
  `batch.kubernetes.io/job-completion-index` label and annotation, `JOB_COMPLETION_INDEX`
  in every container's env (downward API), and hostname `<job>-<index>` (with the
  template's subdomain, so a headless Service gives it a stable DNS name).
* Failures: a pod that ends Failed, or is deleted before it finished, counts as failed
  and is replaced; with restartPolicy OnFailure the kubelet restarts containers in place
  and their restarts count too. More than `backoffLimit` failures fails the Job
  (BackoffLimitExceeded) and stops its pods. `podFailurePolicy` rules on exit codes
  (FailJob, Ignore, Count) and `successPolicy` rules (succeededIndexes/succeededCount)
  are honoured.
* Conditions SuccessCriteriaMet+Complete or FailureTarget+Failed; activeDeadlineSeconds
  (DeadlineExceeded); ttlSecondsAfterFinished deletes the finished Job and its pods.
"""

from __future__ import annotations

import copy
import datetime
import threading
import time
import uuid

from . import garbage
from .resources import BY_KIND
from .store import ApiError, Store, now, run_control_loop

JOBS = BY_KIND[("batch/v1", "Job")]
PODS = BY_KIND[("v1", "Pod")]
EVENTS = BY_KIND[("v1", "Event")]
INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def _parse_time(stamp: str) -> float:
    return (
        datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=datetime.timezone.utc)
        .timestamp()
    )


def format_indexes(indexes: set[int]) -> str:
    """`0-2,5`: the compressed interval format of status.completedIndexes."""
    parts, ordered = [], sorted(indexes)
    start = prev = None
    for i in ordered:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def parse_indexes(text: str) -> set[int]:
    found: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


class JobController:
    def __init__(self, store: Store, create_pod):
        """`create_pod(namespace, pod)` creates through the API server (so it is validated)."""
        self.store, self.create_pod = store, create_pod
        self.counted: dict[str, set[str]] = {}  # job uid -> pod uids already counted
        self.active_before: dict[str, dict[str, dict]] = {}  # job uid -> {pod uid: pod}
        self.thread = threading.Thread(target=self._loop, name="job-controller", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        run_control_loop(self.store, self.sync_all)

    def sync_all(self) -> None:
        for job in self.store.list(JOBS)[0]:
            try:
                self.sync(job)
            except ApiError:
                pass  # raced with a deletion; the next pass sees it

    def sync(self, job: dict) -> None:
        meta, spec, status = job["metadata"], job["spec"], job.get("status") or {}
        namespace, uid = meta["namespace"], meta["uid"]
        if meta.get("deletionTimestamp"):
            return
        if _finished(status):
            self._expire(job)
            return
        if spec.get("suspend"):
            return
        pods = [
            p
            for p in self.store.list(PODS, namespace)[0]
            if any(r["uid"] == uid for r in p["metadata"].get("ownerReferences") or [])
        ]
        failed_pods, succeeded_pods = self._newly_finished(uid, pods)
        status = copy.deepcopy(status)
        status.setdefault("startTime", now())
        status["failed"] = status.get("failed", 0) + len(failed_pods)
        status["succeeded"] = status.get("succeeded", 0) + len(succeeded_pods)
        indexed = spec.get("completionMode") == "Indexed"
        done_indexes = parse_indexes(status.get("completedIndexes", ""))
        done_indexes |= {_index_of(p) for p in succeeded_pods if indexed}
        if indexed:
            status["completedIndexes"] = format_indexes(done_indexes)
        active = [p for p in pods if _is_active(p)]
        verdict = self._verdict(job, status, active, failed_pods, done_indexes)
        if verdict:
            self._finish(job, status, active, *verdict)
            return
        self._create_missing(job, status, active, done_indexes)
        active = [
            p for p in self.store.list(PODS, namespace)[0] if _is_active(p) and _owned_by(p, uid)
        ]
        status.update(
            active=len(active),
            ready=sum(_ready(p) for p in active),
            terminating=sum(
                1
                for p in pods
                if p["metadata"].get("deletionTimestamp")
                and p["status"].get("phase") in ("Pending", "Running")
            ),
            uncountedTerminatedPods={},
        )
        self._write_status(job, status)

    def _newly_finished(self, job_uid: str, pods: list[dict]) -> tuple[list[dict], list[dict]]:
        """Pods that ended since the last pass: failed (incl. deleted while running), succeeded."""
        counted = self.counted.setdefault(job_uid, set())
        previous = self.active_before.get(job_uid, {})
        present = {p["metadata"]["uid"]: p for p in pods}
        failed, succeeded = [], []
        for pod_uid, pod in present.items():
            phase = pod["status"].get("phase")
            ended = phase in ("Succeeded", "Failed") or pod["metadata"].get("deletionTimestamp")
            if ended and pod_uid not in counted:
                counted.add(pod_uid)
                (succeeded if phase == "Succeeded" else failed).append(pod)
        for pod_uid, pod in previous.items():
            if pod_uid not in present and pod_uid not in counted:
                counted.add(pod_uid)
                failed.append(pod)  # vanished before it finished
        self.active_before[job_uid] = {u: p for u, p in present.items() if _is_active(p)}
        return failed, succeeded

    def _verdict(
        self,
        job: dict,
        status: dict,
        active: list[dict],
        failed_pods: list[dict],
        done_indexes: set[int],
    ) -> tuple[str, str, str] | None:
        """(condition, reason, message) when the Job is now finished, else None."""
        spec = job["spec"]
        for pod in failed_pods:
            rule = _matching_failure_rule(spec.get("podFailurePolicy"), pod)
            if rule and rule["action"] == "FailJob":
                return (
                    "Failed",
                    "PodFailurePolicy",
                    f"Container {rule['_container']} for pod {pod['metadata']['namespace']}/"
                    f"{pod['metadata']['name']} failed with exit code {rule['_code']} "
                    "matching FailJob rule at index 0",
                )
            if rule and rule["action"] == "Ignore":
                status["failed"] -= 1
        restarts = sum(
            c.get("restartCount", 0)
            for p in active
            for c in p["status"].get("containerStatuses", [])
        )
        if status["failed"] + restarts > spec.get("backoffLimit", 6):
            return "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and time.time() - _parse_time(status["startTime"]) > deadline:
            return "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
        for rule in (spec.get("successPolicy") or {}).get("rules", []):
            wanted = parse_indexes(rule.get("succeededIndexes", "")) or None
            pool = done_indexes & wanted if wanted is not None else done_indexes
            enough = rule.get("succeededCount", len(wanted or pool))
            if (
                (wanted is None or wanted <= done_indexes or rule.get("succeededCount"))
                and len(pool) >= enough
                and pool
            ):
                return ("Complete", "SuccessPolicy", "Matched rules at index 0")
        completions = spec.get("completions")
        finished = (
            len(done_indexes) if spec.get("completionMode") == "Indexed" else status["succeeded"]
        )
        if completions is not None and finished >= completions:
            return "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
        return None

    def _finish(
        self, job: dict, status: dict, active: list[dict], condition: str, reason: str, message: str
    ) -> None:
        for pod in active:
            try:
                garbage.delete(
                    self.store, PODS, pod["metadata"]["namespace"], pod["metadata"]["name"]
                )
            except ApiError:
                pass
        stamp = now()
        first = "SuccessCriteriaMet" if condition == "Complete" else "FailureTarget"
        status["conditions"] = [
            *status.get("conditions", []),
            *[
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for kind in (first, condition)
            ],
        ]
        status.update(active=0, ready=0, terminating=len(active))
        if condition == "Complete":
            status["completionTime"] = stamp
        self._write_status(job, status)

    def _create_missing(
        self, job: dict, status: dict, active: list[dict], done_indexes: set[int]
    ) -> None:
        spec = job["spec"]
        parallelism = spec.get("parallelism", 1)
        completions = spec.get("completions")
        if spec.get("completionMode") == "Indexed":
            running = {_index_of(p) for p in active}
            for index in range(completions):
                if len(running) >= parallelism:
                    break
                if index not in done_indexes and index not in running:
                    self._create_pod(job, index)
                    running.add(index)
            return
        remaining = (
            parallelism
            if completions is None
            else min(parallelism, completions - status["succeeded"])
        )
        for _ in range(remaining - len(active)):
            self._create_pod(job, None)

    def _create_pod(self, job: dict, index: int | None) -> None:
        meta, template = job["metadata"], copy.deepcopy(job["spec"]["template"])
        pod_meta = template.get("metadata") or {}
        suffix = uuid.uuid4().hex[:5]
        pod_meta["name"] = (
            f"{meta['name']}-{index}-{suffix}"
            if index is not None
            else (f"{meta['name']}-{suffix}")
        )
        pod_meta["ownerReferences"] = [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        pod_spec = template["spec"]
        if index is not None:
            pod_meta.setdefault("labels", {})[INDEX_KEY] = str(index)
            pod_meta.setdefault("annotations", {})[INDEX_KEY] = str(index)
            pod_spec["hostname"] = f"{meta['name']}-{index}"
            field_ref = {"fieldRef": {"fieldPath": f"metadata.labels['{INDEX_KEY}']"}}
            for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
                container.setdefault("env", []).insert(
                    0, {"name": "JOB_COMPLETION_INDEX", "valueFrom": field_ref}
                )
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec}
        try:
            self.create_pod(meta["namespace"], pod)
        except ApiError as error:
            self._event(job, "FailedCreate", f"Error creating: {error.message}")

    def _event(self, job: dict, reason: str, message: str) -> None:
        meta = job["metadata"]
        event = {
            "metadata": {"generateName": f"{meta['name']}."},
            "reason": reason,
            "message": message,
            "type": "Warning",
            "firstTimestamp": now(),
            "involvedObject": {
                "kind": "Job",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
        }
        self.store.create(EVENTS, meta["namespace"], event)

    def _expire(self, job: dict) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        finished_at = next(
            c["lastTransitionTime"]
            for c in job["status"]["conditions"]
            if c["type"] in ("Complete", "Failed")
        )
        if time.time() - _parse_time(finished_at) >= ttl:
            meta = job["metadata"]
            garbage.delete(self.store, JOBS, meta["namespace"], meta["name"], "Background")

    def _write_status(self, job: dict, status: dict) -> None:
        def change(obj: dict) -> None:
            obj["status"] = status

        self.store.mutate(
            JOBS, job["metadata"]["namespace"], job["metadata"]["name"], change, "status"
        )


def _finished(status: dict) -> bool:
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in status.get("conditions", [])
    )


def _is_active(pod: dict) -> bool:
    return pod["status"].get("phase") in ("Pending", "Running", None) and not pod["metadata"].get(
        "deletionTimestamp"
    )


def _owned_by(pod: dict, uid: str) -> bool:
    return any(r["uid"] == uid for r in pod["metadata"].get("ownerReferences") or [])


def _ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def _index_of(pod: dict) -> int:
    return int(pod["metadata"]["annotations"][INDEX_KEY])


def _matching_failure_rule(policy: dict | None, pod: dict) -> dict | None:
    """The first podFailurePolicy rule whose onExitCodes match one of the pod's containers."""
    for rule in (policy or {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if not codes:
            continue
        for container in pod["status"].get("containerStatuses", []):
            if codes.get("containerName") not in (None, container["name"]):
                continue
            code = (container["state"].get("terminated") or {}).get("exitCode")
            if code in (None, 0):
                continue
            inside = code in codes["values"]
            if inside == (codes["operator"] == "In"):
                return {**rule, "_container": container["name"], "_code": code}
    return None
