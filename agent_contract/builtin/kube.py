"""The specs of the Kubernetes tools: get, list, server-side apply, delete."""

from __future__ import annotations

from agent_contract.builtin._schema import TIMEOUT, obj
from agent_contract.tool import RiskLevel, ToolSpec

__all__ = ["KUBERNETES_APPLY", "KUBERNETES_DELETE", "KUBERNETES_GET", "KUBERNETES_LIST", "SPECS"]

DNS_LABEL = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
NAME = {"type": "string", "minLength": 1, "maxLength": 253}

_TARGET = {
    "apiVersion": {"type": "string", "minLength": 1, "description": "e.g. v1, apps/v1"},
    "kind": {"type": "string", "minLength": 1, "description": "e.g. ConfigMap"},
    "namespace": {**DNS_LABEL, "description": "omit for cluster-scoped kinds"},
    "timeoutSeconds": TIMEOUT,
}
_DRY_RUN = {"type": "boolean", "description": "let the server validate without persisting"}

KUBERNETES_GET = ToolSpec(
    name="kubernetes_get",
    description="Read one Kubernetes object by apiVersion, kind, name and namespace.",
    params_schema=obj({**_TARGET, "name": NAME}, required=["apiVersion", "kind", "name"]),
    risk=RiskLevel.low,
    capabilities=frozenset({"kubernetes:read"}),
    timeout_seconds=60,
)

KUBERNETES_LIST = ToolSpec(
    name="kubernetes_list",
    description="List Kubernetes objects of a kind, optionally by label or field selector.",
    params_schema=obj(
        {
            **_TARGET,
            "labelSelector": {"type": "string"},
            "fieldSelector": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
        },
        required=["apiVersion", "kind"],
    ),
    risk=RiskLevel.low,
    capabilities=frozenset({"kubernetes:read"}),
    timeout_seconds=60,
)

KUBERNETES_APPLY = ToolSpec(
    name="kubernetes_apply",
    description=(
        "Create or update one object by server-side apply. The manifest's namespace, if set, "
        "must equal params.namespace."
    ),
    params_schema=obj(
        {
            "manifest": {
                "type": "object",
                "required": ["apiVersion", "kind", "metadata"],
                "properties": {
                    "apiVersion": {"type": "string", "minLength": 1},
                    "kind": {"type": "string", "minLength": 1},
                    "metadata": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": NAME, "namespace": DNS_LABEL},
                    },
                },
            },
            "namespace": _TARGET["namespace"],
            "fieldManager": {"type": "string", "minLength": 1, "maxLength": 128},
            "force": {"type": "boolean", "description": "take over fields other managers own"},
            "dryRun": _DRY_RUN,
            "timeoutSeconds": TIMEOUT,
        },
        required=["manifest"],
    ),
    risk=RiskLevel.high,
    capabilities=frozenset({"kubernetes:write"}),
    timeout_seconds=60,
)

KUBERNETES_DELETE = ToolSpec(
    name="kubernetes_delete",
    description="Delete one Kubernetes object; deleting one that is already gone succeeds.",
    params_schema=obj(
        {
            **_TARGET,
            "name": NAME,
            "propagationPolicy": {"enum": ["Foreground", "Background", "Orphan"]},
            "dryRun": _DRY_RUN,
        },
        required=["apiVersion", "kind", "name"],
    ),
    risk=RiskLevel.high,
    capabilities=frozenset({"kubernetes:write"}),
    timeout_seconds=60,
)

SPECS = [KUBERNETES_GET, KUBERNETES_LIST, KUBERNETES_APPLY, KUBERNETES_DELETE]
