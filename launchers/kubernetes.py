"""The Kubernetes launcher: a job as Kubernetes objects, sent with the official client.

Plan, then execute: `launchers.k8s_objects.job_objects(config)` builds every object as a
plain manifest (the module docstring there explains the choice of one Job per task, the
stable DNS names and the restart semantics); `--dry-run` prints exactly those objects and
`submit` sends exactly those objects. The one thing a dry run cannot show is the owner's
uid: `submit` creates the chief's Job first and adds an ownerReference to it on every other
object, so deleting the job (`disttrain stop`, or `kubectl delete job NAME`) deletes
everything. `stop` also deletes by label, which covers objects applied from a dry run.
Before anything is sent, `submit` probes an az:// or abfs:// run dir with this machine's
credentials when it has some (`launchers.prepare.check_cluster_run_dir`): a wrong key fails
the submit with the URL and the cause instead of crashing the chief in the cluster.

The cluster and namespace are kubectl's, for `train` (and its dry run) as for every other
verb (launchers/kubeconfig.py). Every request has a timeout; a server that cannot be
reached or refuses a request is one LauncherError naming the request and the server's own
message.

The `kubernetes` package is imported only when the cluster is contacted: this module
imports without it, and `disttrain --help` never loads it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from disttrain.config import Config, ConfigError
from launchers import Launcher, LauncherError, Plan
from launchers.job_status import JobList, JobStatus, training_progress
from launchers.k8s_objects import (
    APP,
    CSI_SECRET_KEYS,
    INDEX_LABEL,
    ROLE_LABEL,
    SECRET_ENV,
    job_objects,
    owned_by,
    owner_reference,
    storage_secret,
    to_yaml,
)
from launchers.k8s_options import K8sOptions
from launchers.kubeconfig import load_cluster_config, with_namespace
from launchers.pod_security import restricted_violations
from launchers.prepare import check_cluster_run_dir

POLL_SECONDS = 2.0
# Seconds to connect, then to wait for an answer: a server that accepts and never answers
# must not hang the CLI. A followed log may be quiet for long, so a stream has no read limit.
# No retries: urllib3's default 3 would quadruple every wait, and each verb is re-runnable.
REQUEST_TIMEOUT = (5, 20)
# Lines of the chief's and the evaluator's logs `status` reads for the last progress line.
STATUS_LOG_LINES = 200
STREAM_TIMEOUT = (5, None)
# kind -> (API class, method suffix): the objects a job is made of, plus its storage Secret.
_APIS = {
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Secret": ("CoreV1Api", "secret"),
    "Service": ("CoreV1Api", "service"),
    "Job": ("BatchV1Api", "job"),
    "Deployment": ("AppsV1Api", "deployment"),
    "NetworkPolicy": ("NetworkingV1Api", "network_policy"),
}

# The kinds of a job's objects, as `describe` lists and `stop` deletes them.
JOB_KINDS = ("Job", "Deployment", "Service", "ConfigMap", "NetworkPolicy")


def unrestricted_warnings(objects: list[dict]) -> list[str]:
    """A configured hostPath scratch is the one opt-in way out of the restricted standard."""
    problems = sorted({p for obj in objects for p in restricted_violations(obj)})
    return [f'not "restricted" Pod Security: {problem}' for problem in problems]


@dataclass
class K8sPlan(Plan):
    """The job's objects, in creation order (the chief's Job, the owner, first)."""

    config: Config = field(default_factory=Config)
    k8s: K8sOptions = field(default_factory=K8sOptions)
    objects: list[dict] = field(default_factory=list)

    def render(self) -> str:
        header = (
            f"# job {self.name} in namespace {self.k8s.namespace}: {len(self.objects)} "
            "objects. `disttrain train --launcher k8s` sends exactly these and adds\n"
            f"# ownerReferences to Job/{self.name} (uid known once it is created). "
            "No secret values: the storage Secret is referenced by name.\n"
        )
        return header + to_yaml(self.objects)


def plan_job(config: Config, k8s: K8sOptions) -> K8sPlan:
    """Every object of the job, validated (nothing is sent on bad input), with the
    namespace resolved as kubectl would."""
    k8s = with_namespace(k8s)
    objects = job_objects(config, k8s)
    return K8sPlan(config.name, unrestricted_warnings(objects), config, k8s, objects)


class KubernetesLauncher(Launcher):
    name = "k8s"
    sections = {"k8s": K8sOptions}

    @property
    def k8s(self) -> K8sOptions:
        return self.options["k8s"]

    # ------------------------------------------------------------ submit and wait

    def plan(self, config: Config) -> K8sPlan:
        return plan_job(config, self.k8s)

    def submit(self, plan: Plan, wait: bool = False, follow: bool = False) -> int:
        assert isinstance(plan, K8sPlan)
        config, objects = plan.config, plan.objects
        check_cluster_run_dir(config, plan.k8s, print)  # a wrong key fails here, not in the chief
        cluster = Cluster(plan.k8s.context, plan.k8s.namespace)
        cluster.refuse_if_present(config.name)
        owner = cluster.create(objects[0])
        reference = owner_reference(objects[0], owner.metadata.uid)
        try:
            for obj in objects[1:]:
                cluster.create(owned_by(obj, reference))
        except BaseException:  # no half-submitted job: the chief would wait for its peers
            print(cluster.delete_job(config.name), file=sys.stderr)
            raise
        print(
            f"job {config.name}: submitted {len(objects)} objects to namespace "
            f"{cluster.namespace} (chief, {config.cluster.workers} workers, {config.cluster.ps} ps"
            + (", evaluator" if config.eval.enabled else "")
            + ")\n"
            + f"  status: disttrain status {config.name} -l k8s -n {cluster.namespace}"
        )
        if follow:
            cluster.follow_chief(config.name)
        if wait or follow:
            return cluster.wait_for_result(config.name)
        return 0

    # ------------------------------------------------------------ the other verbs

    def job_status(self, name: str) -> JobStatus:
        return self._cluster().job_status(name)

    def logs(
        self, name: str, role: str | None, index: int, follow: bool, previous: bool = False
    ) -> None:
        self._cluster().print_logs(name, role, index, follow, previous)

    def stop(self, name: str) -> str:
        return self._cluster().delete_job(name)

    def describe(self, name: str) -> str:
        return self._cluster().describe_job(name)

    def list_jobs(self) -> JobList:
        return self._cluster().list_jobs()

    def _cluster(self) -> Cluster:
        return Cluster(self.k8s.context or None, self.k8s.namespace or None)


def create_storage_secret(
    name: str, namespace: str | None, context: str | None, environ: dict[str, str]
) -> str:
    """Create (or replace) the storage Secret from the local environment; print no value."""
    found = {key: environ[key] for key in SECRET_ENV if environ.get(key)}
    if not found:
        raise ConfigError(
            "secret create: none of " + ", ".join(SECRET_ENV) + " is set in the environment; "
            "set the connection string, or the account name with its key or a SAS token"
        )
    cluster = Cluster(context, namespace)
    secret = storage_secret(name, cluster.namespace, found)
    if cluster.exists("Secret", name):
        cluster.call("replace", "Secret", name, body=_typed(secret))
        verb = "replaced"
    else:
        cluster.create(secret)
        verb = "created"
    keys = ", ".join(sorted(secret["stringData"]))
    where = f"secret {name} in namespace {cluster.namespace}"
    report = f"{where}: {verb} with keys {keys} (values not shown)"
    if not set(CSI_SECRET_KEYS.values()) <= set(secret["stringData"]):
        report += (
            "\nnote: no account name and key in it, so it cannot mount an Azure Files share "
            "(launcher.k8s.storage.azure_file_share); Blob run dirs (az://) work"
        )
    return report


def _typed(obj: dict):
    from kubernetes import client

    return getattr(client, "V1" + obj["kind"]).from_dict(obj)


class Cluster:
    """One namespace of one cluster, reached with the kubeconfig or the in-cluster account.

    Every request has a timeout, and every failure to reach the API server or be served by
    it is a LauncherError naming the request and the server's own message.
    """

    def __init__(self, context: str | None, namespace: str | None):
        default_namespace = load_cluster_config(context)  # says so when the client is missing
        from kubernetes import client

        self.namespace = namespace or default_namespace
        self.client = client
        configuration = client.Configuration.get_default_copy()
        configuration.retries = 0
        self.api_client = client.ApiClient(configuration)

    # ---------------------------------------------------------------- raw calls

    def api(self, kind: str):
        """The API object serving `kind` and the method-name suffix of its calls."""
        api_class, suffix = _APIS[kind]
        return getattr(self.client, api_class)(self.api_client), suffix

    def request(
        self,
        what: str,
        method: Callable,
        *args,
        stream: bool = False,
        absent_ok: bool = False,
        **kwargs,
    ):
        """`method(*args, **kwargs)` with a timeout; a failure says `what` was asked.

        With `absent_ok`, an object that does not exist (404) is None instead of an error.
        """
        kwargs["_request_timeout"] = STREAM_TIMEOUT if stream else REQUEST_TIMEOUT
        try:
            with self.reporting(what):
                return method(*args, **kwargs)
        except LauncherError as error:
            if absent_ok and getattr(error.__cause__, "status", None) == 404:
                return None
            raise

    @contextmanager
    def reporting(self, what: str) -> Iterator[None]:
        """API and connection failures inside, as one LauncherError that says `what` failed."""
        from urllib3.exceptions import HTTPError

        try:
            yield
        except self.client.ApiException as exc:
            raise LauncherError(f"kubernetes API: {what}: {_api_message(exc)}") from exc
        except HTTPError as exc:  # refused, timed out, TLS, cut off: the server was not reached
            server = self.api_client.configuration.host
            raise LauncherError(
                f"kubernetes API: {what}: no answer from {server} ({_cause(exc)}); "
                "check the kubeconfig's server, the network, or --context"
            ) from exc

    def call(self, verb: str, kind: str, *args, absent_ok: bool = False, **kwargs):
        api, suffix = self.api(kind)
        name = args[0] if args and isinstance(args[0], str) else _name_of(kwargs.get("body"))
        what = f"{verb} {kind}" + (f" {name}" if name else "")
        what += f" in namespace {self.namespace}"
        method = getattr(api, f"{verb}_namespaced_{suffix}")
        return self.request(
            what, method, *args, namespace=self.namespace, absent_ok=absent_ok, **kwargs
        )

    def create(self, obj: dict):
        return self.call("create", obj["kind"], body=_typed(obj))

    def exists(self, kind: str, name: str) -> bool:
        return self.call("read", kind, name, absent_ok=True) is not None

    def refuse_if_present(self, name: str, launcher: str = "k8s") -> None:
        """Refuse a job whose chief Job exists; the hints name the launcher that made it
        (helm's stop uninstalls releases, k8s's deletes objects)."""
        if self.exists("Job", name):
            target = f"{name} -l {launcher} -n {self.namespace}"
            raise LauncherError(
                f"job {name!r} already exists in namespace {self.namespace} "
                f"(`disttrain status {target}`); `disttrain stop {target}` first, "
                "or choose another name with --set name=..."
            )

    def _selector(self, name: str, **extra: str) -> str:
        pairs = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": name, **extra}
        return ",".join(f"{k}={v}" for k, v in pairs.items())

    def pods(self, name: str, **extra: str) -> list:
        core = self.client.CoreV1Api(self.api_client)
        pods = self.request(
            f"list the pods of job {name} in namespace {self.namespace}",
            core.list_namespaced_pod,
            self.namespace,
            label_selector=self._selector(name, **extra),
        )
        return sorted(pods.items, key=lambda p: (_task_name(p), p.metadata.creation_timestamp))

    # ---------------------------------------------------------------- results and tables

    def job_result(self, name: str) -> tuple[str, str]:
        """(running|succeeded|failed, reason): the chief's Job's result, unless another
        task's Job failed by its podFailurePolicy (exit code 4: a restart cannot fix it),
        which fails the job at once, as the local launcher does."""
        jobs = self.task_jobs(name)
        chief = next((job for job in jobs if job.metadata.name == name), None)
        if chief is None:
            raise LauncherError(
                f"no job {name!r} in namespace {self.namespace} "
                f"(`disttrain list -l k8s -n {self.namespace}` lists the jobs there)"
            )
        result, reason = _result_of(chief)
        stopped = [job for job in jobs if _failed_by_policy(job)]
        if stopped and result != "succeeded":
            return "failed", self._why_it_stopped(name, stopped[0])
        return result, reason

    def _why_it_stopped(self, name: str, job) -> str:
        """`<task> stopped: <its last error line>`, from the pod that failed its Job."""
        task = _task_name(job)
        role, index = task.rsplit("-", 1)
        pods = self.pods(name, **{ROLE_LABEL: role, INDEX_LABEL: index})
        failed = [pod for pod in pods if pod.status.phase == "Failed"]
        tail = self._log_tail(failed[-1]) if failed else ""
        errors = [line for line in tail.splitlines() if line.startswith("error: ")]
        why = errors[-1].removeprefix("error: ") if errors else _failed_condition(job)
        return f"{task} stopped: {why}"

    def job_status(self, name: str) -> JobStatus:
        """One row per task, read from its Job, so a task whose pod the Job controller
        deleted after the backoffLimit still shows, with the reason. The progress is the
        last progress line of the chief's log and the last evaluation in the evaluator's:
        the run dir is the pods' (a mounted share, or Azure with the pods' credentials)."""
        result, reason = self.job_result(name)
        pods = {_task_name(pod): pod for pod in self.pods(name)}  # newest pod per task
        progress = training_progress(
            self._log_tail(pods.get("chief-0")),
            running=result == "running",
            evaluator_log=self._log_tail(pods.get("evaluator-0")),
        )
        rows = []
        for job in self.task_jobs(name):
            task = _task_name(job)
            row = _task_row(task, job, pods.pop(task, None))
            if _failed_by_policy(job):
                row["reason"] = self._why_it_stopped(name, job)
            rows.append(row)
        for task, pod in pods.items():  # pods of a Deployment (TensorBoard)
            rows.append(_task_row(task, None, pod))
        return JobStatus(name, result, reason, self.namespace, rows, progress)

    def _log_tail(self, pod) -> str:
        """The last lines of a pod's log; none while its container has not started."""
        if pod is None or pod.status.phase == "Pending":
            return ""
        core = self.client.CoreV1Api(self.api_client)
        try:
            return self.request(
                f"logs of pod {pod.metadata.name} in namespace {self.namespace}",
                core.read_namespaced_pod_log,
                pod.metadata.name,
                self.namespace,
                tail_lines=STATUS_LOG_LINES,
            )
        except LauncherError:  # a pod deleted meanwhile: status still shows the tasks
            return ""

    def describe_job(self, name: str) -> str:
        """The job's objects, then every pod (restarted tasks' older pods too): its phase,
        restarts and how its container last ended."""
        result, reason = self.job_result(name)
        selector = self._selector(name)
        objects = [
            f"{kind}/{item.metadata.name}"
            for kind in JOB_KINDS
            for item in self.call("list", kind, label_selector=selector).items
        ]
        lines = [
            f"job {name} (namespace {self.namespace}): {result}"
            + (f" ({reason})" if reason else ""),
            "objects: " + (", ".join(objects) or "-"),
            "pods:",
        ]
        return "\n".join(lines + [f"  {_pod_summary(pod)}" for pod in self.pods(name)])

    def task_jobs(self, name: str) -> list:
        jobs = self.call("list", "Job", label_selector=self._selector(name))
        return sorted(jobs.items, key=_task_name)

    def list_jobs(self) -> JobList:
        selector = f"app.kubernetes.io/name={APP},{ROLE_LABEL}=chief"
        jobs = self.call("list", "Job", label_selector=selector).items
        rows = [
            {
                "name": job.metadata.name,
                "result": _result_of(job)[0],
                "age": _age(job.metadata.creation_timestamp),
            }
            for job in sorted(jobs, key=lambda j: j.metadata.name)
        ]
        return JobList(rows, f"no disttrain jobs in namespace {self.namespace}")

    def wait_for_result(self, name: str) -> int:
        last = None
        while True:
            result, reason = self.job_result(name)
            if result != last:
                print(f"job {name}: {result}" + (f" ({reason})" if reason else ""), flush=True)
                last = result
            if result != "running":
                return 0 if result == "succeeded" else 1
            time.sleep(POLL_SECONDS)

    # ---------------------------------------------------------------- logs

    def print_logs(
        self, name: str, role: str | None, index: int, follow: bool, previous: bool
    ) -> None:
        """The newest pod's log of each task (or of one task); with `previous`, the pod's
        before it: a task restarts as a new pod of its Job (restartPolicy Never)."""
        extra = {} if role is None else {ROLE_LABEL: role, INDEX_LABEL: str(index)}
        by_task: dict[str, list] = {}
        for pod in self.pods(name, **extra):  # oldest first within each task
            by_task.setdefault(_task_name(pod), []).append(pod)
        pods = [runs[-2 if previous else -1] for runs in by_task.values() if len(runs) > previous]
        if not pods:
            what = "any task" if role is None else f"task {role}-{index}"
            earlier = " before its current one" if previous and by_task else ""
            raise LauncherError(
                f"job {name} in namespace {self.namespace} has no pod{earlier} for {what}"
            )
        for pod in pods:
            prefix = f"[{_task_name(pod)}] " if len(pods) > 1 else ""
            self._stream_log(pod.metadata.name, prefix, follow and len(pods) == 1)

    def _stream_log(self, pod: str, prefix: str, follow: bool) -> None:
        core = self.client.CoreV1Api(self.api_client)
        response = self.request(
            f"logs of pod {pod} in namespace {self.namespace}",
            core.read_namespaced_pod_log,
            pod,
            self.namespace,
            follow=follow,
            _preload_content=False,
            stream=follow,
        )
        pending = b""
        with self.reporting(f"logs of pod {pod} in namespace {self.namespace}"):
            for chunk in response.stream(4096):  # a server restart can cut a followed log
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    sys.stdout.write(prefix + line.decode(errors="replace") + "\n")
                sys.stdout.flush()
        if pending:
            sys.stdout.write(prefix + pending.decode(errors="replace") + "\n")
        sys.stdout.flush()

    def follow_chief(self, name: str) -> None:
        """Print the chief's output until the job ends (a restarted chief is followed too)."""
        while self.job_result(name)[0] == "running":
            pods = self.pods(name, **{ROLE_LABEL: "chief"})
            running = [p for p in pods if p.status.phase == "Running"]
            if running:
                self._stream_log(running[-1].metadata.name, "[chief-0] ", True)
            time.sleep(POLL_SECONDS)

    # ---------------------------------------------------------------- stop

    def delete_job(self, name: str) -> str:
        """Delete the owner (its dependents follow) and anything else labelled with the job."""
        deleted = []
        selector = self._selector(name)
        for kind in JOB_KINDS:
            for item in self.call("list", kind, label_selector=selector).items:
                gone = self.call(  # None: already collected through its owner
                    "delete",
                    kind,
                    item.metadata.name,
                    propagation_policy="Background",
                    absent_ok=True,
                )
                if gone is not None:
                    deleted.append(f"{kind}/{item.metadata.name}")
        if not deleted:
            return f"job {name}: nothing found in namespace {self.namespace}"
        return f"job {name}: deleted {', '.join(deleted)} (their pods follow)"


