"""The operator's discovery of MCP tools: one loop per MCPServer (a Kopf daemon) keeps a
session open, lists the tools (every page), writes them with their risk and a Ready
condition to the status, and lists again on `notifications/tools/list_changed`, on a
changed spec and every `refreshSeconds`. A server that cannot be reached keeps its last
list (tasks already planned go on) with Ready False and the reason, and is tried again
with a back-off up to its refresh period."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import mcp.types
from pydantic import ValidationError

from agent_contract.mcp_client import MCPUnavailable, list_tools, session
from agent_operator.api import Condition, MCPServer, MCPServerStatus, MCPToolStatus
from agent_operator.core.conditions import server_conditions
from agent_operator.core.mcp import secret_headers
from agent_operator.core.reasons import Reason
from agent_operator.kube.cluster import Cluster
from agent_operator.mcp_sync import offered_of

__all__ = ["ServerSync"]

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 2.0
LOOK_SECONDS = 1.0  # how often a waiting loop looks whether the spec changed
Obj = dict[str, Any]


class _Problem(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass
class ServerSync:
    """The discovery loop of one MCPServer; `body` is Kopf's live view of it."""

    cluster: Cluster
    body: Callable[[], Obj]
    stopped: Callable[[], bool] = lambda: False  # Kopf's flag: the server is being deleted
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _retry: float = FIRST_RETRY_SECONDS

    async def run(self) -> None:
        """Until told to stop: looked at between lists, every LOOK_SECONDS while waiting,
        so a deleted server's finalizer goes at once instead of after Kopf's cancellation
        timeout (which still ends a connect or a list that hangs)."""
        while not self.stopped():
            raw = self.body()
            generation = raw.get("metadata", {}).get("generation")
            try:
                server = MCPServer.model_validate(raw)
            except ValidationError as error:
                await self._report(raw, None, (Reason.invalid_spec, f"does not parse: {error}"))
                await self._wait(generation, 3600.0, listen=False)
                continue
            try:
                await self._serve(server, raw, generation)
            except _Problem as problem:
                await self._report(raw, None, (problem.reason, problem.message))
                log.info("MCPServer %s: %s", server.metadata.name, problem.message)
                seconds = min(self._retry, server.spec.refresh_seconds)
                self._retry = min(self._retry * 2, server.spec.refresh_seconds)
                await self._wait(generation, seconds, listen=False)

    async def _serve(self, server: MCPServer, raw: Obj, generation: int | None) -> None:
        """List, write, wait; again while the session holds and the spec is the same."""
        headers = await asyncio.to_thread(self._headers, server)
        spec = server.spec

        async def on_message(message: Any) -> None:
            if isinstance(message, mcp.types.ToolListChangedNotification):
                self._changed.set()

        try:
            async with session(
                spec.url, spec.transport, headers, spec.timeout_seconds, on_message
            ) as (client, initialized):
                listen = bool(
                    initialized.capabilities.tools and initialized.capabilities.tools.list_changed
                )
                while True:
                    self._changed.clear()
                    tools = offered_of(spec, await list_tools(client))
                    await self._report(raw, tools, None)
                    self._retry = FIRST_RETRY_SECONDS
                    if not await self._wait(generation, spec.refresh_seconds, listen):
                        return  # the spec changed: a new session with it
                    raw = self.body()
        except MCPUnavailable as error:
            raise _Problem(Reason.server_unreachable, str(error)) from None

    def _headers(self, server: MCPServer) -> dict[str, str]:
        values = {}
        namespace = server.metadata.namespace
        for name, ref, prefix in secret_headers(server.spec):
            value = self.cluster.secret_value(namespace, ref.name, ref.key)
            if value is None:
                raise _Problem(
                    Reason.missing_secret,
                    f"header {name}: Secret {ref.name!r} with key {ref.key!r} does not exist "
                    f"in namespace {namespace!r}",
                )
            values[name] = prefix + value.rstrip("\n")
        return values

    async def _wait(self, generation: int | None, seconds: float, listen: bool) -> bool:
        """Until `seconds` pass or the list changed (True), or the spec changed or the
        daemon is told to stop (False)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stopped() or self.body().get("metadata", {}).get("generation") != generation:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), LOOK_SECONDS)
            except TimeoutError:
                continue
            if listen:
                return True
            self._changed.clear()
        return True

    async def _report(
        self, raw: Obj, tools: list[MCPToolStatus] | None, problem: tuple[Reason, str] | None
    ) -> None:
        """The status: the tools when listed (else the last ones stay), Ready either way."""
        meta, old = raw.get("metadata", {}), raw.get("status") or {}
        try:
            conditions = [Condition.model_validate(c) for c in old.get("conditions", [])]
        except ValidationError:
            conditions = []
        count = len(tools) if tools is not None else int(old.get("toolCount", 0) or 0)
        now = datetime.now(UTC).replace(microsecond=0)
        status: Obj = {
            "observedGeneration": meta.get("generation"),
            "conditions": [
                c.wire()
                for c in server_conditions(problem, conditions, meta.get("generation"), now, count)
            ],
        }
        if tools is not None:
            listed = MCPServerStatus(tools=tools, tool_count=len(tools), last_sync_time=now)
            status |= {
                k: v
                for k, v in listed.wire().items()
                if k in ("tools", "toolCount", "lastSyncTime")
            }
        await asyncio.to_thread(
            self.cluster.patch_status, "mcpservers", meta.get("namespace", ""), meta["name"], status
        )
