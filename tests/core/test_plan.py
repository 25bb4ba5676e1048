"""Plan validation and the safety policy."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from agent_contract import MAX_PARAMS_BYTES, RiskLevel, ToolRegistry, ToolSpec
from agent_operator.api import (
    AgentPoolSpec,
    AgentTaskSpec,
    Safety,
    TimeWindow,
)
from agent_operator.core.plan import InvalidPlan, build_plan
from agent_operator.core.safety import in_window, next_window_open

from .sim import REGISTRY


def _tool(name: str, risk: RiskLevel, capabilities: set[str] = frozenset()) -> ToolSpec:  # type: ignore[assignment]
    return ToolSpec(
        name=name,
        description=name,
        params_schema={
            "type": "object",
            "properties": {"namespace": {"type": "string"}, "count": {"type": "integer"}},
            "additionalProperties": False,
        },
        risk=risk,
        capabilities=frozenset(capabilities),
    )


RISKY = ToolRegistry(
    [
        *REGISTRY,
        *(_tool(f"t-{r.value}", r) for r in RiskLevel),
        _tool("kube", RiskLevel.high, {"kubernetes:write"}),
    ]
)


def plan(steps: list[dict[str, Any]], pool: dict[str, Any] | None = None, **spec: Any):  # type: ignore[no-untyped-def]
    task_spec = AgentTaskSpec.model_validate({"steps": steps, **spec})
    assert task_spec.steps is not None
    return build_plan(task_spec.steps, task_spec, AgentPoolSpec.model_validate(pool or {}), RISKY)


def problems(steps: list[dict[str, Any]], pool: dict[str, Any] | None = None, **spec: Any) -> str:
    with pytest.raises(InvalidPlan) as caught:
        plan(steps, pool, **spec)
    return "\n".join(caught.value.problems)


def test_dependencies_default_to_the_previous_step_and_empty_means_none() -> None:
    planned = plan(
        [
            {"id": "a", "tool": "noop"},
            {"id": "b", "tool": "noop"},
            {"id": "c", "tool": "noop", "dependsOn": []},
        ]
    )
    assert [p.depends_on for p in planned] == [[], ["a"], []]


def test_timeout_defaults_to_the_tools() -> None:
    planned = plan(
        [
            {"id": "a", "tool": "sleep", "params": {"seconds": 1}},
            {"id": "b", "tool": "noop", "timeoutSeconds": 7},
        ]
    )
    assert [p.timeout_seconds for p in planned] == [3600, 7]


def test_unknown_tool_names_the_step_the_field_and_the_known_tools() -> None:
    text = problems([{"id": "fetch", "tool": "curl"}])
    assert "step 'fetch' (steps[0]).tool: unknown tool 'curl'" in text
    assert "noop" in text


def test_params_are_checked_against_the_tool_schema() -> None:
    text = problems([{"id": "a", "tool": "sleep", "params": {"seconds": "soon"}}])
    assert "step 'a' (steps[0]).params.seconds: 'soon' is not of type 'number'" in text
    text = problems([{"id": "a", "tool": "sleep", "params": {}}])
    assert "'seconds' is a required property" in text


def test_params_too_large_for_the_steps_environment_are_refused_naming_the_limit() -> None:
    big = {"outputs": {"blob": "x" * MAX_PARAMS_BYTES}}
    text = problems([{"id": "a", "tool": "noop", "params": big}])
    assert text.startswith("step 'a' (steps[0]).params: the params take ")
    assert f"may take at most {MAX_PARAMS_BYTES} bytes" in text and "AGENT_STEP" in text
    # Just under the limit plans: the rest of the invocation has room of its own.
    plan([{"id": "a", "tool": "noop", "params": {"outputs": {"b": "x" * (MAX_PARAMS_BYTES - 30)}}}])


def test_placeholders_are_not_type_checked_before_run_time() -> None:
    plan(
        [
            {"id": "a", "tool": "noop"},
            {"id": "b", "tool": "sleep", "params": {"seconds": "${steps.a.outputs.n}"}},
        ]
    )


def test_tool_not_granted_by_the_pool_is_refused() -> None:
    text = problems([{"id": "a", "tool": "fail"}], pool={"tools": ["noop", "sleep"]})
    assert (
        "step 'a' (steps[0]).tool: the pool does not grant tool 'fail'; it grants: noop, sleep"
        in text
    )


def test_capability_not_granted_by_the_pool_is_refused() -> None:
    text = problems([{"id": "a", "tool": "kube"}], pool={"capabilities": ["kubernetes:read"]})
    assert "needs capabilities ['kubernetes:write']" in text


HTTP_STEP = {"id": "a", "tool": "http_request", "params": {"url": "https://example.com"}}


def test_a_network_tool_is_refused_when_the_pool_grants_no_host() -> None:
    text = problems([HTTP_STEP])
    assert (
        "step 'a' (steps[0]).tool: tool 'http_request' reaches other hosts and the pool grants "
        "none: list the hosts it may reach in the AgentPool's spec.allowedHosts" in text
    )
    assert plan([HTTP_STEP], pool={"allowedHosts": ["example.com"]})[0].tool == "http_request"


def test_a_sub_agent_is_held_to_the_pools_grants_for_the_tools_it_lists() -> None:
    react = {"id": "a", "tool": "react_agent", "params": {"goal": "g", "tools": ["http_request"]}}
    assert "params: tool 'http_request' reaches other hosts" in problems([react])
    react["params"]["tools"] = ["kube", "curl"]
    text = problems([react], pool={"capabilities": ["llm", "kubernetes:read"]})
    assert "params: tool 'kube' needs capabilities ['kubernetes:write']" in text
    assert "params: calls unknown tool 'curl'" in text


def test_a_dependency_cycle_is_refused_with_its_path() -> None:
    text = problems(
        [
            {"id": "a", "tool": "noop", "dependsOn": ["c"]},
            {"id": "b", "tool": "noop", "dependsOn": ["a"]},
            {"id": "c", "tool": "noop", "dependsOn": ["b"]},
        ]
    )
    assert "dependsOn forms a cycle" in text
    assert all(s in text for s in "abc")


def test_unknown_dependency_and_unknown_reference_are_refused() -> None:
    text = problems([{"id": "a", "tool": "noop", "dependsOn": ["ghost"]}])
    assert "step 'a' (steps[0]).dependsOn: unknown step 'ghost'" in text
    text = problems([{"id": "a", "tool": "noop", "params": {"x": "${steps.ghost.outputs.y}"}}])
    assert "step 'a' (steps[0]).params: uses step 'ghost', which does not exist" in text


def test_reference_to_a_step_that_is_not_an_ancestor_is_refused() -> None:
    text = problems(
        [
            {"id": "a", "tool": "noop", "dependsOn": []},
            {"id": "b", "tool": "noop", "dependsOn": [], "params": {"x": "${steps.a.outputs.y}"}},
        ]
    )
    assert "uses step 'a', which is not among its dependencies (add it to dependsOn)" in text
    text = problems(
        [
            {"id": "a", "tool": "noop", "dependsOn": []},
            {"id": "b", "tool": "noop", "dependsOn": [], "when": "steps.a.outputs.ok"},
        ]
    )
    assert "step 'b' (steps[1]).when: uses step 'a'" in text


def test_bad_when_and_missing_input_are_refused() -> None:
    assert "when: does not parse as CEL" in problems([{"id": "a", "tool": "noop", "when": "1 +"}])
    text = problems([{"id": "a", "tool": "noop", "params": {"x": "${inputs.region}"}}])
    assert "uses inputs.region, which spec.inputs does not define" in text


def test_duplicate_ids_and_max_steps() -> None:
    assert "'a' is used by more than one step" in problems([{"id": "a", "tool": "noop"}] * 2)
    text = problems([{"id": f"s{i}", "tool": "noop"} for i in range(3)], limits={"maxSteps": 2})
    assert "the plan has 3 steps; spec.limits.maxSteps allows 2" in text


@pytest.mark.parametrize(
    ("level", "needs_approval_from"),
    [
        ("strict", RiskLevel.medium),
        ("moderate", RiskLevel.high),
        ("permissive", RiskLevel.critical),
    ],
)
def test_approval_threshold_by_safety_level(level: str, needs_approval_from: RiskLevel) -> None:
    steps = [{"id": f"s-{r.value}", "tool": f"t-{r.value}", "dependsOn": []} for r in RiskLevel]
    planned = plan(steps, safety={"level": level})
    for step, risk in zip(planned, RiskLevel, strict=True):
        assert step.risk.level == risk
        assert step.risk.requires_approval == (risk >= needs_approval_from), step.id


def test_require_approval_for_a_tool_or_from_a_risk_level() -> None:
    steps = [
        {"id": "a", "tool": "noop", "dependsOn": []},
        {"id": "b", "tool": "t-low", "dependsOn": []},
    ]
    by_tool = plan(steps, safety={"level": "permissive", "requireApprovalFor": ["noop"]})
    assert [s.risk.requires_approval for s in by_tool] == [True, False]
    by_level = plan(steps, safety={"level": "permissive", "requireApprovalFor": ["low"]})
    assert [s.risk.requires_approval for s in by_level] == [False, True]


def test_protected_namespace_raises_risk_and_needs_approval() -> None:
    planned = plan(
        [{"id": "a", "tool": "t-medium", "params": {"namespace": "kube-system"}}],
        safety={"level": "permissive"},
    )
    assert planned[0].risk.level == RiskLevel.high
    assert planned[0].risk.requires_approval
    assert "targets protected namespace 'kube-system'" in planned[0].risk.risks
    reading = plan([{"id": "a", "tool": "t-low", "params": {"namespace": "kube-system"}}])
    assert not reading[0].risk.requires_approval


def test_protected_target_matches_inside_params() -> None:
    planned = plan(
        [{"id": "a", "tool": "t-medium", "params": {"namespace": "prod-payments"}}],
        safety={"level": "permissive", "protectedTargets": ["payments"]},
    )
    assert planned[0].risk.requires_approval
    assert "targets protected 'payments'" in planned[0].risk.risks


def test_assessment_carries_risks_and_mitigations() -> None:
    planned = plan([{"id": "a", "tool": "kube", "timeoutSeconds": 30}])
    assert planned[0].risk.risks == ["creates, changes or deletes Kubernetes objects"]
    assert "stopped after 30s" in planned[0].risk.mitigations
    assert any(m.startswith("a person approves it first") for m in planned[0].risk.mitigations)


def test_change_window_including_one_that_wraps_midnight() -> None:
    office = TimeWindow(start="09:00", end="17:00", days=["Mon", "Tue"])
    monday = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday
    assert in_window(office, monday.replace(hour=9))
    assert not in_window(office, monday.replace(hour=17))
    assert not in_window(office, monday.replace(day=25, hour=10))  # Wednesday
    assert next_window_open(office, monday.replace(hour=18)) == monday.replace(day=24, hour=9)
    night = TimeWindow(start="22:00", end="02:00", days=["Mon"])
    assert in_window(night, monday.replace(hour=23))
    assert in_window(night, monday.replace(day=24, hour=1))  # Tuesday night, opened Monday
    assert not in_window(night, monday.replace(hour=1))  # Monday 01:00 belongs to Sunday's window


def test_a_policy_the_core_cannot_act_on_is_refused_naming_the_field() -> None:
    steps = [{"id": "a", "tool": "t-critical"}]
    never_opens = {"criticalWindow": {"start": "09:00", "end": "09:00"}}
    assert problems(steps, safety=never_opens) == (
        "spec.safety.criticalWindow: start and end are both 09:00; the window never opens"
    )
    typo = problems(steps, safety={"requireApprovalFor": ["noop", "hihg"]})
    assert typo.startswith(
        "spec.safety.requireApprovalFor[1]: 'hihg' is neither a risk level "
        "(safe, low, medium, high, critical) nor a known tool ("
    )


@pytest.mark.parametrize(
    ("safety", "limits", "where"),
    [
        ({"criticalWindow": {"start": "09:00", "end": "10:00", "days": []}}, {}, "days"),
        ({"approvalTimeoutSeconds": 10**12}, {}, "approvalTimeoutSeconds"),
        ({}, {"activeDeadlineSeconds": 10**12}, "activeDeadlineSeconds"),
    ],
)
def test_the_schema_refuses_values_the_core_cannot_work_with(
    safety: dict[str, Any], limits: dict[str, Any], where: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        AgentTaskSpec.model_validate({"goal": "g", "safety": safety, "limits": limits})
    assert caught.value.errors()[0]["loc"][-1] == where


def test_safety_defaults_protect_system_namespaces() -> None:
    assert "kube-system" in Safety().protected_namespaces
