"""llm_complete and react_agent through the real openai client, over HTTP to a scripted server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_contract import ModelSettings, Prices, RiskLevel, ToolRegistry
from agent_contract.builtin.llm import REACT_AGENT_TOOL
from agent_runtime.registry import ToolFailure, ToolTimeout
from tests.runtime.helpers import call
from tests.support.openai_server import ScriptedOpenAI, error, slow, text, tool_calls

pytestmark = pytest.mark.llm

KEY = {"OPENAI_API_KEY": "sk-test-0123456789"}


def model(server: ScriptedOpenAI, **fields: Any) -> ModelSettings:
    return ModelSettings(base_url=server.base_url, model="scripted", **fields)


def test_completion_returns_text_and_tokens(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(text("Paris", prompt_tokens=7, completion_tokens=2))
    params = {"prompt": "Capital of France?", "system": "Be brief.", "maxTokens": 5}
    outcome = call("llm_complete", params, env=KEY, model=model(openai_server, temperature=0.1))
    assert outcome.outputs == {"text": "Paris", "finishReason": "stop", "model": "scripted"}
    assert outcome.usage.tokens == 9
    sent = openai_server.requests[0]
    assert sent["model"] == "scripted"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert sent["temperature"] == 0.1
    assert sent["max_tokens"] == 5


def test_llm_tools_count_cost_at_the_pools_prices_else_the_tables(
    openai_server: ScriptedOpenAI,
) -> None:
    openai_server.reply(*[text("hi", prompt_tokens=1000, completion_tokens=200)] * 3)
    settings = ModelSettings(base_url=openai_server.base_url, model="gpt-4o-mini")
    outcome = call("llm_complete", {"prompt": "hi"}, env=KEY, model=settings)
    assert outcome.usage.cost_usd == pytest.approx((1000 * 0.15 + 200 * 0.60) / 1e6)
    own = settings.model_copy(
        update={"prices": Prices(input_per_million=10, output_per_million=50)}
    )
    outcome = call("llm_complete", {"prompt": "hi"}, env=KEY, model=own)
    assert outcome.usage.cost_usd == pytest.approx((1000 * 10 + 200 * 50) / 1e6)
    outcome = call("react_agent", {"goal": "g", "tools": ["noop"]}, env=KEY, model=own)
    assert outcome.usage.cost_usd == pytest.approx((1000 * 10 + 200 * 50) / 1e6)


def test_completion_can_ask_for_and_parse_json(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(text('{"ok": true}'), text("not json"))
    params = {"messages": [{"role": "user", "content": "status?"}], "json": True}
    outcome = call("llm_complete", params, env=KEY, model=model(openai_server))
    assert outcome.outputs["json"] == {"ok": True}
    assert openai_server.requests[0]["response_format"] == {"type": "json_object"}
    with pytest.raises(ToolFailure, match="not JSON") as failure:
        call("llm_complete", params, env=KEY, model=model(openai_server))
    assert failure.value.usage.tokens == 30  # spent even though the answer was unusable


def test_api_error_is_reported_with_status_and_reason(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(error(400, "context length exceeded"))
    with pytest.raises(ToolFailure, match="answered HTTP 400: context length exceeded"):
        call("llm_complete", {"prompt": "hi"}, env=KEY, model=model(openai_server))


def test_slow_model_times_out(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(*[slow(5, text("late"))] * 3)
    settings = model(openai_server, timeout_seconds=0.3)
    with pytest.raises(ToolTimeout):
        call("llm_complete", {"prompt": "hi"}, env=KEY, model=settings, timeout=0.6)


def test_missing_model_or_key_is_named(openai_server: ScriptedOpenAI) -> None:
    with pytest.raises(ToolFailure, match="needs a model"):
        call("llm_complete", {"prompt": "hi"}, env=KEY)
    settings = model(openai_server, api_key_env="MY_KEY")
    with pytest.raises(ToolFailure, match="environment variable MY_KEY"):
        call("llm_complete", {"prompt": "hi"}, env=KEY, model=settings)
    assert openai_server.requests == []


@pytest.mark.parametrize(
    "params", [{}, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}]
)
def test_prompt_xor_messages(params: dict[str, Any]) -> None:
    registry = ToolRegistry.default()
    tool = registry.get("llm_complete")
    assert tool is not None and tool.param_errors(params)


# --- react_agent -------------------------------------------------------------


def test_agent_calls_tools_then_answers(openai_server: ScriptedOpenAI, tmp_path: Path) -> None:
    openai_server.reply(
        tool_calls([("noop", {"outputs": {"weather": "sunny"}})], prompt_tokens=5),
        tool_calls([("shell", {"command": ["cat", "plan.txt"], "cwd": str(tmp_path)})]),
        text("It is sunny; the plan says go.", prompt_tokens=1, completion_tokens=1),
    )
    (tmp_path / "plan.txt").write_text("go")
    params = {"goal": "Should we go out?", "tools": ["noop", "shell"], "context": {"city": "Oslo"}}
    outcome = call("react_agent", params, env=KEY, model=model(openai_server))
    assert outcome.outputs["answer"] == "It is sunny; the plan says go."
    assert outcome.outputs["iterations"] == 3
    assert [(t["tool"], t["ok"]) for t in outcome.outputs["trace"]] == [
        ("noop", True),
        ("shell", True),
    ]
    assert outcome.usage.tokens == 25 + 30 + 2
    first, _, last = openai_server.requests
    assert {spec["function"]["name"] for spec in first["tools"]} == {"noop", "shell"}
    shell_spec = next(s for s in first["tools"] if s["function"]["name"] == "shell")
    assert shell_spec["function"]["parameters"]["required"] == ["command"]
    assert "Oslo" in first["messages"][1]["content"]
    results = [m for m in last["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == ["call_0", "call_0"]
    assert json.loads(results[0]["content"]) == {"weather": "sunny"}
    assert json.loads(results[1]["content"])["stdout"] == "go"


def test_agent_feeds_errors_back_so_the_model_can_correct(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(
        tool_calls(
            [
                ("shell", {"cmd": "ls"}),
                ("sql_execute", {"statement": "DROP TABLE x"}),
                ("fail", {"message": "boom"}),
            ]
        ),
        text("done"),
    )
    params = {"goal": "try things", "tools": ["shell", "fail", "sql_execute"]}
    outcome = call(
        "react_agent",
        params,
        env=KEY,
        model=model(openai_server),
        allowed_tools=["react_agent", "shell", "fail"],
    )
    assert outcome.outputs["answer"] == "done"
    offered = {spec["function"]["name"] for spec in openai_server.requests[0]["tools"]}
    assert offered == {"shell", "fail"}  # sql_execute is not in allowedTools
    errors = [
        json.loads(m["content"])["error"]
        for m in openai_server.requests[1]["messages"]
        if m["role"] == "tool"
    ]
    assert "params: Additional properties are not allowed ('cmd' was unexpected)" in errors[0]
    assert "'command' is a required property" in errors[0]
    assert errors[1].startswith("no tool 'sql_execute'")
    assert errors[2] == "boom"
    assert [t["ok"] for t in outcome.outputs["trace"]] == [False, False, False]


def test_agent_gives_up_after_max_iterations(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(*[tool_calls([("noop", {})])] * 3)
    params = {"goal": "loop", "tools": ["noop"], "maxIterations": 2}
    with pytest.raises(ToolFailure, match="no final answer within maxIterations=2") as failure:
        call("react_agent", params, env=KEY, model=model(openai_server))
    assert len(openai_server.requests) == 2
    assert len(failure.value.outputs["trace"]) == 2
    assert failure.value.usage.tokens == 60


def test_agent_reports_a_model_error_with_what_it_did(openai_server: ScriptedOpenAI) -> None:
    openai_server.reply(tool_calls([("noop", {})]), error(401, "bad key"))
    with pytest.raises(ToolFailure, match="HTTP 401") as failure:
        call("react_agent", {"goal": "g", "tools": ["noop"]}, env=KEY, model=model(openai_server))
    assert [t["tool"] for t in failure.value.outputs["trace"]] == ["noop"]
    assert failure.value.usage.tokens == 30


def test_agent_refuses_when_no_listed_tool_is_allowed(openai_server: ScriptedOpenAI) -> None:
    params = {"goal": "g", "tools": ["react_agent", "shell", "unknown"]}
    with pytest.raises(ToolFailure, match="has no tool to call"):
        call("react_agent", params, env=KEY, model=model(openai_server), allowed_tools=["noop"])
    assert openai_server.requests == []


def test_agent_sub_calls_get_no_host_the_pool_does_not_grant(
    openai_server: ScriptedOpenAI,
) -> None:
    # 127.0.0.1:1 refuses connections: had the call been let through, the error would say so.
    request = {"url": "http://127.0.0.1:1/", "allowedHosts": ["127.0.0.1:1"]}
    openai_server.reply(tool_calls([("http_request", request)]), text("done"))
    params = {"goal": "g", "tools": ["http_request"]}
    outcome = call("react_agent", params, env=KEY, model=model(openai_server))
    [entry] = outcome.outputs["trace"]
    assert not entry["ok"] and entry["error"].startswith("no host is allowed: the pool grants none")


def test_agent_risk_is_its_riskiest_tool() -> None:
    registry = ToolRegistry.default()
    risk = REACT_AGENT_TOOL.effective_risk
    assert risk({"tools": ["noop"]}, registry) == RiskLevel.low
    assert risk({"tools": ["noop", "http_request"]}, registry) == RiskLevel.medium
    assert risk({"tools": ["sql_query", "shell"]}, registry) == RiskLevel.high


def test_secrets_in_tool_results_never_reach_the_model(openai_server: ScriptedOpenAI) -> None:
    secret = "postgresql://app:w4rehouse@db/sales"
    openai_server.reply(
        tool_calls([("shell", {"command": "echo $SALES_DSN", "inheritEnv": ["SALES_DSN"]})]),
        text("checked"),
    )
    outcome = call(
        "react_agent",
        {"goal": "which database?", "tools": ["shell"]},
        env={**KEY, "SALES_DSN": secret},
        model=model(openai_server),
    )
    sent = json.dumps(openai_server.requests[1])
    assert "w4rehouse" not in sent
    assert json.loads(openai_server.requests[1]["messages"][-1]["content"])["stdout"] == "***\n"
    assert "w4rehouse" not in json.dumps(outcome.outputs)
