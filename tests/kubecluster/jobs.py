"""The Job controller (batch/v1), for the features our launchers use.

* Completion modes NonIndexed and Indexed. An Indexed pod gets the completion index as the
  `batch.kubernetes.io/job-completion-index` label and annotation, `JOB_COMPLETION_INDEX`
  in every container's env (downward API), and hostname `<job>-<index>` (with the
  template's subdomain, so a headless Service gives it a stable DNS name).
* Failures: a pod that ends Failed, or is deleted before it finished, counts as failed
  and is replaced; with restartPolicy OnFailure the kubelet restarts containers in place
  and their restarts count too. More than `backoffLimit` failures fails the Job
  (BackoffLimitExceeded) and stops its pods. `successPolicy` rules
  (succeededIndexes/succeededCount) are honoured.
* `podFailurePolicy`, as https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy
  describes it: each failed pod goes through `match_pod_failure_policy` (FailJob fails the
  Job with reason PodFailurePolicy, Ignore does not count it against backoffLimit, Count
  does). With a policy, a pod being deleted is not a failure until it is terminal, and its
  replacement is created only then (`podReplacementPolicy: Failed`, the only value a policy
  allows): the new pod never runs beside the old one, under the same hostname.
* Every pod it creates carries the `batch.kubernetes.io/job-tracking` finalizer, removed
  once the pod is terminal and counted (or its Job is gone or finished): a deleted pod
  stays, terminal and with its exit codes, until the controller has seen how it ended.
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
TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
TERMINAL = ("Succeeded", "Failed")


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
        self._release_finished_pods()

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
        has_policy = bool(spec.get("podFailurePolicy"))
        failed_pods, succeeded_pods = self._newly_finished(uid, pods, has_policy)
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
        # With a podFailurePolicy (podReplacementPolicy Failed) a terminating pod is
        # replaced only once it is terminal: it still holds its place.
        terminating = [p for p in pods if _is_terminating(p)] if has_policy else []
        self._create_missing(job, status, active + terminating, done_indexes)
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

    def _newly_finished(
        self, job_uid: str, pods: list[dict], wait_for_terminal: bool
    ) -> tuple[list[dict], list[dict]]:
        """Pods that ended since the last pass: failed (incl. deleted while running, or only
        once terminal when `wait_for_terminal`: a podFailurePolicy reads how they ended),
        succeeded."""
        counted = self.counted.setdefault(job_uid, set())
        previous = self.active_before.get(job_uid, {})
        present = {p["metadata"]["uid"]: p for p in pods}
        failed, succeeded = [], []
        for pod_uid, pod in present.items():
            phase = pod["status"].get("phase")
            deleted = pod["metadata"].get("deletionTimestamp") and not wait_for_terminal
            ended = phase in TERMINAL or deleted
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
            if pod["status"].get("phase") != "Failed":
                continue  # vanished, or deleted without a policy: how it ended is unknown
            message, counts, action = match_pod_failure_policy(spec.get("podFailurePolicy"), pod)
            if action == "FailJob":
                return "Failed", "PodFailurePolicy", message
            if not counts:
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
        pod_meta["finalizers"] = [TRACKING_FINALIZER]
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

    def _release_finished_pods(self) -> None:
        """Remove the tracking finalizer from terminal pods that are counted, or whose Job
        is gone or finished; a deleted pod is then removed from the API."""
        jobs = {job["metadata"]["uid"]: job for job in self.store.list(JOBS)[0]}
        for pod in self.store.list(PODS)[0]:
            meta = pod["metadata"]
            if TRACKING_FINALIZER not in (meta.get("finalizers") or []):
                continue
            owner = next((r["uid"] for r in meta.get("ownerReferences") or []), "")
            job = jobs.get(owner)
            released = (
                job is None
                or job["metadata"].get("deletionTimestamp")
                or _finished(job.get("status") or {})
                or meta["uid"] in self.counted.get(owner, set())
            )
            if pod["status"].get("phase") in TERMINAL and released:
                try:
                    self.store.mutate(PODS, meta["namespace"], meta["name"], _drop_tracking)
                except ApiError:
                    pass  # gone meanwhile

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


def _is_terminating(pod: dict) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp")) and (
        pod["status"].get("phase") not in TERMINAL
    )


def _drop_tracking(pod: dict) -> None:
    pod["metadata"]["finalizers"] = [
        f for f in pod["metadata"].get("finalizers") or [] if f != TRACKING_FINALIZER
    ]


def match_pod_failure_policy(policy: dict | None, pod: dict) -> tuple[str | None, bool, str | None]:
    """(the FailJob message, whether it counts against backoffLimit, the action) for a failed
    pod: Kubernetes' matchPodFailurePolicy (pkg/controller/job/pod_failure_policy.go). The
    first rule that matches decides; no rule matching: counted, no action."""
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    for index, rule in enumerate((policy or {}).get("rules", [])):
        action = rule["action"]
        if rule.get("onExitCodes") is not None:
            container = _container_matching(pod["status"], rule["onExitCodes"])
            if container is None:
                continue
            code = container["state"]["terminated"]["exitCode"]
            message = (
                f"Container {container['name']} for pod {namespace}/{name} failed with exit "
                f"code {code} matching {action} rule at index {index}"
            )
        elif rule.get("onPodConditions") is not None:
            condition = _condition_matching(pod["status"], rule["onPodConditions"])
            if condition is None:
                continue
            message = (
                f"Pod {namespace}/{name} has condition {condition['type']} matching {action} "
                f"rule at index {index}"
            )
        else:
            continue
        return (message if action == "FailJob" else None), action != "Ignore", action
    return None, True, None


def _container_matching(status: dict, requirement: dict) -> dict | None:
    """The first terminated container (then init container) whose non-zero exit code meets
    the requirement (matchOnExitCodes, getMatchingContainerFromList)."""
    containers = [
        *(status.get("containerStatuses") or []),
        *(status.get("initContainerStatuses") or []),
    ]
    for container in containers:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated is None or terminated["exitCode"] == 0:
            continue  # still terminating, or succeeded: no exit code to match
        if requirement.get("containerName") not in (None, container["name"]):
            continue
        listed = terminated["exitCode"] in requirement["values"]
        if listed == (requirement["operator"] == "In"):
            return container
    return None


def _condition_matching(status: dict, patterns: list[dict]) -> dict | None:
    """The first pod condition of a pattern's type and status (matchOnPodConditions)."""
    for condition in status.get("conditions", []):
        for pattern in patterns:
            if condition["type"] == pattern["type"] and condition["status"] == pattern.get(
                "status", "True"
            ):
                return condition
    return None
