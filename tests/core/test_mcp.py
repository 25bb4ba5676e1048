"""MCP tools in the pure core: the risk their annotations give, what a pool grants, and that
plans, the policy and approvals treat them as they treat built-ins."""

from __future__ import annotations

from typing import Any

import pytest

from agent_contract import RiskLevel
from agent_contract.mcp import granted
from agent_operator.api import (
    AgentPoolSpec,
    ApprovalPhase,
    MCPServer,
    MCPServerSpec,
    MCPToolHints,
    MCPToolOverride,
)
from agent_operator.core.decide import RequestApproval, StartStep
from agent_operator.core.mcp import offered, pool_registry, step_endpoints, tool_risk
from agent_operator.core.plan import InvalidPlan, build_plan, granted_tools
from agent_operator.core.reasons import Reason

from .sim import REGISTRY, World, make_task

SCHEMA = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}


def hints(**given: bool) -> MCPToolHints:
    return MCPToolHints.model_validate(given)


@pytest.mark.parametrize(
    ("given", "risk"),
    [
        ({"readOnlyHint": True, "openWorldHint": False}, RiskLevel.safe),
        ({"readOnlyHint": True}, RiskLevel.low),
        ({"readOnlyHint": True, "openWorldHint": True}, RiskLevel.low),
        ({"readOnlyHint": False, "destructiveHint": False}, RiskLevel.medium),
        ({"destructiveHint": False, "idempotentHint": True}, RiskLevel.medium),
        ({"destructiveHint": True}, RiskLevel.high),
        ({"readOnlyHint": False}, RiskLevel.high),
        ({"idempotentHint": True, "openWorldHint": False}, RiskLevel.high),
        ({}, RiskLevel.high),
    ],
)
def test_the_annotations_give_a_risk_and_a_tool_that_says_nothing_is_high(
    given: dict[str, bool], risk: RiskLevel
) -> None:
    level, why = tool_risk(hints(**given), None)
    assert level == risk and why


def test_an_override_wins_over_the_annotations() -> None:
    override = MCPToolOverride(name="t", risk=RiskLevel.critical)
    assert tool_risk(hints(readOnlyHint=True, openWorldHint=False), override) == (
        RiskLevel.critical,
        "set by the MCPServer's overrides",
    )
    assert tool_risk(hints(), MCPToolOverride(name="t", requires_approval=True))[0] == "high"


def server(name: str = "inv", **spec: Any) -> MCPServer:
    """A server whose status lists `lookup` (read-only, closed world) and `drop` (silent)."""
    parsed = MCPServerSpec.model_validate({"url": "http://inv.test/mcp", **spec})
    listed = [
        ("lookup", "Look a key up.", SCHEMA, hints(readOnlyHint=True, openWorldHint=False)),
        ("drop", "Drop a key.", SCHEMA, hints()),
    ]
    return MCPServer.model_validate(
        {
            "metadata": {"name": name},
            "spec": parsed.wire(),
            "status": {"tools": [t.wire() for t in offered(parsed, listed)]},
        }
    )


def pool(**spec: Any) -> AgentPoolSpec:
    return AgentPoolSpec.model_validate(spec)


def plan(steps: list[dict[str, Any]], pool_spec: AgentPoolSpec, *servers: MCPServer):  # type: ignore[no-untyped-def]
    task = make_task({"steps": steps})
    assert task.spec.steps is not None
    registry = pool_registry(REGISTRY, pool_spec, servers)
    return build_plan(task.spec.steps, task.spec, pool_spec, registry)


def refusal(steps: list[dict[str, Any]], pool_spec: AgentPoolSpec, *servers: MCPServer) -> str:
    with pytest.raises(InvalidPlan) as caught:
        plan(steps, pool_spec, *servers)
    return "\n".join(caught.value.problems)


def lookup(step_id: str = "l", tool: str = "inv/lookup") -> dict[str, Any]:
    return {"id": step_id, "tool": tool, "params": {"key": "answer"}}


