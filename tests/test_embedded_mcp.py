"""The embedded default with an MCP server's tools: `agent-operator run -f` on the example,
whose MCPServer is the SDK's server of the tests, listed before the run and called by the
step processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mcp_server import ToolServer
from tests.support.openai_server import ScriptedOpenAI, text, tool_calls
from tests.test_embedded import EXAMPLES, agent_operator, write_task

EXAMPLE = EXAMPLES / "mcp-tools.yaml"


@pytest.fixture(scope="module")
def server() -> Iterator[ToolServer]:
    started = ToolServer().start()
    yield started
    started.stop()


def example(url: str, edit: Any = None) -> list[dict[str, Any]]:
    """The example's documents, its server at `url`, changed by `edit(server, pool, task)`."""
    server, pool, task = yaml.safe_load_all(EXAMPLE.read_text())
    server["spec"]["url"] = url
    if edit is not None:
        edit(server, pool, task)
    return [server, pool, task]


def test_the_example_runs_its_safe_tool_unattended_and_asks_for_the_destructive_one(
    tmp_path: Path, server: ToolServer
) -> None:
    server.calls.clear()
    path = write_task(tmp_path, *example(server.url))
    dry = agent_operator(tmp_path, "-f", path, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    rows = {line.split()[0]: line.split()[1:] for line in dry.stdout.splitlines()[1:]}
    assert rows["look"][:2] == ["inventory/lookup", "after:"] and "runs" in rows["look"]
    assert rows["look"][-3:] == ["safe", "runs", "unattended"]
    assert rows["prune"][-3:] == ["high", "needs", "approval"]
    assert server.calls == []  # listing the tools calls none of them

    # No terminal: the destructive step is refused, nothing is deleted.
    refused = agent_operator(tmp_path, "-f", path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert server.calls == [("lookup", {"key": "stale-widget"})]
    assert "step prune ApprovalRejected" in refused.stdout

    server.calls.clear()
    approved = agent_operator(tmp_path, "-f", path, "--approve-all")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert server.calls == [
        ("lookup", {"key": "stale-widget"}),
        ("delete_thing", {"name": "stale-widget"}),
    ]
    [look] = [line for line in approved.stdout.splitlines() if line.startswith("  look ")]
    assert '"value":"unused since 2025-03"' in look  # the lookup's structured outputs


def test_a_tool_the_pool_does_not_grant_is_refused_before_anything_runs(
    tmp_path: Path, server: ToolServer
) -> None:
    def grant_lookup_only(server_doc: Any, pool: Any, task: Any) -> None:
        pool["spec"]["tools"] = ["inventory/lookup"]

    server.calls.clear()
    path = write_task(tmp_path, *example(server.url, grant_lookup_only))
    result = agent_operator(tmp_path, "-f", path, "--approve-all")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "step 'prune'" in result.stderr
    assert "does not grant MCP tool 'inventory/delete_thing'" in result.stderr
    assert server.calls == []


def test_params_that_break_the_tools_schema_are_refused(tmp_path: Path, server: ToolServer) -> None:
    def misspell(server_doc: Any, pool: Any, task: Any) -> None:
        task["spec"]["steps"][0]["params"] = {"kee": "stale-widget"}

    path = write_task(tmp_path, *example(server.url, misspell))
    result = agent_operator(tmp_path, "-f", path, "--dry-run")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "step 'look'" in result.stderr and "'key' is a required property" in result.stderr


def test_a_server_that_cannot_be_reached_is_one_clear_line(tmp_path: Path) -> None:
    path = write_task(tmp_path, *example("http://127.0.0.1:9/mcp"))
    result = agent_operator(tmp_path, "-f", path, "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: MCPServer 'inventory': cannot connect to http://127.0.0.1:9/mcp: "
        + result.stderr.split("http://127.0.0.1:9/mcp: ", 1)[1].strip()
    ]
    assert "Traceback" not in result.stderr


def test_headers_from_secrets_are_not_yet_read_by_the_embedded_runner(
    tmp_path: Path, server: ToolServer
) -> None:
    def with_token(server_doc: Any, pool: Any, task: Any) -> None:
        server_doc["spec"]["bearerTokenSecretRef"] = {"name": "inv", "key": "token"}

    path = write_task(tmp_path, *example(server.url, with_token))
    result = agent_operator(tmp_path, "-f", path, "--dry-run")
    assert result.returncode == 2
    assert "MCPServer 'inventory' takes headers from Secrets" in result.stderr
    assert "run the task on a cluster" in result.stderr


def test_a_pool_granting_a_server_the_file_lacks_is_refused(
    tmp_path: Path, server: ToolServer
) -> None:
    _server, pool, task = example(server.url)
    path = write_task(tmp_path, pool, task)
    result = agent_operator(tmp_path, "-f", path, "--dry-run")
    assert result.returncode == 2
    assert "MCPServer 'inventory', which the file does not define" in result.stderr


@pytest.mark.llm
def test_a_sub_agent_calls_the_files_mcp_tool_through_the_model(
    tmp_path: Path, server: ToolServer
) -> None:
    def delegate(server_doc: Any, pool: Any, task: Any) -> None:
        pool["spec"]["tools"] = ["react_agent", "inventory/lookup"]
        pool["spec"]["model"] = {"baseURL": openai.base_url, "model": "scripted"}
        goal = {"goal": "Is stale-widget still used?", "tools": ["inventory/lookup"]}
        task["spec"]["steps"] = [{"id": "ask", "tool": "react_agent", "params": goal}]

    server.calls.clear()
    with ScriptedOpenAI(api_key="sk-test") as openai:
        openai.reply(
            tool_calls([("inventory__lookup", {"key": "stale-widget"})]),
            text("No: unused since 2025-03."),
        )
        path = write_task(tmp_path, *example(server.url, delegate))
        result = agent_operator(tmp_path, "-f", path, env={"OPENAI_API_KEY": "sk-test"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.calls == [("lookup", {"key": "stale-widget"})]
    assert "No: unused since 2025-03." in result.stdout
    [offered] = openai.requests[0]["tools"]
    assert offered["function"]["name"] == "inventory__lookup"
