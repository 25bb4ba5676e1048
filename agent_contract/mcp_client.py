"""The client calls to MCP servers, through the official `mcp` SDK, that the operator's
discovery and the runtime's tool calls share."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx2
import mcp.types
from mcp import ClientSession
from mcp.client.session import MessageHandlerFnT
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from agent_contract.mcp import MCPTransport

__all__ = ["MAX_PAGES", "MCPUnavailable", "list_tools", "session"]

MAX_PAGES = 100  # a server that pages for ever is cut off here

# The SDK logs its transport's teardown races with tracebacks (a message arriving as a
# timed-out session closes); every failure that matters is raised as `MCPUnavailable`
# and told in one line, so without a handler of the process's own they are not printed.
logging.getLogger("mcp").addHandler(logging.NullHandler())


class MCPUnavailable(Exception):
    """The server cannot be reached, refuses the client, or breaks the protocol; the
    message says which, in one line."""


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _describe(error: BaseException, url: str, statuses: list[int]) -> str:
    refused = next((status for status in reversed(statuses) if status >= 400), None)
    if refused in (401, 403):
        return f"{url} answered HTTP {refused}: check the MCPServer's headers and bearer token"
    if refused is not None:
        return f"{url} answered HTTP {refused}"
    leaves = _leaves(error)
    for leaf in leaves:
        if isinstance(leaf, httpx2.ConnectError):
            return f"cannot connect to {url}: {leaf}"
        if isinstance(leaf, httpx2.TimeoutException):
            return f"{url} did not answer in time"
        if isinstance(leaf, mcp.MCPError):
            return f"{url}: {leaf}"
    return f"{url}: {leaves[0]!r}"


@contextlib.asynccontextmanager
async def session(
    url: str,
    transport: MCPTransport,
    headers: Mapping[str, str],
    timeout: float,
    on_message: MessageHandlerFnT | None = None,
) -> AsyncIterator[tuple[ClientSession, mcp.types.InitializeResult]]:
    """An initialised client session with the server, and what the server said of itself.
    Whatever fails in it is raised as `MCPUnavailable`."""
    statuses: list[int] = []

    async def seen(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    try:
        async with contextlib.AsyncExitStack() as stack:
            if transport == MCPTransport.sse:
                read, write = await stack.enter_async_context(
                    sse_client(url, headers=dict(headers), timeout=timeout)
                )
            else:
                client = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers=dict(headers),
                        timeout=httpx2.Timeout(timeout),
                        follow_redirects=False,
                        event_hooks={"response": [seen]},
                    )
                )
                streams = await stack.enter_async_context(
                    streamable_http_client(url, http_client=client)
                )
                read, write = streams[0], streams[1]
            kwargs: dict[str, Any] = {"read_timeout_seconds": timeout}
            if on_message is not None:
                kwargs["message_handler"] = on_message
            client_session = await stack.enter_async_context(ClientSession(read, write, **kwargs))
            initialized = await client_session.initialize()
            yield client_session, initialized
    except Exception as error:
        raise MCPUnavailable(_describe(error, url, statuses)) from None


async def list_tools(client: ClientSession) -> list[mcp.types.Tool]:
    """Every tool the server lists, page after page (`tools/list` with its cursor)."""
    tools: list[mcp.types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        params = mcp.types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await client.list_tools(params=params)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            return tools
    raise RuntimeError(f"the server's tool list goes on past {MAX_PAGES} pages")