def test_the_status_shows_each_offered_tool_with_its_risk_and_why() -> None:
    s = server(tools=["lookup"])
    [tool] = s.status.tools
    assert (tool.name, tool.risk) == ("lookup", RiskLevel.safe)
    assert "readOnlyHint" in tool.why


def test_a_pool_grants_a_servers_tools_by_name_or_whole_and_never_by_omission() -> None:
    s = server()
    names = lambda p: {t.name for t in granted_tools(p, pool_registry(REGISTRY, p, [s]))}  # noqa: E731
    assert {"inv/lookup"} <= names(pool(tools=["inv/lookup", "noop"]))
    assert "inv/drop" not in names(pool(tools=["inv/lookup", "noop"]))
    assert {"inv/lookup", "inv/drop"} <= names(pool(tools=["inv/*"]))
    assert not {n for n in names(pool()) if "/" in n}  # tools omitted: built-ins only
    assert "noop" in names(pool())


def test_a_plan_naming_an_mcp_tool_the_pool_does_not_grant_names_the_step_and_tool() -> None:
    message = refusal([lookup(), lookup("d", "inv/drop")], pool(tools=["inv/lookup"]), server())
    assert "step 'd' (steps[1]).tool: the pool does not grant MCP tool 'inv/drop'" in message
    assert "'l'" not in message


def test_a_tool_of_a_server_the_namespace_does_not_have_is_unknown() -> None:
    message = refusal([lookup(tool="other/lookup")], pool(tools=["other/*"]), server())
    assert "step 'l' (steps[0]).tool: unknown tool 'other/lookup'" in message


def test_mcp_tools_are_held_to_the_schema_the_policy_and_capabilities_like_built_ins() -> None:
    granted = pool(tools=["inv/*"])
    bad = {"id": "l", "tool": "inv/lookup", "params": {"nokey": 1}}
    assert "step 'l' (steps[0]).params: 'key' is a required property" in refusal(
        [bad], granted, server()
    )
    read, drop = plan([lookup(), lookup("d", "inv/drop")], granted, server())
    assert (read.risk.level, read.risk.requires_approval) == (RiskLevel.safe, False)
    assert (drop.risk.level, drop.risk.requires_approval) == (RiskLevel.high, True)
    assert any("MCP server" in risk for risk in drop.risk.risks)
    no_mcp = pool(tools=["inv/*"], capabilities=["kubernetes:read"])
    assert "needs capabilities ['mcp']" in refusal([lookup()], no_mcp, server())


def test_an_override_requiring_approval_gates_even_a_safe_tool() -> None:
    s = server(overrides=[{"name": "lookup", "requiresApproval": True}])
    [step] = plan([lookup()], pool(tools=["inv/lookup"]), s)
    assert step.risk.level == RiskLevel.safe and step.risk.requires_approval
    assert "the tool's server requires approval" in " ".join(step.risk.mitigations)


def test_a_rule_sees_an_mcp_tool_by_its_full_name() -> None:
    rules = [{"name": "no-drop", "condition": "tool == 'inv/drop'", "effect": "Deny"}]
    message = refusal([lookup("d", "inv/drop")], pool(tools=["inv/*"], rules=rules), server())
    assert "denied by the pool's rule 'no-drop'" in message


def test_a_tool_whose_schema_changed_since_it_was_approved_does_not_run() -> None:
    granted = pool(tools=["inv/*"])
    w = World(make_task({"steps": [lookup("d", "inv/drop")]}), pool=granted)
    w.registry = pool_registry(REGISTRY, granted, [server()])
    assert any(isinstance(a, RequestApproval) for a in w.step().actions)
    w.decide_approval("d", ApprovalPhase.approved, by="alice")
    changed = server()
    changed.status.tools[0].input_schema["properties"]["key"]["maxLength"] = 3  # drop's
    assert changed.status.tools[0].name == "drop"
    w.registry = pool_registry(REGISTRY, granted, [changed])
    d = w.step()
    assert not [a for a in d.actions if isinstance(a, StartStep)]
    [step] = d.status.steps
    assert (step.phase.value, step.reason) == ("Failed", Reason.approval_stale)
    assert "schema" in (step.message or "")


