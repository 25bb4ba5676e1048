"""MCP tools as plans see them: the risk a tool's annotations and its server's overrides
give it, the tools a server offers, and the registry of a pool with the servers it grants.

The MCP specification calls annotations hints a client must not trust blindly; the mapping
therefore only lowers a tool's risk below `high` on an explicit hint, and a tool that says
nothing is held as the specification's defaults describe it (not read-only, destructive,
open world): `high`, which needs approval under the default policy. An administrator who
knows better says so in the MCPServer's `overrides`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agent_contract import RiskLevel, ToolRegistry, ToolSpec
from agent_contract.mcp import (
    MCP_CAPABILITY,
    MCPEndpoint,
    MCPHeaderFile,
    granted,
    server_of,
    tool_name,
)
from agent_operator.api import (
    AgentPoolSpec,
    MCPServer,
    MCPServerSpec,
    MCPToolHints,
    MCPToolOverride,
    MCPToolStatus,
    SecretKeyRef,
)

__all__ = [
    "SECRETS_DIR",
    "granted_servers",
    "header_dir",
    "offered",
    "pool_registry",
    "secret_headers",
    "step_endpoints",
    "tool_risk",
    "tool_specs",
]

# Where a step pod finds the Secret keys of its servers' headers: `header_dir(...)/value`.
SECRETS_DIR = "/var/run/agent-operator/mcp"


def tool_risk(hints: MCPToolHints, override: MCPToolOverride | None) -> tuple[RiskLevel, str]:
    """The risk of a tool and why, from its server's override or else its annotations."""
    if override is not None and override.risk is not None:
        return override.risk, "set by the MCPServer's overrides"
    if hints.read_only_hint:
        if hints.open_world_hint is False:
            return RiskLevel.safe, "read-only and closed-world (readOnlyHint, openWorldHint false)"
        return RiskLevel.low, "read-only, but may reach an open world (readOnlyHint)"
    if hints.destructive_hint is False:
        return RiskLevel.medium, "changes things but destroys nothing (destructiveHint false)"
    if hints.destructive_hint:
        return RiskLevel.high, "may destroy things (destructiveHint)"
    return RiskLevel.high, "says nothing of its effects, so it is held as destructive"


def _override(spec: MCPServerSpec, name: str) -> MCPToolOverride | None:
    return next((o for o in spec.overrides if o.name == name), None)


def offered(
    spec: MCPServerSpec, listed: Iterable[tuple[str, str, dict[str, object], MCPToolHints]]
) -> list[MCPToolStatus]:
    """The tools of a server's list (name, description, input schema, hints) that its
    spec offers, each with the risk the policy gives it: what its status shows."""
    tools = []
    for name, description, schema, hints in listed:
        if spec.tools is not None and name not in spec.tools:
            continue
        risk, why = tool_risk(hints, _override(spec, name))
        tools.append(
            MCPToolStatus(
                name=name,
                description=description,
                input_schema=dict(schema),
                hints=hints,
                risk=risk,
                why=why,
            )
        )
    return sorted(tools, key=lambda t: t.name)


def tool_specs(server: MCPServer) -> list[ToolSpec]:
    """The server's tools as the registry holds them, from the tools its status lists and
    the overrides its spec has now (so a changed override counts before the next list)."""
    specs = []
    for tool in server.status.tools:
        if server.spec.tools is not None and tool.name not in server.spec.tools:
            continue
        override = _override(server.spec, tool.name)
        risk, _why = tool_risk(tool.hints, override)
        capabilities = (
            override.capabilities
            if override is not None and override.capabilities is not None
            else [MCP_CAPABILITY]
        )
        specs.append(
            ToolSpec(
                name=tool_name(server.metadata.name, tool.name),
                description=tool.description,
                params_schema=tool.input_schema,
                risk=risk,
                capabilities=frozenset(capabilities),
                timeout_seconds=server.spec.timeout_seconds,
                requires_approval=override is not None and override.requires_approval,
            )
        )
    return specs


def granted_servers(pool: AgentPoolSpec) -> set[str]:
    """The servers some of whose tools the pool grants (`<server>/<tool>`, `<server>/*`).
    A pool that lists no tools grants every built-in but no MCP tool: a server's tools
    are granted by name only."""
    return {found[0] for entry in pool.tools or [] if (found := server_of(entry)) is not None}


def pool_registry(
    base: ToolRegistry, pool: AgentPoolSpec, servers: Sequence[MCPServer]
) -> ToolRegistry:
    """`base` and the tools of the servers (of the pool's namespace) the pool grants."""
    wanted = granted_servers(pool)
    if not wanted:
        return base
    return base.with_tools(
        spec for server in servers if server.metadata.name in wanted for spec in tool_specs(server)
    )


def secret_headers(spec: MCPServerSpec) -> list[tuple[str, SecretKeyRef, str]]:
    """Every header a server's requests carry as (name, Secret key, prefix): its headers,
    then the bearer token as `Authorization`."""
    headers = [(h.name, h.secret_key_ref, h.prefix) for h in spec.headers]
    if spec.bearer_token_secret_ref is not None:
        headers.append(("Authorization", spec.bearer_token_secret_ref, "Bearer "))
    return headers


def header_dir(server: str, index: int) -> str:
    """The directory where a step's pod mounts the Secret key of header `index` (in
    `secret_headers` order) of the MCPServer named `server`."""
    return f"{SECRETS_DIR}/{server}/{index}"


def _endpoint(server: MCPServer, spec: ToolSpec, tool: str) -> MCPEndpoint:
    return MCPEndpoint(
        server=server.metadata.name,
        tool=tool,
        description=spec.description,
        input_schema=dict(spec.params_schema),
        url=server.spec.url,
        transport=server.spec.transport,
        timeout_seconds=server.spec.timeout_seconds,
        headers=[
            MCPHeaderFile(
                name=name, path=f"{header_dir(server.metadata.name, index)}/value", prefix=prefix
            )
            for index, (name, _ref, prefix) in enumerate(secret_headers(server.spec))
        ],
    )


def step_endpoints(
    tools: Iterable[str], servers: Sequence[MCPServer], pool: AgentPoolSpec
) -> tuple[list[MCPEndpoint], list[MCPServer]]:
    """How a step reaches each MCP tool among `tools` (its own, and those its sub-agent may
    call), with the description and schema its server lists, and the servers they are of,
    whose header Secrets the step's pod mounts. Only a tool the server offers and the pool
    grants gets one: LookupError names any other (the core refuses those first)."""
    by_name = {server.metadata.name: server for server in servers}
    endpoints, used = [], {}
    for name in dict.fromkeys(tools):
        found = server_of(name)
        if found is None:
            continue
        server = by_name.get(found[0])
        if server is None:
            raise LookupError(f"tool {name!r} is of MCPServer {found[0]!r}, which does not exist")
        spec = next((t for t in tool_specs(server) if t.name == name), None)
        if spec is None or not granted(name, pool.tools):
            why = "does not offer it" if spec is None else "is not granted by the pool"
            raise LookupError(f"tool {name!r} of MCPServer {found[0]!r} {why}")
        endpoints.append(_endpoint(server, spec, found[1]))
        used[found[0]] = server
    return endpoints, list(used.values())
