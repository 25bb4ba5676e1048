"""MCP servers through the running operator: discovery into the MCPServer's status (the
SDK's server over streamable HTTP, its token from a Secret), `tools/list_changed`, the
reasons a server is not Ready, and tasks whose steps call the tools a pool grants."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client
from mcp import types

from tests.mcp_server import ToolServer

from .harness import (
    APPROVALS,
    GROUP,
    NS,
    Emulated,
    agent_task,
    conditions,
    eventually,
    pool,
    step_jobs,
    succeeded,
    wait_job,
    wait_phase,
)

TOKEN = "mcp-token-7c1e"


@pytest.fixture
def server() -> Iterator[ToolServer]:
    started = ToolServer(token=TOKEN).start()
    yield started
    started.stop()


def secret(cluster: Emulated, name: str, key: str, value: str) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=NS),
        data={key: base64.b64encode(value.encode()).decode()},
    )
    client.CoreV1Api(cluster.api).create_namespaced_secret(NS, body)


def mcp_server(name: str, url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": "MCPServer",
        "metadata": {"name": name, "namespace": NS, "uid": f"mcp-uid-{name}", "generation": 1},
        "spec": {
            "url": url,
            "bearerTokenSecretRef": {"name": "inv-token", "key": "token"},
            **spec,
        },
    }


def ready(cluster: Emulated, name: str) -> dict[str, Any]:
    status = cluster.get("mcpservers", name).get("status") or {}
    return conditions(status).get("Ready", {})


def listed(cluster: Emulated, name: str, count: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status: dict[str, Any] = cluster.get("mcpservers", name).get("status") or {}
        return status if status.get("toolCount") == count else None

    found: dict[str, Any] = eventually(check, what=f"{count} tools listed for {name}")
    return found


def server_listed(cluster: Emulated, server: ToolServer) -> None:
    """The MCPServer `inv` of `server`, with its token, once its four tools are listed."""
    secret(cluster, "inv-token", "token", TOKEN)
    cluster.create("mcpservers", mcp_server("inv", server.url))
    listed(cluster, "inv", 4)


def test_discovery_lists_the_tools_with_their_risk_and_follows_list_changed(
    cluster: Emulated, operator: kopf.Memo, server: ToolServer
) -> None:
    secret(cluster, "inv-token", "token", TOKEN + "\n")
    server.page_size = 3  # every page is listed
    cluster.create("mcpservers", mcp_server("inv", server.url))
    status = listed(cluster, "inv", 4)
    tools = {t["name"]: t for t in status["tools"]}
    assert {name: t["risk"] for name, t in tools.items()} == {
        "broken": "safe",
        "delete_thing": "high",
        "lookup": "safe",
        "slow": "high",
    }
    assert tools["slow"]["why"] == "says nothing of its effects, so it is held as destructive"
    assert tools["lookup"]["inputSchema"]["required"] == ["key"]
    assert (ready(cluster, "inv")["status"], ready(cluster, "inv")["reason"]) == (
        "True",
        "ToolsListed",
    )
    assert status["lastSyncTime"]
    assert TOKEN not in json.dumps(cluster.get("mcpservers", "inv"))

    # A new tool on the server: the notification has it listed, long before a refresh.
    server.add(
        types.Tool(
            name="archive",
            description="Archive a thing.",
            input_schema={"type": "object"},
            annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False),
        )
    )
    status = listed(cluster, "inv", 5)
    assert {t["name"]: t["risk"] for t in status["tools"]}["archive"] == "medium"


def test_a_missing_secret_a_wrong_token_and_an_unreachable_server_each_say_why(
    cluster: Emulated, operator: kopf.Memo, server: ToolServer
) -> None:
    cluster.create("mcpservers", mcp_server("nosecret", server.url))
    down = mcp_server("down", "http://127.0.0.1:9/mcp")
    del down["spec"]["bearerTokenSecretRef"]
    cluster.create("mcpservers", down)
    secret(cluster, "wrong-token", "token", "not-the-token")
    wrong = mcp_server("wrong", server.url)
    wrong["spec"]["bearerTokenSecretRef"]["name"] = "wrong-token"
    cluster.create("mcpservers", wrong)

    def not_ready(name: str, reason: str) -> dict[str, Any]:
        found: dict[str, Any] = eventually(
            lambda: (c := ready(cluster, name)).get("reason") == reason and c,
            what=f"{name} not Ready with {reason}",
        )
        assert found["status"] == "False"
        return found

    missing = not_ready("nosecret", "MissingSecret")
    assert missing["message"] == (
        "header Authorization: Secret 'inv-token' with key 'token' does not exist "
        f"in namespace {NS!r}"
    )
    assert not_ready("down", "ServerUnreachable")["message"].startswith(
        "cannot connect to http://127.0.0.1:9/mcp"
    )
    assert not_ready("wrong", "ServerUnreachable")["message"] == (
        f"{server.url} answered HTTP 401: check the MCPServer's headers and bearer token"
    )
    # The Secret made: the next try (a back-off of seconds) lists the tools.
    secret(cluster, "inv-token", "token", TOKEN)
    listed(cluster, "nosecret", 4)
    assert ready(cluster, "nosecret")["status"] == "True"


def gone(cluster: Emulated, plural: str, name: str) -> bool:
    try:
        cluster.get(plural, name)
    except client.ApiException as error:
        return error.status == 404
    return False


def invocation_of(job: dict[str, Any]) -> dict[str, Any]:
    [container] = job["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = json.loads(
        next(e["value"] for e in container["env"] if e["name"] == "AGENT_STEP")
    )
    return found


def test_a_granted_tool_runs_with_its_token_mounted_and_a_destructive_one_waits(
    cluster: Emulated, operator: kopf.Memo, server: ToolServer
) -> None:
    server_listed(cluster, server)
    cluster.create("agentpools", pool("mcp", tools=["noop", "inv/lookup", "inv/delete_thing"]))
    cluster.create(
        "agenttasks",
        agent_task(
            "prune",
            {
                "poolRef": {"name": "mcp"},
                "steps": [
                    {"id": "look", "tool": "inv/lookup", "params": {"key": "answer"}},
                    {
                        "id": "drop",
                        "tool": "inv/delete_thing",
                        "dependsOn": ["look"],
                        "params": {"name": "answer"},
                    },
                ],
            },
        ),
    )
    job = wait_job(cluster, "look")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    invocation = json.loads(env["AGENT_STEP"])
    [endpoint] = invocation["mcpTools"]
    assert (endpoint["url"], endpoint["tool"]) == (server.url, "lookup")
    [header] = endpoint["headers"]
    assert header["name"] == "Authorization" and header["prefix"] == "Bearer "
    mount = next(
        m for m in container["volumeMounts"] if m["mountPath"] + "/value" == header["path"]
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"] == {
        "secretName": "inv-token",
        "items": [{"key": "token", "path": "value"}],
    }
    assert TOKEN not in json.dumps(job)
    cluster.finish_job(job, succeeded({"key": "answer", "value": 42, "found": True}))

    approval = eventually(
        lambda: next(a for a in cluster.objects(APPROVALS) if a["spec"]["stepId"] == "drop"),
        what="the ApprovalRequest of drop",
    )
    assert approval["spec"]["risk"]["level"] == "high"
    assert step_jobs(cluster, "drop") == []


def test_a_plan_with_a_tool_the_pool_does_not_grant_fails_naming_step_and_tool(
    cluster: Emulated, operator: kopf.Memo, server: ToolServer
) -> None:
    server_listed(cluster, server)
    cluster.create("agentpools", pool("lookups", tools=["inv/lookup"]))
    spec = {
        "poolRef": {"name": "lookups"},
        "steps": [{"id": "drop", "tool": "inv/delete_thing", "params": {"name": "x"}}],
    }
    cluster.create("agenttasks", agent_task("sneaky", spec))
    status = wait_phase(cluster, "sneaky", "Failed")
    assert "step 'drop'" in status["message"]
    assert "does not grant MCP tool 'inv/delete_thing'" in status["message"]
    assert step_jobs(cluster, "drop") == []


def test_a_task_applied_with_its_server_waits_for_the_list_instead_of_failing(
    cluster: Emulated, operator: kopf.Memo, server: ToolServer
) -> None:
    """As GitOps applies them: the task, its pool and the MCPServer at once."""
    secret(cluster, "inv-token", "token", TOKEN)
    cluster.create("agentpools", pool("mcp", tools=["inv/lookup"]))
    spec = {
        "poolRef": {"name": "mcp"},
        "steps": [{"id": "look", "tool": "inv/lookup", "params": {"key": "answer"}}],
    }
    cluster.create("agenttasks", agent_task("eager", spec))
    cluster.create("mcpservers", mcp_server("inv", server.url))
    job = wait_job(cluster, "look")
    assert [e["tool"] for e in invocation_of(job)["mcpTools"]] == ["lookup"]
    assert (cluster.get("agenttasks", "eager").get("status") or {}).get("phase") != "Failed"


def test_a_sub_agents_job_reaches_the_mcp_tools_it_may_call_and_fails_once_their_server_is_gone(
    cluster: Emulated, operator: kopf.Memo, server: ToolServer, caplog: pytest.LogCaptureFixture
) -> None:
    server_listed(cluster, server)
    cluster.create("agentpools", pool("agents", tools=["react_agent", "noop", "inv/*"]))
    agent = {"goal": "find the answer", "tools": ["noop", "inv/lookup"]}
    spec = {
        "poolRef": {"name": "agents"},
        "steps": [
            {"id": "first", "tool": "react_agent", "params": agent},
            {"id": "again", "tool": "inv/lookup", "params": {"key": "answer"}},
        ],
    }
    cluster.create("agenttasks", agent_task("delegate", spec))
    job = wait_job(cluster, "first")  # safe and low risk: no approval asked
    [endpoint] = invocation_of(job)["mcpTools"]
    assert (endpoint["tool"], endpoint["description"]) == (
        "lookup",
        "Look a key up in the inventory.",
    )
    assert endpoint["inputSchema"] == server.schema("lookup")
    pod = job["spec"]["template"]["spec"]
    [header] = endpoint["headers"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"].startswith("mcp-")]
    assert mount["mountPath"] + "/value" == header["path"]
    assert TOKEN not in json.dumps(job)

    cluster.delete("mcpservers", "inv")
    # Gone from the API only after the operator saw it being deleted: its finalizer is the
    # operator's, removed once the server is out of the operator's index.
    eventually(lambda: gone(cluster, "mcpservers", "inv"), what="MCPServer inv gone")
    # Its discovery daemon ended when told to, not cancelled after Kopf's timeout.
    assert not [r for r in caplog.records if "discover_tools' is cancelled" in r.getMessage()]
    cluster.finish_job(job, succeeded({"answer": "42", "iterations": 1, "trace": []}))
    status = wait_phase(cluster, "delegate", "Failed")
    assert status["reason"] == "MCPServerNotFound"
    assert status["message"] == (
        f"tool 'inv/lookup' is of MCPServer 'inv', which does not exist (namespace {NS!r})"
    )
    assert step_jobs(cluster, "again") == []