def test_an_unchanged_tool_runs_on_its_approval() -> None:
    granted = pool(tools=["inv/*"])
    w = World(make_task({"steps": [lookup("d", "inv/drop")]}), pool=granted)
    w.registry = pool_registry(REGISTRY, granted, [server()])
    w.step()
    w.decide_approval("d", ApprovalPhase.approved, by="alice")
    w.registry = pool_registry(REGISTRY, granted, [server()])  # listed again, the same
    assert [a for a in w.step().actions if isinstance(a, StartStep)]


def react(*tools: str, step_id: str = "a") -> dict[str, Any]:
    return {
        "id": step_id,
        "tool": "react_agent",
        "params": {"goal": "find the answer", "tools": list(tools)},
    }


def test_grants_are_judged_alike_for_the_operator_and_the_pod() -> None:
    assert granted("noop", None) and granted("noop", ["noop"]) and not granted("noop", [])
    assert granted("inv/drop", ["inv/*"]) and granted("inv/drop", ["inv/drop"])
    assert not granted("inv/drop", None)  # never by omission
    assert not granted("inv/drop", ["inv/lookup", "other/*", "*"])


def test_a_sub_agent_may_call_the_granted_mcp_tools_and_is_as_risky_as_they_are() -> None:
    granted_pool = pool(tools=["react_agent", "noop", "inv/*"])
    [safe] = plan([react("noop", "inv/lookup")], granted_pool, server())
    assert (safe.risk.level, safe.risk.requires_approval) == (RiskLevel.low, False)
    [risky] = plan([react("inv/drop")], granted_pool, server())
    assert (risky.risk.level, risky.risk.requires_approval) == (RiskLevel.high, True)

    narrow = pool(tools=["react_agent", "noop", "inv/lookup"])
    message = refusal([react("noop", "inv/drop")], narrow, server())
    assert message == (
        "step 'a' (steps[0]).params: the pool does not grant MCP tool 'inv/drop'; list it "
        "(or 'inv/*') in the AgentPool's spec.tools"
    )


def test_a_sub_agents_mcp_tools_go_with_its_start() -> None:
    granted_pool = pool(tools=["react_agent", "noop", "inv/lookup"])
    w = World(make_task({"steps": [react("noop", "inv/lookup")]}), pool=granted_pool)
    w.registry = pool_registry(REGISTRY, granted_pool, [server()])
    [start] = [a for a in w.step().actions if isinstance(a, StartStep)]
    assert start.calls == ("noop", "inv/lookup")


@pytest.mark.parametrize(
    ("spec", "safety", "why"),
    [
        (
            {"overrides": [{"name": "lookup", "requiresApproval": True}]},
            {},
            "the tool's server requires approval for every call of 'inv/lookup', which the "
            "step may call",
        ),
        (
            {},
            {"requireApprovalFor": ["inv/lookup"]},
            "spec.safety.requireApprovalFor names tool 'inv/lookup', which the step may call",
        ),
        (
            {},
            {"requireApprovalFor": ["noop"]},
            "spec.safety.requireApprovalFor names tool 'noop', which the step may call",
        ),
    ],
)
def test_approval_asked_for_a_tool_is_asked_for_a_sub_agent_that_may_call_it(
    spec: dict[str, Any], safety: dict[str, Any], why: str
) -> None:
    granted_pool = pool(tools=["react_agent", "noop", "inv/*"])
    task = make_task({"steps": [react("noop", "inv/lookup")], "safety": safety})
    assert task.spec.steps is not None
    registry = pool_registry(REGISTRY, granted_pool, [server(**spec)])
    [step] = build_plan(task.spec.steps, task.spec, granted_pool, registry)
    assert step.risk.requires_approval
    assert any(why in mitigation for mitigation in step.risk.mitigations)