def _api_message(exc) -> str:
    """`403 Forbidden: <the server's own message>`: it names the field or permission."""
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")


def _cause(exc) -> str:
    """urllib3's innermost reason, without the connection object it names first."""
    reason = str(getattr(exc, "reason", None) or exc)
    return reason.split("): ", 1)[-1] if reason.startswith("HTTP") else reason


def _task_name(pod) -> str:
    pod_labels = pod.metadata.labels or {}
    role = pod_labels.get(ROLE_LABEL) or pod_labels.get("app.kubernetes.io/component", "?")
    index = pod_labels.get(INDEX_LABEL)
    return f"{role}-{index}" if index is not None else role


def _task_row(task: str, job, pod) -> dict:
    failed = _failed_condition(job) if job is not None else None
    if failed:
        phase = "Failed"
    elif job is not None and job.status.succeeded:
        phase = "Succeeded"
    else:
        phase = _phase(pod) if pod is not None else "Pending"
    if job is not None:  # each restart is a new pod; the failures spent from backoffLimit
        restarts = job.status.failed or 0
    else:  # TensorBoard's pod restarts in place
        restarts = sum(s.restart_count for s in pod.status.container_statuses or [])
    created = (pod or job).metadata.creation_timestamp
    return {
        "task": task,
        "phase": phase,
        "restarts": restarts,
        "age": _age(created),
        "pod": pod.metadata.name if pod is not None else None,
        "reason": failed,
    }


