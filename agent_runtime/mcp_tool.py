"""Tools of MCP servers, made from the invocation's endpoints since the image cannot know
every server's tools: a step calls one, or its sub-agent may. Params are checked against
the schema the server listed (by the operator, the runtime, and the server again)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import mcp.types

from agent_contract import RiskLevel, ToolSpec
from agent_contract.mcp import MCPEndpoint, tool_name
from agent_contract.mcp_client import MCPUnavailable, session
from agent_runtime.registry import Tool, ToolContext, ToolFailure, ToolOutcome, ToolTimeout

__all__ = ["mcp_tool"]

DEADLINE_SLACK = 0.1  # seconds: a call that failed this close to the deadline ran into it


def mcp_tool(endpoint: MCPEndpoint) -> Tool:
    """The tool `endpoint` names, called over the network with the step's params."""
    spec = ToolSpec(
        name=tool_name(endpoint.server, endpoint.tool),
        description=endpoint.description or f"{endpoint.tool} of MCP server {endpoint.server}",
        params_schema=endpoint.input_schema,
        risk=RiskLevel.high,
        timeout_seconds=endpoint.timeout_seconds,
    )

    def run(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        return asyncio.run(_call(endpoint, params, ctx))

    return Tool(spec, run)


def _text(result: mcp.types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, mcp.types.TextContent))


async def _call(endpoint: MCPEndpoint, params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    """`tools/call`: structured content as the outputs, or the text as `text`; an error
    result fails the step with the tool's own words."""
    try:
        headers = endpoint.header_values()
    except OSError as error:
        raise ToolFailure(
            f"cannot read a header of MCP server {endpoint.server}: {error}"
        ) from None
    budget = ctx.budget(endpoint.timeout_seconds)
    try:
        async with session(endpoint.url, endpoint.transport, headers, budget) as (client, _):
            result = await client.call_tool(
                endpoint.tool, params, read_timeout_seconds=ctx.budget(budget)
            )
    except MCPUnavailable as error:
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline - DEADLINE_SLACK:
            raise ToolTimeout(f"MCP server {endpoint.server}: {error}") from None
        raise ToolFailure(f"MCP server {endpoint.server}: {error}") from None
    if not isinstance(result, mcp.types.CallToolResult):
        raise ToolFailure(
            f"MCP server {endpoint.server} answered {type(result).__name__}, not a tool result"
        )
    text = _text(result)
    if result.is_error:
        raise ToolFailure(f"{endpoint.tool}: {text or 'the tool reported an error'}")
    if result.structured_content is not None:
        return ToolOutcome(dict(result.structured_content))
    return ToolOutcome({"text": text})
