"""LLM planning through the real `openai` client, over HTTP, against the scripted server."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from agent_contract import Prices, RiskLevel, ToolRegistry, cost_usd
from agent_contract.builtin import basic
from agent_operator.api import AgentPoolSpec, AgentTaskSpec, PoolModel
from agent_operator.core.plan import PlanningResult
from agent_operator.planner import PlanReason, api_key_from_env, plan_with_llm
from tests.support.openai_server import ScriptedOpenAI, error, slow, text, tool_calls

pytestmark = pytest.mark.llm

KEY = "sk-test-0123456789abcdef"
REGISTRY = ToolRegistry(basic.SPECS)
SPEC = AgentTaskSpec(goal="greet the user, then wait a second", inputs={"name": "Ada"})

GOOD_PLAN = {
    "steps": [
        {
            "id": "greet",
            "tool": "noop",
            "params": {"outputs": {"message": "hello ${inputs.name}"}},
            "rationale": "say hello",
        },
        {"id": "wait", "tool": "sleep", "params": {"seconds": 1}, "dependsOn": ["greet"]},
    ]
}


def plan(
    server: ScriptedOpenAI,
    *,
    pool: AgentPoolSpec | None = None,
    api_key: str | None = KEY,
    timeout: float = 5,
    prices: Prices | None = None,
    registry: ToolRegistry = REGISTRY,
) -> PlanningResult:
    model = PoolModel(
        base_url=server.base_url, model="gpt-4o-mini", timeout_seconds=timeout, prices=prices
    )
    return asyncio.run(
        plan_with_llm(SPEC, pool or AgentPoolSpec(), registry, api_key=api_key, model=model)
    )


def steps_json(*steps: dict[str, Any]) -> str:
    return json.dumps({"steps": list(steps)})


def last_user_message(request: dict[str, Any]) -> str:
    content: str = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
    return content


def test_good_plan_is_validated_and_counted(
    openai_server: ScriptedOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    openai_server.api_key = KEY  # the server refuses any other key
    openai_server.reply(text(json.dumps(GOOD_PLAN), prompt_tokens=1000, completion_tokens=200))

    outcome = plan(openai_server)

    assert outcome.reason is None and outcome.message is None
    assert outcome.plan is not None
    assert [(s.id, s.tool, s.depends_on) for s in outcome.plan] == [
        ("greet", "noop", []),
        ("wait", "sleep", ["greet"]),
    ]
    assert outcome.plan[0].timeout_seconds == 10  # the tool's default
    assert outcome.plan[0].risk.level is RiskLevel.safe
    assert outcome.usage.tokens == 1200
    assert outcome.usage.cost_usd == pytest.approx((1000 * 0.15 + 200 * 0.60) / 1e6)

    [request] = openai_server.requests
    assert request["model"] == "gpt-4o-mini"
    response_format = request["response_format"]
    assert response_format["type"] == "json_schema"
    schema = response_format["json_schema"]["schema"]
    step_schema = schema["properties"]["steps"]["items"]
    assert step_schema["properties"]["tool"]["enum"] == ["fail", "noop", "sleep"]
    assert {"id", "tool", "params", "dependsOn", "when", "retries", "timeoutSeconds"} <= set(
        step_schema["properties"]
    )
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(schema)
    asked = json.loads(last_user_message(request))
    assert asked["goal"] == SPEC.goal and asked["inputs"] == {"name": "Ada"}
    sleep = next(tool for tool in asked["tools"] if tool["name"] == "sleep")
    assert sleep["params"]["required"] == ["seconds"] and sleep["risk"] == "safe"
    assert sleep["description"].startswith("Waits")
    assert "planned 2 steps" in caplog.text and KEY not in caplog.text


def test_the_planner_is_offered_the_granted_mcp_tools_with_their_schema_and_risk(
    openai_server: ScriptedOpenAI,
) -> None:
    from agent_operator.api import MCPServer, MCPServerSpec, MCPToolHints
    from agent_operator.core.mcp import offered, pool_registry

    spec = MCPServerSpec.model_validate({"url": "http://inv.test/mcp"})
    schema = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}
    listed = [
        ("lookup", "Look a key up.", schema, MCPToolHints(read_only_hint=True)),
        ("drop", "Drop a key.", schema, MCPToolHints()),
    ]
    server = MCPServer.model_validate(
        {
            "metadata": {"name": "inv"},
            "spec": spec.wire(),
            "status": {"tools": [t.wire() for t in offered(spec, listed)]},
        }
    )
    pool = AgentPoolSpec(tools=["noop", "inv/lookup"])
    registry = pool_registry(REGISTRY, pool, [server])
    chosen = {"steps": [{"id": "find", "tool": "inv/lookup", "params": {"key": "answer"}}]}
    openai_server.reply(text(json.dumps(chosen)))

    outcome = plan(openai_server, pool=pool, registry=registry)

    assert outcome.plan is not None, outcome.message
    [step] = outcome.plan
    assert (step.tool, step.risk.level) == ("inv/lookup", RiskLevel.low)
    [request] = openai_server.requests
    step_schema = request["response_format"]["json_schema"]["schema"]["properties"]["steps"]
    assert step_schema["items"]["properties"]["tool"]["enum"] == ["inv/lookup", "noop"]
    offered_tools = {t["name"]: t for t in json.loads(last_user_message(request))["tools"]}
    assert offered_tools["inv/lookup"]["params"] == schema
    assert offered_tools["inv/lookup"]["risk"] == "low"
    assert "inv/drop" not in offered_tools  # not granted: never offered


def test_malformed_json_is_reasked_with_the_error(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(text('{"steps": [{"id": "greet",'), text(json.dumps(GOOD_PLAN)))

    outcome = plan(openai_server)

    assert outcome.plan is not None and [s.id for s in outcome.plan] == ["greet", "wait"]
    assert outcome.usage.tokens == 60  # both calls
    first, second = openai_server.requests
    assert "not valid JSON" in last_user_message(second)
    # The re-ask carries the conversation: the bad answer, then the problems.
    assert second["messages"][-2] == {"role": "assistant", "content": '{"steps": [{"id": "greet",'}
    assert second["messages"][: len(first["messages"])] == first["messages"]


def test_step_field_errors_name_the_step_and_field(openai_server: ScriptedOpenAI) -> None:
    bad = steps_json({"id": "greet", "tool": "noop", "timeoutSeconds": 0})
    openai_server.reply(text(bad), text(json.dumps(GOOD_PLAN)))

    assert plan(openai_server).plan is not None
    reask = last_user_message(openai_server.requests[1])
    assert "step 'greet' (steps[0]).timeoutSeconds" in reask


def test_malformed_twice_fails_with_invalid_plan(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(text("Sure! Here is your plan."), text("[1, 2, 3]"))

    outcome = plan(openai_server)

    assert outcome.plan is None
    assert outcome.reason is PlanReason.invalid_plan and outcome.reason.value == "InvalidPlan"
    assert outcome.message is not None and '{"steps": [...]}' in outcome.message
    assert len(openai_server.requests) == 2  # asked once, re-asked once, no more
    assert outcome.usage.tokens == 60


def test_unknown_tool_is_reasked_then_fails_naming_step_and_tool(
    openai_server: ScriptedOpenAI,
) -> None:
    bad = steps_json({"id": "wipe", "tool": "rm-rf", "params": {}})
    openai_server.reply(text(bad), text(bad))

    outcome = plan(openai_server)

    assert outcome.reason is PlanReason.invalid_plan and outcome.plan is None
    assert outcome.message is not None
    assert "step 'wipe'" in outcome.message and "unknown tool 'rm-rf'" in outcome.message
    assert "unknown tool 'rm-rf'" in last_user_message(openai_server.requests[1])


def test_tool_the_pool_does_not_grant_is_refused(openai_server: ScriptedOpenAI) -> None:
    pool = AgentPoolSpec(tools=["noop"])
    openai_server.reply(text(json.dumps(GOOD_PLAN)), text(json.dumps(GOOD_PLAN)))

    outcome = plan(openai_server, pool=pool)

    assert outcome.reason is PlanReason.invalid_plan and outcome.plan is None
    assert outcome.message is not None
    assert "step 'wait'" in outcome.message and "does not grant tool 'sleep'" in outcome.message
    # The model was only offered what the pool grants.
    request = openai_server.requests[0]
    items = request["response_format"]["json_schema"]["schema"]["properties"]["steps"]["items"]
    assert items["properties"]["tool"]["enum"] == ["noop"]
    assert [t["name"] for t in json.loads(last_user_message(request))["tools"]] == ["noop"]


def test_pool_granting_no_tools_fails_without_asking(openai_server: ScriptedOpenAI) -> None:
    outcome = plan(openai_server, pool=AgentPoolSpec(tools=[]))

    assert outcome.reason is PlanReason.invalid_plan
    assert outcome.message is not None and "spec.tools" in outcome.message
    assert openai_server.requests == []


def test_without_structured_output_falls_back_to_json_mode() -> None:
    fenced = "```json\n" + json.dumps(GOOD_PLAN) + "\n```"
    with ScriptedOpenAI(supports_json_schema=False) as server:
        server.reply(text("not json"), text(fenced))

        outcome = plan(server)

    assert outcome.plan is not None and [s.id for s in outcome.plan] == ["greet", "wait"]
    formats = [r.get("response_format", {}).get("type") for r in server.requests]
    # Refused once, then JSON mode for the answer and the re-ask alike.
    assert formats == ["json_schema", "json_object", "json_object"]
    system = server.requests[1]["messages"][0]
    assert system["role"] == "system" and '"dependsOn"' in system["content"]


def test_slow_server_times_out(openai_server: ScriptedOpenAI) -> None:
    late = text(json.dumps(GOOD_PLAN))
    openai_server.reply(slow(5, late), slow(5, late))  # the client retries once

    outcome = plan(openai_server, timeout=0.2)

    assert outcome.reason is PlanReason.llm_timeout and outcome.plan is None
    assert outcome.message is not None and "did not answer within 0.2s" in outcome.message
    assert outcome.usage.tokens == 0


def test_failing_server_gives_llm_error(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(error(500, "model overloaded"), error(503, "model still overloaded"))

    outcome = plan(openai_server)

    assert outcome.reason is PlanReason.llm_error and outcome.plan is None
    assert outcome.message is not None and "model still overloaded" in outcome.message
    assert openai_server.base_url in outcome.message
    assert len(openai_server.requests) == 2  # one retry by the client


def test_reask_failure_keeps_the_tokens_already_spent(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(text("{"), error(500, "down"), error(500, "down"))

    outcome = plan(openai_server)

    assert outcome.reason is PlanReason.llm_error
    assert outcome.usage.tokens == 30


def test_unreachable_server_gives_llm_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = PoolModel(base_url=f"http://127.0.0.1:{port}/v1", timeout_seconds=5)

    outcome = asyncio.run(plan_with_llm(SPEC, AgentPoolSpec(), REGISTRY, api_key=KEY, model=model))

    assert outcome.reason is PlanReason.llm_error
    assert outcome.message is not None and f"127.0.0.1:{port}" in outcome.message


@pytest.mark.parametrize("api_key", [None, ""])
def test_missing_key_is_a_clear_outcome(openai_server: ScriptedOpenAI, api_key: str | None) -> None:
    outcome = plan(openai_server, api_key=api_key)

    assert outcome.reason is PlanReason.missing_api_key and outcome.plan is None
    assert outcome.message is not None and "apiKeySecretRef" in outcome.message
    assert openai_server.requests == []


def test_api_key_is_sent_but_never_reported(openai_server: ScriptedOpenAI) -> None:
    # This server echoes a wrong key in its 401, as careless servers do.
    openai_server.api_key = "sk-the-right-one"

    outcome = plan(openai_server)

    assert outcome.reason is PlanReason.llm_error
    assert outcome.message is not None and "Incorrect API key" in outcome.message
    assert KEY not in outcome.message


def test_api_key_from_env() -> None:
    assert api_key_from_env({"OPENAI_API_KEY": KEY}) == KEY
    assert api_key_from_env({"OPENAI_API_KEY": ""}) is None
    assert api_key_from_env({}) is None


def test_cost_table() -> None:
    assert cost_usd("gpt-4o", 1_000_000, 0) == pytest.approx(2.50)
    assert cost_usd("gpt-4o-mini-2024-07-18", 0, 1_000_000) == pytest.approx(0.60)
    assert cost_usd("llama3", 1_000_000, 1_000_000) == 0.0
    own = Prices(input_per_million=1.0, output_per_million=3.0)
    assert cost_usd("llama3", 1_000_000, 1_000_000, own) == pytest.approx(4.0)


def test_the_pools_prices_override_the_table_for_planning(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(text(json.dumps(GOOD_PLAN), prompt_tokens=1000, completion_tokens=200))
    outcome = plan(openai_server, prices=Prices(input_per_million=10, output_per_million=50))
    assert outcome.usage.cost_usd == pytest.approx((1000 * 10 + 200 * 50) / 1e6)


# --- the scripted server itself, which other test tiers rely on --------------------------


def test_scripted_server_speaks_openai(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(tool_calls([("noop", {"outputs": {"a": 1}}), ("fail", {})]))

    async def talk() -> tuple[list[str], list[tuple[str, dict[str, Any]]], str]:
        async with openai.AsyncOpenAI(
            base_url=openai_server.base_url, api_key=KEY, max_retries=0
        ) as client:
            models = [model.id async for model in client.models.list()]
            completion = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            calls = [
                (call.function.name, json.loads(call.function.arguments))
                for call in completion.choices[0].message.tool_calls or []
                if call.type == "function"
            ]
            with pytest.raises(openai.InternalServerError, match="no scripted answer"):
                await client.chat.completions.create(model="m", messages=[])
            return models, calls, completion.choices[0].finish_reason

    models, calls, finish = asyncio.run(talk())
    assert models == ["scripted"]
    assert calls == [("noop", {"outputs": {"a": 1}}), ("fail", {})]
    assert finish == "tool_calls"
    assert [r["messages"] for r in openai_server.requests] == [
        [{"role": "user", "content": "hi"}],
        [],
    ]


def test_scripted_server_runs_standalone(tmp_path: Path) -> None:
    script = tmp_path / "answers.json"
    script.write_text(json.dumps([{"text": "from the script", "completion_tokens": 7}]))
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.openai_server", "--script", str(script)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
        completion = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "from the script"
        assert completion.usage is not None and completion.usage.completion_tokens == 7
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
