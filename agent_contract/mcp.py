"""MCP tool servers, as both sides meet them: how a tool of a server is named and how a
step reaches its server (the client calls are in `agent_contract.mcp_client`).

A server's tool is `<server>/<tool>`: the MCPServer's name, a slash, and the tool's own
name, so it can never shadow a built-in (whose names have no slash).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "MCP_CAPABILITY",
    "SEPARATOR",
    "WHOLE_SERVER",
    "MCPEndpoint",
    "MCPHeaderFile",
    "MCPTransport",
    "granted",
    "server_of",
    "tool_name",
]

SEPARATOR = "/"
WHOLE_SERVER = "*"  # `<server>/*` in a pool's spec.tools grants every tool of the server
# The capability every MCP tool needs unless its server's overrides say otherwise: a pool
# that lists capabilities grants MCP tools only when it lists this one.
MCP_CAPABILITY = "mcp"


class MCPTransport(StrEnum):
    """How a server is spoken to: streamable HTTP (the MCP default), or the older SSE."""

    streamable_http = "StreamableHTTP"
    sse = "SSE"


def tool_name(server: str, tool: str) -> str:
    """The name plans use for `tool` of the MCPServer named `server`."""
    return f"{server}{SEPARATOR}{tool}"


def server_of(name: str) -> tuple[str, str] | None:
    """The server and the tool's own name of an MCP tool's name; None for any other tool."""
    server, slash, tool = name.partition(SEPARATOR)
    return (server, tool) if slash and server and tool else None


def granted(name: str, grants: Sequence[str] | None) -> bool:
    """Whether a pool whose spec.tools is `grants` lets its agents call tool `name`: a
    built-in when listed or when the pool lists none; a server's tool only by name,
    `<server>/<tool>` or `<server>/*`. The operator and the step's pod judge alike."""
    found = server_of(name)
    if found is None:
        return grants is None or name in grants
    return grants is not None and (name in grants or tool_name(found[0], WHOLE_SERVER) in grants)


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class MCPHeaderFile(_Wire):
    """A header whose value is read from a file (a key of a mounted Secret), never from the
    step's environment or invocation."""

    name: str
    path: str
    prefix: str = ""  # put before the file's content: "Bearer " for a bearer token


class MCPEndpoint(_Wire):
    """Where an MCP tool a step calls lives and how to reach it, with the description and
    input schema its server listed (what a sub-agent's model is offered and checked by)."""

    server: str
    tool: str  # the tool's own name on the server
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    url: str
    transport: MCPTransport = MCPTransport.streamable_http
    timeout_seconds: float = 30.0
    headers: list[MCPHeaderFile] = Field(default_factory=list)

    def header_values(self) -> dict[str, str]:
        """The headers, each read from its file (stripped of a trailing newline)."""
        values = {}
        for header in self.headers:
            with open(header.path, encoding="utf-8") as file:
                values[header.name] = header.prefix + file.read().rstrip("\n")
        return values