def test_a_sub_agent_approved_before_its_mcp_tools_schema_changed_does_not_run() -> None:
    granted_pool = pool(tools=["react_agent", "inv/*"])
    w = World(make_task({"steps": [react("inv/drop")]}), pool=granted_pool)
    w.registry = pool_registry(REGISTRY, granted_pool, [server()])
    assert any(isinstance(a, RequestApproval) for a in w.step().actions)
    w.decide_approval("a", ApprovalPhase.approved, by="alice")
    changed = server()
    changed.status.tools[0].input_schema["properties"]["key"]["maxLength"] = 3  # drop's
    w.registry = pool_registry(REGISTRY, granted_pool, [changed])
    d = w.step()
    assert not [a for a in d.actions if isinstance(a, StartStep)]
    assert d.status.steps[0].reason == Reason.approval_stale


def test_a_step_reaches_each_mcp_tool_it_calls_with_its_listed_schema_and_headers() -> None:
    token = {"bearerTokenSecretRef": {"name": "inv-token", "key": "token"}}
    inv, other = (
        server(**token),
        server(
            "other", headers=[{"name": "X-Team", "secretKeyRef": {"name": "team", "key": "id"}}]
        ),
    )
    grants = pool(tools=["react_agent", "noop", "inv/lookup", "other/*"])
    endpoints, used = step_endpoints(
        ["react_agent", "inv/lookup", "noop", "other/drop", "inv/lookup"], [other, inv], grants
    )
    assert [(e.server, e.tool) for e in endpoints] == [("inv", "lookup"), ("other", "drop")]
    assert (endpoints[0].description, endpoints[0].input_schema) == ("Look a key up.", SCHEMA)
    assert [(h.name, h.path, h.prefix) for h in endpoints[0].headers] == [
        ("Authorization", "/var/run/agent-operator/mcp/inv/0/value", "Bearer ")
    ]
    assert [h.path for h in endpoints[1].headers] == ["/var/run/agent-operator/mcp/other/0/value"]
    assert [s.metadata.name for s in used] == ["inv", "other"]
    with pytest.raises(LookupError, match="MCPServer 'gone', which does not exist"):
        step_endpoints(["gone/tool"], [inv], grants)
    with pytest.raises(LookupError, match="'inv/drop' of MCPServer 'inv' is not granted"):
        step_endpoints(["inv/drop"], [inv], grants)
    hidden = server(tools=["lookup"])  # its spec offers lookup only
    with pytest.raises(LookupError, match="'inv/drop' of MCPServer 'inv' does not offer it"):
        step_endpoints(["inv/drop"], [hidden], pool(tools=["inv/*"]))


def test_a_sub_agents_tools_filled_in_at_run_time_are_checked_before_it_starts() -> None:
    """`tools` from a placeholder cannot be judged at plan time: they are at the start."""
    granted_pool = pool(tools=["react_agent", "noop", "inv/*"])
    agent = {
        "id": "a",
        "tool": "react_agent",
        "params": {"goal": "g", "tools": "${inputs.tools}"},
    }
    for tools, problem in [
        (["noop", "other/drop"], "calls tool 'other/drop', which no MCPServer 'other' of"),
        (["noop", "inv/hidden"], "calls tool 'inv/hidden', which no MCPServer 'inv' of"),
        (["noop", "nothing"], "calls unknown tool 'nothing'"),
        (["shell"], "the pool does not grant tool 'shell'"),
    ]:
        w = World(make_task({"steps": [agent], "inputs": {"tools": tools}}), pool=granted_pool)
        w.registry = pool_registry(REGISTRY, granted_pool, [server()])
        d = w.step()
        assert not [a for a in d.actions if isinstance(a, StartStep)], tools
        [step] = d.status.steps
        assert (step.phase.value, step.reason) == ("Failed", Reason.tool_not_granted)
        assert problem in (step.message or "")
    w = World(
        make_task({"steps": [agent], "inputs": {"tools": ["noop", "inv/drop"]}}),
        pool=granted_pool,
    )
    w.registry = pool_registry(REGISTRY, granted_pool, [server()])
    d = w.step()  # granted and known: judged as if listed, so drop's risk asks for a person
    assert any(isinstance(a, RequestApproval) for a in d.actions)
