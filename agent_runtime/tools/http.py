"""`http_request`: one HTTP call to a host on an allowlist.

The allowlist is the pool's `spec.allowedHosts`, which reaches the step in its invocation;
a pool that grants no host lets the tool reach none. `params.allowedHosts` can only narrow
it, so a plan cannot widen where a step may reach. Every request is checked, redirects
included. Header values that are secrets come from environment variables
(`headersFromEnv`), never from params.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from agent_contract.builtin import http as specs
from agent_runtime.registry import Tool, ToolContext, ToolFailure, ToolOutcome, ToolTimeout

__all__ = ["HTTP_REQUEST", "TOOLS", "allowed_hosts", "host_allowed"]

_NO_HOST_GRANTED = (
    "no host is allowed: the pool grants none; list the hosts steps may reach in the "
    "AgentPool's spec.allowedHosts (host, host:port or *.domain)"
)
# Headers worth reporting; cookies and auth challenges stay out of results.
REPORTED_HEADERS = (
    "content-type",
    "content-length",
    "location",
    "etag",
    "last-modified",
    "retry-after",
    "cache-control",
)
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 64 * 1024
MAX_REDIRECTS = 5


def allowed_hosts(params: Mapping[str, Any], granted: list[str]) -> list[str]:
    """The effective allowlist: the pool's grant, narrowed by the params (never widened)."""
    pool = [h.strip().lower() for h in granted if h.strip()]
    given = [h.strip().lower() for h in params.get("allowedHosts", []) if h.strip()]
    return [h for h in given if h in pool] if given else pool


def host_allowed(url: httpx.URL, allowlist: list[str]) -> bool:
    """Whether `url` matches an entry: `host`, `host:port` or `*.domain` (subdomains only)."""
    host = url.host.lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    for entry in allowlist:
        parts = urlsplit(f"//{entry}")
        try:
            entry_host, entry_port = (parts.hostname or ""), parts.port
        except ValueError:
            continue
        if entry_port is not None and entry_port != port:
            continue
        if entry_host.startswith("*."):
            if host.endswith(entry_host[1:]):
                return True
        elif host == entry_host:
            return True
    return False


def _headers(params: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    headers = dict(params.get("headers", {}))
    for header, variable in params.get("headersFromEnv", {}).items():
        if variable not in env:
            raise ToolFailure(f"headersFromEnv.{header}: environment variable {variable} is unset")
        headers[header] = env[variable]
    return headers


def _request(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    method = params.get("method", "GET")
    granted = ctx.invocation.allowed_hosts
    allowlist = allowed_hosts(params, granted)
    if not allowlist:
        raise ToolFailure(
            f"no host is allowed: params.allowedHosts keeps none of the pool's "
            f"({', '.join(granted)})"
            if granted
            else _NO_HOST_GRANTED
        )

    def check(request: httpx.Request) -> None:
        if not host_allowed(request.url, allowlist):
            raise ToolFailure(
                f"host {request.url.netloc.decode()!r} is not allowed "
                f"(allowed: {', '.join(allowlist)})"
            )

    timeout = ctx.budget(float(params.get("timeoutSeconds", DEFAULT_TIMEOUT)))
    limit = int(params.get("maxBodyBytes", DEFAULT_MAX_BODY))
    client = httpx.Client(
        timeout=timeout,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        event_hooks={"request": [check]},
    )
    try:
        with (
            client,
            client.stream(
                method,
                params["url"],
                headers=_headers(params, ctx.env),
                content=params.get("body"),
                json=params.get("json"),
            ) as response,
        ):
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limit:
                    break
    except httpx.TimeoutException as exc:
        raise ToolTimeout(f"{method} {params['url']} timed out") from exc
    except httpx.HTTPError as exc:
        raise ToolFailure(f"{method} {params['url']} failed: {exc}") from exc
    return _outcome(method, response, bytes(data[:limit]), len(data) > limit, params)


def _outcome(
    method: str, response: httpx.Response, data: bytes, truncated: bool, params: dict[str, Any]
) -> ToolOutcome:
    body = data.decode(response.encoding or "utf-8", errors="replace")
    outputs: dict[str, Any] = {
        "status": response.status_code,
        "url": str(response.url),
        "headers": {h: response.headers[h] for h in REPORTED_HEADERS if h in response.headers},
        "body": body,
        "truncated": truncated,
    }
    if "json" in response.headers.get("content-type", "") and not truncated and data:
        with contextlib.suppress(ValueError):  # said JSON but is not: `body` still carries it
            outputs["json"] = json.loads(data)
    if response.status_code >= 400 and params.get("failOnStatus", True):
        raise ToolFailure(
            f"{method} {response.url} returned HTTP {response.status_code}: {body[-300:]}",
            outputs,
        )
    return ToolOutcome(outputs=outputs)


HTTP_REQUEST = Tool(specs.HTTP_REQUEST, _request)

TOOLS = [HTTP_REQUEST]
