"""A minimal OpenAPI v3 document per group version.

kubectl (and helm, through the same client libraries) reads `/openapi/v3` to learn whether
the server validates fields itself: it looks for a `fieldValidation` query parameter on
the PATCH operation tagged with the kind's `x-kubernetes-group-version-kind`. When found, it
sends `fieldValidation=Strict` and leaves validation to the server, which is exactly what
this server does (validation.py). The documents carry paths and parameters only, no schemas.
"""

from __future__ import annotations

import hashlib
import json

from .resources import RESOURCES, Resource

QUERY_PARAMETERS = ["fieldValidation", "fieldManager", "dryRun", "force"]


def _group_version_path(res: Resource) -> str:
    return f"api/{res.version}" if not res.group else f"apis/{res.group}/{res.version}"


def root() -> dict:
    paths = {}
    for gv in sorted({_group_version_path(r) for r in RESOURCES}):
        digest = hashlib.sha256(json.dumps(group_version(gv)).encode()).hexdigest()[:16].upper()
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return {"paths": paths}


def group_version(gv_path: str) -> dict | None:
    served = [r for r in RESOURCES if _group_version_path(r) == gv_path]
    if not served:
        return None
    paths = {}
    for res in served:
        gvk = {"group": res.group, "version": res.version, "kind": res.kind}
        params = [
            {"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for p in QUERY_PARAMETERS
        ]
        scope = f"/{gv_path}/namespaces/{{namespace}}" if res.namespaced else f"/{gv_path}"
        operation = {
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
        }
        paths[f"{scope}/{res.plural}/{{name}}"] = {
            **{
                verb: {**operation, "x-kubernetes-action": action}
                for verb, action in (
                    ("get", "get"),
                    ("put", "put"),
                    ("patch", "patch"),
                    ("delete", "delete"),
                )
            }
        }
        paths[f"{scope}/{res.plural}"] = {"post": {**operation, "x-kubernetes-action": "post"}}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }
