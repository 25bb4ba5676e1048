"""`agent-runtime run-step` calling tools of a real MCP server (the SDK's, over streamable
HTTP): outputs, error results, the bearer token read from a file, timeouts, a server down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mcp_server import ToolServer
from tests.runtime.test_cli import run_step

TOKEN = "tok-3f9a"


@pytest.fixture(scope="module")
def server() -> Iterator[ToolServer]:
    started = ToolServer(token=TOKEN).start()
    yield started
    started.stop()


def step(
    server_url: str, tool: str, params: dict[str, Any], token_file: Path | None, **more: Any
) -> dict[str, Any]:
    headers = (
        [{"name": "Authorization", "path": str(token_file), "prefix": "Bearer "}]
        if token_file
        else []
    )
    return {
        "task": "demo",
        "taskUID": "uid-1",
        "stepId": "s1",
        "tool": f"inv/{tool}",
        "params": params,
        "mcp": {"server": "inv", "tool": tool, "url": server_url, "headers": headers},
        **more,
    }


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")  # as a Secret's key may end
    return path


def test_structured_content_becomes_the_outputs(
    tmp_path: Path, server: ToolServer, token_file: Path
) -> None:
    run = run_step(tmp_path, step(server.url, "lookup", {"key": "answer"}, token_file))
    assert run.code == 0, run.result
    assert run.result["outputs"] == {"key": "answer", "value": 42, "found": True}
    assert ("lookup", {"key": "answer"}) in server.calls
    assert TOKEN not in run.stdout + run.stderr


def test_text_content_becomes_the_text_output(
    tmp_path: Path, server: ToolServer, token_file: Path
) -> None:
    run = run_step(tmp_path, step(server.url, "delete_thing", {"name": "x"}, token_file))
    assert (run.code, run.result["outputs"]) == (0, {"text": "deleted x"})


def test_an_error_result_fails_the_step_with_the_tools_message(
    tmp_path: Path, server: ToolServer, token_file: Path
) -> None:
    run = run_step(tmp_path, step(server.url, "broken", {}, token_file))
    assert run.code == 1
    assert run.result["message"] == "broken: the backend refused: quota exceeded"


def test_a_refused_token_and_a_server_down_fail_in_one_line(
    tmp_path: Path, server: ToolServer
) -> None:
    run = run_step(tmp_path, step(server.url, "lookup", {"key": "k"}, None))
    assert run.code == 1
    assert run.result["message"] == (
        f"MCP server inv: {server.url} answered HTTP 401: check the MCPServer's headers and "
        "bearer token"
    )
    down = run_step(tmp_path, step("http://127.0.0.1:9/mcp", "lookup", {"key": "k"}, None))
    assert down.code == 1
    assert down.result["message"].startswith(
        "MCP server inv: cannot connect to http://127.0.0.1:9/mcp"
    )


def test_a_slow_tool_times_out_at_the_steps_timeout(
    tmp_path: Path, server: ToolServer, token_file: Path
) -> None:
    slow = step(server.url, "slow", {"seconds": 30}, token_file, timeoutSeconds=1)
    run = run_step(tmp_path, slow)
    assert run.code == 1
    assert (run.result["reason"], run.result["message"]) == (
        "TimedOut",
        "inv/slow timed out after 1s",
    )


def test_a_step_naming_one_tool_and_an_endpoint_of_another_is_refused(
    tmp_path: Path, server: ToolServer, token_file: Path
) -> None:
    mixed = {**step(server.url, "lookup", {"key": "k"}, token_file), "tool": "inv/delete_thing"}
    run = run_step(tmp_path, mixed)
    assert run.code == 2
    assert "'inv/delete_thing' is not in this image's registry" in run.result["message"]
