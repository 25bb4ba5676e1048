"""Listing an MCP server's tools: the operator's discovery (`kube/mcp_discovery`, one loop
per MCPServer) and the embedded runner's (once, before it runs) share these calls."""

from __future__ import annotations

from collections.abc import Mapping

import mcp.types

from agent_contract.mcp_client import list_tools, session
from agent_operator.api import MCPServer, MCPServerSpec, MCPToolHints, MCPToolStatus
from agent_operator.core.mcp import offered

__all__ = ["list_offered", "offered_of"]


def _hints(tool: mcp.types.Tool) -> MCPToolHints:
    a = tool.annotations
    if a is None:
        return MCPToolHints()
    return MCPToolHints(
        read_only_hint=a.read_only_hint,
        destructive_hint=a.destructive_hint,
        idempotent_hint=a.idempotent_hint,
        open_world_hint=a.open_world_hint,
    )


def offered_of(spec: MCPServerSpec, listed: list[mcp.types.Tool]) -> list[MCPToolStatus]:
    """The listed tools the spec offers, each with the risk the policy gives it."""
    return offered(
        spec, [(t.name, t.description or "", dict(t.input_schema), _hints(t)) for t in listed]
    )


async def list_offered(server: MCPServer, headers: Mapping[str, str]) -> list[MCPToolStatus]:
    """One `tools/list` of the server, all pages; raises `MCPUnavailable`."""
    spec = server.spec
    async with session(spec.url, spec.transport, headers, spec.timeout_seconds) as (client, _):
        return offered_of(spec, await list_tools(client))
