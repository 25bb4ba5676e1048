"""Safety rules written as CEL (issue 12.5): on the pool and on the task, checked when the
plan is made and again with the params a step starts with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from agent_contract import RiskLevel, ToolRegistry
from agent_operator.api import AgentPoolSpec, ApprovalPhase, RuleEffect, SafetyRule, TaskPhase
from agent_operator.core.decide import RequestApproval, StartStep
from agent_operator.core.plan import InvalidPlan, build_plan
from agent_operator.core.reasons import Reason
from agent_operator.core.safety import step_target

from .sim import REGISTRY, World, make_task

NO_DROP = {
    "name": "no-drop",
    "condition": "tool == 'sql_execute' && params.statement.matches('(?i)\\\\bdrop\\\\b')",
    "effect": "Deny",
    "message": "DROP is not allowed",
}
PROD_NEEDS_APPROVAL = {
    "name": "prod",
    "condition": "namespace == 'prod'",
    "effect": "RequireApproval",
    "message": "production",
}
INTERNAL_ONLY = {
    "name": "internal-only",
    "condition": "tool == 'http_request' && !host.endsWith('.internal')",
    "effect": "Deny",
}
HOSTS = {"allowedHosts": ["*.internal", "example.com"]}


def plan(steps: list[dict[str, Any]], pool: dict[str, Any] | None = None, **spec: Any):  # type: ignore[no-untyped-def]
    task = make_task({"steps": steps, **spec})
    assert task.spec.steps is not None
    return build_plan(
        task.spec.steps, task.spec, AgentPoolSpec.model_validate(pool or {}), REGISTRY
    )


def problems(steps: list[dict[str, Any]], pool: dict[str, Any] | None = None, **spec: Any) -> str:
    with pytest.raises(InvalidPlan) as caught:
        plan(steps, pool, **spec)
    return "\n".join(caught.value.problems)


def sql(statement: str, step_id: str = "s") -> dict[str, Any]:
    return {"id": step_id, "tool": "sql_execute", "params": {"statement": statement}}


def test_a_deny_rule_of_the_pool_refuses_the_step_naming_the_rule_and_its_message() -> None:
    pool = {"rules": [NO_DROP]}
    said = problems([sql("drop table users")], pool)
    assert "step 's' (steps[0]): denied by the pool's rule 'no-drop': DROP is not allowed" in said
    [planned] = plan([sql("UPDATE users SET a = 1 -- dropped nothing")], pool)
    assert planned.risk.rules == []


def test_a_task_cannot_loosen_the_pools_rules_and_adds_its_own() -> None:
    pool = {"rules": [NO_DROP]}
    permissive = {"level": "permissive", "rules": [INTERNAL_ONLY]}
    said = problems([sql("DROP TABLE t")], pool, safety=permissive)
    assert "the pool's rule 'no-drop'" in said
    get = {"id": "g", "tool": "http_request", "params": {"url": "https://example.com/x"}}
    said = problems([get], {**pool, **HOSTS}, safety=permissive)
    assert "denied by the task's rule 'internal-only'" in said
    get["params"] = {"url": "https://api.internal/x"}
    assert [s.id for s in plan([get], {**pool, **HOSTS}, safety=permissive)] == ["g"]


def test_require_approval_by_the_target_namespace_is_stored_in_the_plan_with_the_rule() -> None:
    pool = {"rules": [PROD_NEEDS_APPROVAL]}
    read = {"tool": "kubernetes_get", "params": {"apiVersion": "v1", "kind": "Pod", "name": "p"}}
    prod, dev = (
        {"id": ns, **read, "params": {**read["params"], "namespace": ns}} for ns in ("prod", "dev")
    )
    planned = {s.id: s.risk for s in plan([prod, dev], pool, safety={"level": "permissive"})}
    assert planned["prod"].requires_approval and not planned["dev"].requires_approval
    [match] = planned["prod"].rules
    assert (match.name, match.source, match.effect) == ("prod", "pool", RuleEffect.require_approval)
    assert "the pool's rule 'prod' requires it" in " ".join(planned["prod"].mitigations)
    assert "the pool's rule 'prod': production" in planned["prod"].risks


def test_raise_risk_raises_and_the_policy_then_asks_for_approval() -> None:
    raise_noop = {"name": "loud", "condition": "tool == 'noop'", "effect": "RaiseRisk"}
    [planned] = plan(
        [{"id": "n", "tool": "noop"}],
        safety={"level": "strict", "rules": [{**raise_noop, "risk": "medium"}]},
    )
    assert planned.risk.level == RiskLevel.medium and planned.risk.requires_approval
    [planned] = plan(  # a rule raises, never lowers: shell stays high
        [{"id": "n", "tool": "shell", "params": {"command": "true"}}],
        safety={"rules": [{**raise_noop, "condition": "true", "risk": "low"}]},
    )
    assert planned.risk.level == RiskLevel.high


def test_raise_risk_without_a_risk_is_refused_by_the_model() -> None:
    with pytest.raises(ValidationError, match="names the risk it raises to"):
        SafetyRule.model_validate({"name": "x", "condition": "true", "effect": "RaiseRisk"})


def test_a_condition_that_does_not_compile_is_refused_naming_the_rule() -> None:
    bad = {"name": "bad", "condition": "tool ==", "effect": "Deny"}
    said = problems([{"id": "n", "tool": "noop"}], safety={"rules": [bad]})
    assert "spec.safety.rules[0] ('bad').condition: does not parse as CEL" in said
    said = problems([{"id": "n", "tool": "noop"}], {"rules": [bad]})
    assert "the pool's spec.rules[0] ('bad').condition: does not parse as CEL" in said


def test_two_rules_of_one_name_are_refused() -> None:
    twice = [NO_DROP, {**NO_DROP, "condition": "false"}]
    said = problems([{"id": "n", "tool": "noop"}], safety={"rules": twice})
    assert "spec.safety.rules.name: 'no-drop' is used by more than one rule" in said


def test_a_condition_that_cannot_be_evaluated_holds() -> None:
    """Fail closed: `params.statement` on a step with no such param is an error, not false."""
    careless = {**NO_DROP, "condition": "params.statement.matches('drop')"}
    said = problems([{"id": "n", "tool": "noop"}], {"rules": [careless]})
    assert "denied by the pool's rule 'no-drop': DROP is not allowed; its condition cannot" in said


def test_the_target_of_a_step_comes_from_its_namespace_manifest_or_url() -> None:
    assert step_target({"namespace": "a", "url": "https://h.internal:8443/p"}) == (
        "a",
        "h.internal",
    )
    assert step_target({"manifest": {"metadata": {"namespace": "m"}}}) == ("m", "")
    assert step_target({"url": "http://[::1"}) == ("", "")  # not a URL: no host
    # As the HTTP client reads it: an ideographic full stop is a dot (IDNA).
    assert step_target({"url": "http://api\u3002evil.com/"}) == ("", "api.evil.com")
    assert step_target({"namespace": 3, "url": 4}) == ("", "")


def react(*tools: str) -> dict[str, Any]:
    return {"id": "r", "tool": "react_agent", "params": {"goal": "tidy", "tools": list(tools)}}


def test_a_sub_agent_is_held_to_the_rules_for_every_tool_it_may_call() -> None:
    """It picks the params of its calls at run time, so a rule that looks at them holds for
    each tool it may call: the sub-agent cannot get past a rule the steps are held to."""
    model = {"model": {"model": "m", "baseURL": "http://llm.internal/v1"}}
    pool = {"rules": [NO_DROP], **model}
    said = problems([react("sql_execute", "noop")], pool)
    assert "it may call tool 'sql_execute', denied by the pool's rule 'no-drop'" in said
    [planned] = plan([react("noop")], pool)  # the rule is false for noop, whatever its params
    assert planned.risk.rules == []
    [planned] = plan([react("noop")], {"rules": [PROD_NEEDS_APPROVAL], **model})
    assert planned.risk.requires_approval  # it may call noop in namespace prod
    assert [m.name for m in planned.risk.rules] == ["prod"]


# --- again when the step starts, with its substituted params --------------------------


def chain(second: dict[str, Any], pool: dict[str, Any], **spec: Any) -> World:
    first = {"id": "a", "tool": "noop"}
    task = make_task({"steps": [first, second], **spec})
    w = World(task, pool=AgentPoolSpec.model_validate(pool))
    w.step()
    return w


def test_a_deny_rule_holds_for_a_value_a_placeholder_brings_at_start() -> None:
    """A plan can route what a rule refuses through an earlier step's output; the rule is
    met again with the params the step would start with, and nothing starts."""
    w = chain(sql("${steps.a.outputs.sql}", "b"), {"rules": [NO_DROP]})
    w.finish("a", outputs={"sql": "DROP TABLE users"})
    d = w.step()
    assert not [a for a in d.actions if isinstance(a, StartStep)]
    [b] = [s for s in d.status.steps if s.id == "b"]
    assert (b.phase.value, b.reason) == ("Failed", Reason.denied_by_rule)
    assert "denied by the pool's rule 'no-drop'" in (b.message or "")
    assert w.task.status.phase == TaskPhase.failed


def test_an_approval_rule_holds_for_a_namespace_a_placeholder_brings_at_start() -> None:
    delete = {
        "id": "b",
        "tool": "kubernetes_get",
        "params": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "p",
            "namespace": "${steps.a.outputs.ns}",
        },
    }
    w = chain(delete, {"rules": [PROD_NEEDS_APPROVAL]})
    w.finish("a", outputs={"ns": "prod"})
    d = w.step()
    assert not [a for a in d.actions if isinstance(a, StartStep)]
    [request] = [a for a in d.actions if isinstance(a, RequestApproval)]
    assert request.params["namespace"] == "prod"
    assert request.risk.requires_approval and [m.name for m in request.risk.rules] == ["prod"]
    assert w.task.status.phase == TaskPhase.waiting_approval


def test_a_step_the_rules_let_through_at_start_keeps_its_plans_verdict() -> None:
    w = chain(
        sql("${steps.a.outputs.sql}", "b"), {"rules": [NO_DROP]}, safety={"level": "permissive"}
    )
    w.finish("a", outputs={"sql": "UPDATE t SET a = 1"})
    d = w.step()
    [start] = [a for a in d.actions if isinstance(a, StartStep)]
    assert (start.step_id, start.params) == ("b", {"statement": "UPDATE t SET a = 1"})
    assert not start.requires_approval  # high risk, under the permissive policy


def test_the_runtime_is_told_of_an_approval_a_rule_required_at_start() -> None:
    delete = {
        "id": "b",
        "tool": "kubernetes_get",
        "params": {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "${inputs.ns}"},
    }
    w = chain(delete, {"rules": [PROD_NEEDS_APPROVAL]}, inputs={"ns": "prod"})
    w.finish("a")
    w.step()
    w.decide_approval("b", ApprovalPhase.approved, by="alice")
    [start] = [a for a in w.step().actions if isinstance(a, StartStep)]
    assert (start.requires_approval, start.approved_by) == (True, "alice")


def test_a_deny_rule_holds_at_start_for_a_tool_gone_from_the_registry() -> None:
    w = chain(sql("${steps.a.outputs.sql}", "b"), {"rules": [NO_DROP]})
    w.registry = ToolRegistry([spec for spec in REGISTRY if spec.name != "sql_execute"])
    w.finish("a", outputs={"sql": "DROP TABLE users"})
    d = w.step()
    assert not [a for a in d.actions if isinstance(a, StartStep)]
    assert w.phase_of("b") == "Failed"


def test_a_condition_that_breaks_celpy_holds_and_its_message_shows_no_params() -> None:
    """Values CEL cannot hold, nesting too deep and unknown names are each a rule that
    holds, with a short message: celpy's own text quotes every variable."""
    secret = "hunter2-" + "x" * 200
    for condition in ("namespce == 'prod'", "params.n > 1", "!" * 2000 + "true"):
        rule = {"name": "r", "condition": condition, "effect": "Deny"}
        step = {"id": "n", "tool": "noop", "params": {"n": 2**70, "password": secret}}
        said = problems([step], {"rules": [rule]})
        assert "denied by the pool's rule 'r': its condition" in said, said
        assert secret not in said and len(said) < 400, said