def _pod_summary(pod) -> str:
    """`pod (task): phase, restarts N, last termination: Reason (exit code C)`."""
    statuses = pod.status.container_statuses or []
    restarts = sum(s.restart_count for s in statuses)
    line = f"{pod.metadata.name} ({_task_name(pod)}): {_phase(pod)}, restarts {restarts}"
    for status in statuses:
        now = status.state.terminated if status.state else None
        before = status.last_state.terminated if status.last_state else None
        ended = now or before
        if ended:
            return line + (
                f", last termination: {ended.reason or 'unknown'} (exit code {ended.exit_code})"
            )
    return line


def _name_of(body) -> str:
    metadata = getattr(body, "metadata", None)
    return getattr(metadata, "name", "") or ""


def _result_of(chief_job) -> tuple[str, str]:
    """(running|succeeded|failed, reason) from the chief's Job conditions."""
    failed = _failed_condition(chief_job)
    if failed:
        return "failed", failed
    for condition in chief_job.status.conditions or []:
        if condition.status == "True" and condition.type in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", ""
    return "running", ""


def _failed_by_policy(job) -> bool:
    """The Job failed at once by its podFailurePolicy's FailJob rule (exit code 4)."""
    return any(
        c.status == "True" and c.type == "Failed" and c.reason == "PodFailurePolicy"
        for c in job.status.conditions or []
    )


def _failed_condition(job) -> str | None:
    for condition in job.status.conditions or []:
        if condition.status == "True" and condition.type in ("Failed", "FailureTarget"):
            return f"{condition.reason}: {condition.message}"
    return None


def _phase(pod) -> str:
    for status in pod.status.container_statuses or []:
        waiting = status.state.waiting if status.state else None
        if waiting and waiting.reason:  # CrashLoopBackOff says more than Running
            return waiting.reason
    return pod.status.phase or "Unknown"


def _age(created: datetime | None) -> str:
    if created is None:
        return "-"
    seconds = int((datetime.now(timezone.utc) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
