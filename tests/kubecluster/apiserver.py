"""The HTTP face of the test cluster: the Kubernetes REST API subset clients use.

Served: `/version`, legacy discovery (`/api`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`; clients
that ask for aggregated discovery accept the legacy documents, as against an older
server), CRUD + list + watch of every type in `resources.RESOURCES` with labelSelector and
fieldSelector, `status` and `scale` subresources, PATCH in all four flavours (server-side
apply included), DELETE with propagationPolicy, `pods/log` with follow/previous/tailLines,
`pods/eviction` (`evict`), `dryRun=All`, and errors as `Status` objects. Every object
written is validated strictly (validation.py). `/openapi/v3` says so (openapi.py), so
kubectl and helm leave field validation to the server; `/openapi/v2` answers 404.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from . import garbage, openapi, protobuf, resources
from .patching import apply_content_type
from .resources import BY_PATH, Resource
from .store import ApiError, Store, not_found, now
from .validation import validate

WATCH_DEFAULT_SECONDS = 1800
# A log provider: (namespace, pod, container, previous) -> (path, still-running predicate).
LogSource = Callable[[dict, str, bool], tuple[str, Callable[[], bool]]]


class ApiServer:
    def __init__(self, store: Store, log_source: LogSource | None = None):
        self.store, self.log_source = store, log_source
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.http.daemon_threads = True
        self.http.api = self  # type: ignore[attr-defined]
        self.port = self.http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.http.serve_forever, name="apiserver", daemon=True
        )
        self.requests: list[str] = []  # "METHOD path" of every request, for tests and debugging

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.store.close()
        self.http.shutdown()
        self.http.server_close()

    # -- object operations (also used by tests in-process)
    def create(self, res: Resource, namespace: str, obj: dict, dry_run: bool = False) -> dict:
        obj = copy.deepcopy(obj)
        _check_identity(res, obj)
        validate(res, obj)
        if dry_run:
            return obj
        return self.store.create(res, namespace, obj)

    def evict(self, namespace: str, name: str, eviction: dict) -> dict:
        """POST pods/NAME/eviction, as Kubernetes' EvictionREST (pkg/registry/core/pod/
        storage/eviction.go, addConditionAndDeletePod): the pod gets the DisruptionTarget
        condition (EvictionByEvictionAPI), then is deleted gracefully with the Eviction's
        deleteOptions. No PodDisruptionBudget is consulted: the launchers make none."""
        if (eviction.get("metadata") or {}).get("name", name) != name:
            raise ApiError(400, "BadRequest", "name in URL does not match name in Eviction object")
        pods = resources.BY_KIND[("v1", "Pod")]
        pod = self.store.get(pods, namespace, name)
        if pod["status"].get("phase") not in ("Succeeded", "Failed"):
            self.store.mutate(pods, namespace, name, _disrupted_by_eviction, "status")
        options = eviction.get("deleteOptions") or {}
        grace = options.get("gracePeriodSeconds")
        garbage.delete(self.store, pods, namespace, name, options.get("propagationPolicy"), grace)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    def replace(
        self,
        res: Resource,
        namespace: str,
        name: str,
        obj: dict,
        sub: str | None,
        dry_run: bool = False,
    ) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does "
                f"not match the name on the URL ({name})",
            )
        meta["name"] = name
        if res.namespaced:
            meta["namespace"] = namespace
        if sub is None:
            _check_identity(res, obj)
            validate(res, _without_server_fields(obj))
        if dry_run:
            return obj
        return self.store.replace(res, obj, sub)

    def patch(
        self,
        res: Resource,
        namespace: str,
        name: str,
        content_type: str,
        body: bytes,
        sub: str | None,
        dry_run: bool = False,
    ) -> tuple[int, dict]:
        with self.store.lock:
            current = self.store.find(res, namespace, name)
            applying = content_type.startswith("application/apply-patch")
            if current is None and not applying:
                raise not_found(res, name)
            patched = apply_content_type(
                content_type, current, body, in_service=res.kind == "Service"
            )
            if current is None:
                patched.setdefault("metadata", {})["name"] = name
                return 201, self.create(res, namespace, patched, dry_run)
            patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            return 200, self.replace(res, namespace, name, patched, sub, dry_run)


def _check_identity(res: Resource, obj: dict) -> None:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if (api_version, kind) != (res.api_version, res.kind):
        raise ApiError(
            400,
            "BadRequest",
            f"the API version in the data ({api_version}) and kind "
            f"({kind}) do not match the URL ({res.api_version}, {res.kind})",
        )


def _disrupted_by_eviction(pod: dict) -> None:
    conditions = pod["status"].setdefault("conditions", [])
    conditions[:] = [c for c in conditions if c["type"] != "DisruptionTarget"]
    conditions.append(
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting",
            "lastTransitionTime": now(),
        }
    )


def _without_server_fields(obj: dict) -> dict:
    clean = copy.deepcopy(obj)
    clean.pop("status", None)
    return clean


def _parse_path(path: str) -> tuple[Resource, str | None, str | None, str | None, bool] | None:
    """(resource, namespace, name, subresource, legacy-watch) of a resource URL, or None."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    watch = rest[:1] == ["watch"]
    rest = rest[1:] if watch else rest
    namespace = None
    if rest[:1] == ["namespaces"] and (
        len(rest) >= 4 or (len(rest) == 3 and rest[2] not in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    res = BY_PATH.get((group, version, rest[0]))
    if res is None:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in res.subresources:
        return None
    return res, namespace, name, sub, watch


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "disttrain-testcluster"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        pass

    @property
    def api(self) -> ApiServer:
        return self.server.api  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.api.requests.append(f"{method} {self.path}")
        if "protobuf" in self.headers.get("Content-Type", ""):
            try:
                body = json.dumps(protobuf.decode(body)).encode()
            except ValueError as error:
                return self._json(415, ApiError(415, "UnsupportedMediaType", str(error)).status())
        try:
            if method == "GET" and self._discovery(url.path):
                return
            parsed = _parse_path(url.path)
            if parsed is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            self._resource(method, parsed, query, body)
        except ApiError as error:
            self._json(error.code, error.status())
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as error:  # a bug in the test server: say so loudly to the client
            self._json(500, ApiError(500, "InternalError", f"test API server: {error!r}").status())
            raise

    def _discovery(self, path: str) -> bool:
        path = path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        document: dict | None = None
        if path == "/version":
            document = resources.version_info()
        elif path in ("/healthz", "/readyz", "/livez"):
            self._send(200, b"ok", "text/plain")
            return True
        elif path == "/openapi/v3":
            document = openapi.root()
        elif path.startswith("/openapi/v3/"):
            document = openapi.group_version(path[len("/openapi/v3/") :])
        elif path == "/api":
            document = resources.api_versions(f"127.0.0.1:{self.api.port}")
        elif path == "/apis":
            document = resources.api_group_list()
        elif path == "/api/v1":
            document = resources.api_resource_list("", "v1")
        elif parts[:1] == ["apis"] and len(parts) == 2:
            document = resources.api_group(parts[1])
        elif parts[:1] == ["apis"] and len(parts) == 3:
            document = resources.api_resource_list(parts[1], parts[2])
        else:
            return False
        if document is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self._json(200, document)
        return True

    def _resource(self, method: str, parsed: tuple, query: dict, body: bytes) -> None:
        res, namespace, name, sub, legacy_watch = parsed
        namespace = namespace or ("" if not res.namespaced else None)
        dry_run = query.get("dryRun") == "All"
        if method == "GET" and name is None:
            if legacy_watch or query.get("watch") in ("1", "true", "True"):
                return self._watch(res, namespace, query)
            return self._list(res, namespace, query)
        ns = namespace or ""
        if res.namespaced and namespace is None:
            raise ApiError(404, "NotFound", f"{res.plural} must be addressed in a namespace")
        if method == "GET" and sub == "log":
            return self._log(ns, name, query)
        if method == "GET":
            obj = self.api.store.get(res, ns, name)
            return self._json(200, _scale_of(obj) if sub == "scale" else obj)
        if method == "POST" and sub == "eviction":
            return self._json(201, self.api.evict(ns, name, _load(body) if body.strip() else {}))
        if method == "POST" and name is None:
            return self._json(201, self.api.create(res, ns, _load(body), dry_run))
        if method == "PUT" and name:
            return self._json(200, self.api.replace(res, ns, name, _load(body), sub, dry_run))
        if method == "PATCH" and name:
            code, obj = self.api.patch(
                res, ns, name, self.headers.get("Content-Type", ""), body, sub, dry_run
            )
            return self._json(code, obj)
        if method == "DELETE":
            return self._delete(res, ns, name, query, body)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {self.path}")

    def _list(self, res: Resource, namespace: str | None, query: dict) -> None:
        items, revision = self.api.store.list(
            res, namespace, query.get("labelSelector"), query.get("fieldSelector")
        )
        self._json(
            200,
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(revision)},
                "items": items,
            },
        )

    def _delete(self, res: Resource, ns: str, name: str | None, query: dict, body: bytes) -> None:
        options = _load(body) if body.strip() else {}
        propagation = options.get("propagationPolicy") or query.get("propagationPolicy")
        if options.get("orphanDependents") is True:
            propagation = "Orphan"
        grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        grace = None if grace is None else int(grace)
        if query.get("dryRun") == "All":
            return self._json(200, self.api.store.get(res, ns, name))
        if name is None:
            items, _ = self.api.store.list(
                res, ns or None, query.get("labelSelector"), query.get("fieldSelector")
            )
            for item in items:
                garbage.delete(
                    self.api.store, res, ns, item["metadata"]["name"], propagation, grace
                )
            return self._json(
                200,
                {
                    "kind": f"{res.kind}List",
                    "apiVersion": res.api_version,
                    "metadata": {},
                    "items": items,
                },
            )
        self._json(200, garbage.delete(self.api.store, res, ns, name, propagation, grace))

    def _watch(self, res: Resource, namespace: str | None, query: dict) -> None:
        store = self.api.store
        timeout = float(query.get("timeoutSeconds") or WATCH_DEFAULT_SECONDS)
        since = query.get("resourceVersion")
        initial: list[dict] = []
        if not since or since == "0" or query.get("sendInitialEvents") == "true":
            initial, revision = store.list(
                res, namespace, query.get("labelSelector"), query.get("fieldSelector")
            )
        else:
            revision = int(since)
        self._start_stream("application/json")
        for obj in initial:
            self._chunk(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
        if query.get("sendInitialEvents") == "true":
            bookmark = {
                "kind": res.kind,
                "apiVersion": res.api_version,
                "metadata": {
                    "resourceVersion": str(revision),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            }
            self._chunk(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
        for event in store.events_since(
            revision,
            res,
            namespace,
            query.get("labelSelector"),
            query.get("fieldSelector"),
            timeout,
            lambda: False,
        ):
            if event is not None:
                line = {"type": event.type, "object": event.obj}
                self._chunk(json.dumps(line).encode() + b"\n")
        self._chunk(b"")

    def _log(self, namespace: str, name: str, query: dict) -> None:
        pod = self.api.store.get(resources.BY_KIND[("v1", "Pod")], namespace, name)
        if self.api.log_source is None:
            raise ApiError(400, "BadRequest", "no kubelet serves logs in this cluster")
        containers = [c["name"] for c in pod["spec"].get("containers", [])]
        container = query.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: {containers}",
            )
        previous = query.get("previous") in ("1", "true", "True")
        path, running = self.api.log_source(pod, container, previous)
        follow = query.get("follow") in ("1", "true", "True") and not previous
        tail = int(query["tailLines"]) if "tailLines" in query else None
        self._start_stream("text/plain")
        with open(path, "rb") as log:
            data = log.read()
            if tail is not None:
                data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail else b""
            self._chunk(data) if data else None
            while follow:
                alive = running()
                data = log.read()
                if data:
                    self._chunk(data)
                elif not alive:
                    break
                else:
                    time.sleep(0.2)
        self._chunk(b"")

    # -- HTTP plumbing
    def _json(self, code: int, document: dict) -> None:
        self._send(code, json.dumps(document).encode(), "application/json")

    def _send(self, code: int, payload: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        """One chunk; empty data ends the stream."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def _load(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except ValueError as error:
        raise ApiError(400, "BadRequest", f"the body is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise ApiError(400, "BadRequest", "the body must be a JSON object")
    return document


def _scale_of(obj: dict) -> dict:
    meta = obj["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "resourceVersion": meta["resourceVersion"],
            "uid": meta["uid"],
        },
        "spec": {"replicas": obj["spec"].get("replicas", 1)},
        "status": {"replicas": obj.get("status", {}).get("replicas", 0)},
    }