def test_the_readmes_rules_do_what_it_says() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("#### Safety rules in CEL", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    pool = {**yaml.safe_load(block), **HOSTS}
    assert "denied by the pool's rule 'no-drop'" in problems([sql("DROP TABLE x")], pool)
    get = {"id": "g", "tool": "http_request", "params": {"url": "https://example.com/"}}
    assert "the pool's rule 'internal-only'" in problems([get], pool)
    kube = {"tool": "kubernetes_get", "params": {"apiVersion": "v1", "kind": "Pod", "name": "p"}}
    prod = {"id": "k", **kube, "params": {**kube["params"], "namespace": "prod"}}
    [planned] = plan([prod], pool, safety={"level": "permissive"})
    assert planned.risk.level == RiskLevel.high and planned.risk.requires_approval
    assert [m.name for m in planned.risk.rules] == ["prod-approval", "careful-with-kube"]


def test_an_approval_given_for_other_params_does_not_run_the_step() -> None:
    """spec.inputs may change while a step waits; the approval was for what it asked about."""
    step = {
        "id": "b",
        "tool": "kubernetes_get",
        "params": {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "${inputs.ns}"},
    }
    w = chain(step, {}, inputs={"ns": "dev"}, safety={"requireApprovalFor": ["kubernetes_get"]})
    w.finish("a")
    [request] = [a for a in w.step().actions if isinstance(a, RequestApproval)]
    assert request.params["namespace"] == "dev"
    inputs = w.task.spec.model_copy(update={"inputs": {"ns": "prod"}})
    w.task = w.task.model_copy(update={"spec": inputs})
    w.decide_approval("b", ApprovalPhase.approved, by="alice")
    d = w.step()
    assert not [a for a in d.actions if isinstance(a, StartStep)]
    [b] = [s for s in d.status.steps if s.id == "b"]
    assert (b.phase.value, b.reason) == ("Failed", Reason.approval_stale)
