"""The spec of `http_request`: one HTTP call to a host on an allowlist."""

from __future__ import annotations

from typing import Any

from agent_contract.builtin._schema import ENV_NAME, TIMEOUT, obj
from agent_contract.tool import NETWORK, RiskLevel, ToolRegistry, ToolSpec

__all__ = ["HTTP_REQUEST", "READ_METHODS", "SPECS"]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _risk(params: dict[str, Any], registry: ToolRegistry) -> RiskLevel:
    """Reads are low risk; anything that can change the remote side is medium."""
    return RiskLevel.low if params.get("method", "GET") in READ_METHODS else RiskLevel.medium


HTTP_REQUEST = ToolSpec(
    name="http_request",
    description=(
        "Make one HTTP request to an allowed host and return status, selected headers and the "
        "body (parsed as `json` when it is JSON). HTTP errors (>= 400) fail unless "
        "failOnStatus is false."
    ),
    params_schema=obj(
        {
            "url": {"type": "string", "pattern": "^https?://", "description": "http(s) URL"},
            "method": {
                "enum": ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"],
                "default": "GET",
            },
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "headersFromEnv": {
                "type": "object",
                "additionalProperties": ENV_NAME,
                "description": "header name -> environment variable holding its value",
            },
            "body": {"type": "string", "description": "raw request body"},
            "json": {"description": "request body sent as JSON"},
            "allowedHosts": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "host, host:port or *.domain; narrows the pool's allowlist",
            },
            "timeoutSeconds": TIMEOUT,
            "maxBodyBytes": {"type": "integer", "minimum": 1, "maximum": 10 * 1024 * 1024},
            "failOnStatus": {"type": "boolean", "default": True},
        },
        required=["url"],
        extra={"not": {"required": ["body", "json"]}},
    ),
    risk=RiskLevel.medium,
    risk_for=_risk,
    capabilities=frozenset({NETWORK}),
    timeout_seconds=60,
)

SPECS = [HTTP_REQUEST]
