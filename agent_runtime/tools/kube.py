"""Kubernetes tools through the dynamic client: get, list, server-side apply, delete.

Configuration comes from the pod's service account, else the kubeconfig named by
`KUBECONFIG` (read when the tool runs, not when `kubernetes.config` is imported) or
~/.kube/config. The target namespace is always the `namespace` param, never only the
manifest's, because the operator's safety policy looks at that param to protect namespaces.
"""

from __future__ import annotations

import json
import os
from typing import Any

from agent_contract.builtin import kube as specs
from agent_runtime.registry import Tool, ToolContext, ToolFailure, ToolOutcome

__all__ = ["KUBERNETES_APPLY", "KUBERNETES_DELETE", "KUBERNETES_GET", "KUBERNETES_LIST", "TOOLS"]

DEFAULT_TIMEOUT = 30.0
FIELD_MANAGER = "agent-runtime"


def _kubernetes() -> Any:
    """The `kubernetes` package, imported on first use (slow to import, and untyped)."""
    import kubernetes.config
    import kubernetes.dynamic.exceptions

    return kubernetes


def _client(ctx: ToolContext) -> Any:
    k8s = _kubernetes()
    configuration = k8s.client.Configuration()
    try:
        k8s.config.load_incluster_config(client_configuration=configuration)
    except k8s.config.ConfigException:
        path = ctx.env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        if not any(os.path.isfile(p) for p in path.split(os.pathsep) if p):
            raise ToolFailure(
                "no Kubernetes configuration: not running in a pod with a service account, and "
                f"no kubeconfig at {path} (set KUBECONFIG)"
            ) from None
        try:
            k8s.config.load_kube_config(config_file=path, client_configuration=configuration)
        except k8s.config.ConfigException as exc:
            raise ToolFailure(f"invalid kubeconfig {path}: {exc}") from None
    return k8s.dynamic.DynamicClient(k8s.client.ApiClient(configuration))


def _call(
    ctx: ToolContext,
    params: dict[str, Any],
    method: str,
    *,
    missing_ok: bool = False,
    **kwargs: Any,
) -> dict[str, Any] | None:
    """Call the dynamic client's `method` on the params' kind and namespace; the JSON answer.

    API errors become readable failures; a missing object is None when `missing_ok`.
    """
    from urllib3.exceptions import HTTPError

    errors = _kubernetes().dynamic.exceptions
    timeout = ctx.budget(float(params.get("timeoutSeconds", DEFAULT_TIMEOUT)))
    target = params.get("manifest") or params
    api_version, kind = str(target["apiVersion"]), str(target["kind"])
    try:
        dynamic = _client(ctx)  # discovery starts here: it may fail to connect
        resource = dynamic.resources.get(api_version=api_version, kind=kind)
        _check_scope(resource, params.get("namespace"), kind)
        response = getattr(dynamic, method)(
            resource,
            namespace=params.get("namespace"),
            serialize=False,
            _request_timeout=timeout,
            **kwargs,
        )
    except errors.ResourceNotFoundError:
        raise ToolFailure(f"the API server has no kind {kind} in {api_version}") from None
    except errors.DynamicApiError as exc:
        if missing_ok and exc.status == 404:
            return None
        raise ToolFailure(f"Kubernetes API error {exc.status}: {_reason(exc)}") from None
    except HTTPError as exc:
        raise ToolFailure(f"cannot reach the Kubernetes API server: {exc}") from None
    return _without_managed_fields(json.loads(response.data))


def _reason(exc: Any) -> str:
    """The `message` of the API server's Status body, else the HTTP reason."""
    try:
        status = json.loads(exc.body)
    except (TypeError, ValueError):
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return str(status["message"])
    return str(exc.reason)


def _check_scope(resource: Any, namespace: str | None, kind: str) -> None:
    if resource.namespaced and not namespace:
        raise ToolFailure(f"params.namespace is required: {kind} is namespaced")
    if not resource.namespaced and namespace:
        raise ToolFailure(f"params.namespace must be omitted: {kind} is cluster-scoped")


def _without_managed_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The object (or list) without managedFields: noise for agents, and large."""
    for each in [document, *document.get("items", [])]:
        each.get("metadata", {}).pop("managedFields", None)
    return document


def _get(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    return ToolOutcome(outputs={"object": _call(ctx, params, "get", name=params["name"])})


def _list(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    listing = _call(
        ctx,
        params,
        "get",
        label_selector=params.get("labelSelector"),
        field_selector=params.get("fieldSelector"),
        limit=params.get("limit", 100),
    )
    assert listing is not None  # only a missing object is None, and only when missing_ok
    items = listing.get("items") or []
    more = bool(listing.get("metadata", {}).get("continue"))
    return ToolOutcome(outputs={"items": items, "count": len(items), "truncated": more})


def _apply(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    manifest = params["manifest"]
    namespace = params.get("namespace")
    given = manifest.get("metadata", {}).get("namespace")
    if given is not None and given != namespace:
        raise ToolFailure(
            f"manifest namespace {given!r} differs from params.namespace {namespace!r}; "
            "set params.namespace (it is what the safety policy checks)"
        )
    applied = _call(
        ctx,
        params,
        "server_side_apply",
        body=manifest,
        field_manager=params.get("fieldManager", FIELD_MANAGER),
        force_conflicts=params.get("force", False),
        dry_run="All" if params.get("dryRun") else None,
    )
    return ToolOutcome(outputs={"object": applied})


def _delete(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    deleted = _call(
        ctx,
        params,
        "delete",
        missing_ok=True,  # already gone: a retried delete succeeds
        name=params["name"],
        propagation_policy=params.get("propagationPolicy", "Background"),
        dry_run="All" if params.get("dryRun") else None,
    )
    return ToolOutcome(outputs={"deleted": deleted is not None, "name": params["name"]})


KUBERNETES_GET = Tool(specs.KUBERNETES_GET, _get)
KUBERNETES_LIST = Tool(specs.KUBERNETES_LIST, _list)
KUBERNETES_APPLY = Tool(specs.KUBERNETES_APPLY, _apply)
KUBERNETES_DELETE = Tool(specs.KUBERNETES_DELETE, _delete)

TOOLS = [KUBERNETES_GET, KUBERNETES_LIST, KUBERNETES_APPLY, KUBERNETES_DELETE]
