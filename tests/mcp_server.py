"""A real MCP server for the tests and the example, built with the official SDK and served
over streamable HTTP (or the older SSE transport, `sse=True`) by uvicorn in a thread of its
own.

Its tools: `lookup` (read-only, closed world, structured output), `delete_thing`
(destructive), `broken` (answers with an error result), `slow` (sleeps; says nothing of its
effects). It can page its tool list, ask for a bearer token, and tell its clients that the
list changed (`tools/list_changed`).

    python -m tests.mcp_server [--port 8931] [--token T]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import mcp.types as types
import uvicorn
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.sse import SseServerTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[dict[str, Any]], Awaitable[types.CallToolResult]]


def _text(text: str, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=error)


async def _lookup(args: dict[str, Any]) -> types.CallToolResult:
    key = str(args.get("key", ""))
    value = {"answer": 42, "colour": "blue", "stale-widget": "unused since 2025-03"}.get(key)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{key}={value}")],
        structured_content={"key": key, "value": value, "found": value is not None},
    )


async def _delete(args: dict[str, Any]) -> types.CallToolResult:
    return _text(f"deleted {args.get('name')}")


async def _broken(args: dict[str, Any]) -> types.CallToolResult:
    return _text("the backend refused: quota exceeded", error=True)


async def _slow(args: dict[str, Any]) -> types.CallToolResult:
    await asyncio.sleep(float(args.get("seconds", 1)))
    return _text("done")


def _schema(**properties: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in properties.items()},
        "required": sorted(properties),
        "additionalProperties": False,
    }


def default_tools() -> dict[str, tuple[types.Tool, Handler]]:
    hints = types.ToolAnnotations
    return {
        "lookup": (
            types.Tool(
                name="lookup",
                description="Look a key up in the inventory.",
                input_schema=_schema(key="string"),
                annotations=hints(read_only_hint=True, open_world_hint=False),
            ),
            _lookup,
        ),
        "delete_thing": (
            types.Tool(
                name="delete_thing",
                description="Delete a thing from the inventory.",
                input_schema=_schema(name="string"),
                annotations=hints(read_only_hint=False, destructive_hint=True),
            ),
            _delete,
        ),
        "broken": (
            types.Tool(
                name="broken",
                description="Always fails.",
                input_schema={"type": "object"},
                annotations=hints(read_only_hint=True, open_world_hint=False),
            ),
            _broken,
        ),
        "slow": (
            types.Tool(
                name="slow",
                description="Sleeps, then answers.",
                input_schema=_schema(seconds="number"),
            ),
            _slow,
        ),
    }


class _Server(Server[Any]):
    """Says it sends `tools/list_changed` (the SDK takes that from initialization options)."""

    def create_initialization_options(self, *args: Any, **kwargs: Any) -> InitializationOptions:
        return super().create_initialization_options(NotificationOptions(tools_changed=True))


class _BearerToken:
    """Refuses (401) every request without `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != f"Bearer {self.token}".encode():
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await self.app(scope, receive, send)


def _sse_app(server: Server[Any]) -> ASGIApp:
    """The SDK's SSE transport: an event stream at /sse, the client's messages at /messages/."""
    transport = SseServerTransport("/messages/")

    async def stream(request: Request) -> Response:
        async with transport.connect_sse(request.scope, request.receive, request._send) as (
            read,
            write,
        ):
            await server.run(read, write, server.create_initialization_options())
        return Response()

    return Starlette(
        routes=[
            Route("/sse", endpoint=stream, methods=["GET"]),
            Mount("/messages/", app=transport.handle_post_message),
        ]
    )


@dataclass
class ToolServer:
    """The server, started on a free port of 127.0.0.1 (or `port`)."""

    page_size: int | None = None
    token: str | None = None
    sse: bool = False  # the SSE transport (GET /sse, POST /messages/) instead
    port: int = 0
    host: str = "127.0.0.1"
    tools: dict[str, tuple[types.Tool, Handler]] = field(default_factory=default_tools)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _sessions: list[Any] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _uvicorn: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/{'sse' if self.sse else 'mcp'}"

    def schema(self, tool: str) -> dict[str, Any]:
        """The input schema `tools/list` gives for `tool`."""
        return dict(self.tools[tool][0].input_schema)

    async def _list(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        if ctx.session not in self._sessions:
            self._sessions.append(ctx.session)
        tools = [tool for tool, _ in self.tools.values()]
        if self.page_size is None:
            return types.ListToolsResult(tools=tools)
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + self.page_size
        more = str(end) if end < len(tools) else None
        return types.ListToolsResult(tools=tools[start:end], next_cursor=more)

    async def _call(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        self.calls.append((params.name, arguments))
        found = self.tools.get(params.name)
        if found is None:
            return _text(f"unknown tool {params.name!r}", error=True)
        return await found[1](arguments)

    def start(self) -> ToolServer:
        if not self.port:
            with socket.socket() as probe:
                probe.bind((self.host, 0))
                self.port = probe.getsockname()[1]
        server = _Server("test-tools", on_list_tools=self._list, on_call_tool=self._call)
        app: ASGIApp = _sse_app(server) if self.sse else server.streamable_http_app(host=self.host)
        if self.token:
            app = _BearerToken(app, self.token)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning")
        self._uvicorn = uvicorn.Server(config)

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._uvicorn.serve())  # type: ignore[union-attr]

        self._thread = threading.Thread(target=serve, name="mcp-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.01)
        return self

    def add(self, tool: types.Tool, handler: Handler = _delete) -> None:
        """A new tool, and a `tools/list_changed` to every client that listed the tools."""
        self.tools[tool.name] = (tool, handler)
        assert self._loop is not None
        for session in list(self._sessions):
            with contextlib.suppress(Exception):  # a client that has gone
                asyncio.run_coroutine_threadsafe(
                    session.send_tool_list_changed(), self._loop
                ).result(5)

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token")
    args = parser.parse_args()
    server = ToolServer(token=args.token, port=args.port, host=args.host).start()
    print(f"MCP server on {server.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    server.stop()


if __name__ == "__main__":
    main()
