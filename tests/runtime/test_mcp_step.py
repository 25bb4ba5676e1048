"""`agent-runtime run-step` calling tools of a real MCP server (the SDK's, over streamable
HTTP): outputs, error results, the bearer token read from a file, timeouts, a server down,
grants, the listed schema, and a sub-agent calling them through the real `openai` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mcp_server import ToolServer
from tests.runtime.test_cli import run_step
from tests.support.openai_server import ScriptedOpenAI, text, tool_calls

TOKEN = "tok-3f9a"


@pytest.fixture(scope="module")
def server() -> Iterator[ToolServer]:
    started = ToolServer(token=TOKEN).start()
    yield started
    started.stop()


def endpoint(server_url: str, tool: str, token_file: Path | None, **more: Any) -> dict[str, Any]:
    headers = (
        [{"name": "Authorization", "path": str(token_file), "prefix": "Bearer "}]
        if token_file
        else []
    )
    return {"server": "inv", "tool": tool, "url": server_url, "headers": headers, **more}


def step(
    server_url: str, tool: str, params: dict[str, Any], token_file: Path | None, **more: Any
) -> dict[str, Any]:
    return {
        "task": "demo",
        "taskUID": "uid-1",
        "stepId": "s1",
        "tool": f"inv/{tool}",
        "params": params,
        "mcpTools": [endpoint(server_url, tool, token_file)],
        "allowedTools": [f"inv/{tool}"],
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


def test_a_pool_granting_the_whole_server_lets_the_step_run(
    tmp_path: Path, server: ToolServer, token_file: Path
) -> None:
    granted = step(server.url, "lookup", {"key": "k"}, token_file, allowedTools=["inv/*"])
    run = run_step(tmp_path, granted)
    assert run.code == 0, run.result
    refused = {**granted, "allowedTools": ["other/*", "inv/delete_thing"]}
    run = run_step(tmp_path, refused)
    assert (run.code, run.result["message"]) == (
        2,
        "tool: 'inv/lookup' is not in allowedTools (allowed: other/*, inv/delete_thing)",
    )
    by_omission = {**granted, "allowedTools": None}
    run = run_step(tmp_path, by_omission)
    assert (run.code, run.result["message"]) == (
        2,
        "tool: 'inv/lookup' is not in allowedTools (allowed: every built-in, no MCP tool)",
    )


def test_params_that_break_the_listed_schema_are_refused_in_the_pod(
    tmp_path: Path, server: ToolServer, token_file: Path
) -> None:
    listed = step(server.url, "lookup", {"name": "k"}, token_file)
    listed["mcpTools"][0]["inputSchema"] = server.schema("lookup")
    run = run_step(tmp_path, listed)
    assert run.code == 2
    assert "'key' is a required property" in run.result["message"]
    assert not [call for call in server.calls if call[1] == {"name": "k"}]


@pytest.mark.llm
def test_a_sub_agent_calls_an_mcp_tool_offered_by_a_name_the_api_allows(
    tmp_path: Path, server: ToolServer, token_file: Path, openai_server: ScriptedOpenAI
) -> None:
    openai_server.reply(
        tool_calls([("inv__lookup", {"key": "answer"}), ("inv__lookup", {"nokey": 1})]),
        text("The answer is 42."),
    )
    listed = {"description": "Look a key up.", "inputSchema": server.schema("lookup")}
    agent = {
        "task": "demo",
        "taskUID": "uid-1",
        "stepId": "s1",
        "tool": "react_agent",
        "params": {"goal": "What is the answer?", "tools": ["inv/lookup", "noop"]},
        "allowedTools": ["react_agent", "noop", "inv/*"],
        "model": {"baseURL": openai_server.base_url, "model": "scripted"},
        "mcpTools": [endpoint(server.url, "lookup", token_file, **listed)],
    }
    run = run_step(tmp_path, agent, env={"OPENAI_API_KEY": "sk-test"})
    assert run.code == 0, run.result
    assert run.result["outputs"]["answer"] == "The answer is 42."
    trace = run.result["outputs"]["trace"]
    assert [(t["tool"], t["ok"]) for t in trace] == [("inv/lookup", True), ("inv/lookup", False)]
    assert "'key' is a required property" in trace[1]["error"]
    assert ("lookup", {"key": "answer"}) in server.calls
    offered = {t["function"]["name"]: t["function"] for t in openai_server.requests[0]["tools"]}
    assert set(offered) == {"inv__lookup", "noop"}
    assert offered["inv__lookup"]["description"] == "Look a key up."
    assert offered["inv__lookup"]["parameters"] == server.schema("lookup")
    replies = [m for m in openai_server.requests[1]["messages"] if m["role"] == "tool"]
    assert json.loads(replies[0]["content"]) == {"key": "answer", "value": 42, "found": True}
    assert TOKEN not in run.stdout + run.stderr + json.dumps(openai_server.requests)


def test_a_server_speaking_only_sse_is_called_over_sse(tmp_path: Path) -> None:
    server = ToolServer(token=TOKEN, sse=True).start()
    try:
        token = tmp_path / "token"
        token.write_text(TOKEN)
        over_sse = step(server.url, "lookup", {"key": "answer"}, token)
        over_sse["mcpTools"][0]["transport"] = "SSE"
        run = run_step(tmp_path, over_sse)
        assert run.code == 0, run.result
        assert run.result["outputs"] == {"key": "answer", "value": 42, "found": True}
        streamable = step(server.url, "lookup", {"key": "answer"}, token)  # the default
        assert run_step(tmp_path, streamable).code == 1
    finally:
        server.stop()
    assert server.calls == [("lookup", {"key": "answer"})]
