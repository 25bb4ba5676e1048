"""The safety policy: how risky a step is, and whether a person must approve it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx

from agent_contract import RiskLevel, ToolRegistry, ToolSpec
from agent_contract.mcp import MCP_CAPABILITY
from agent_operator.api import (
    AgentPoolSpec,
    RiskAssessment,
    RuleEffect,
    RuleMatch,
    Safety,
    SafetyLevel,
    SafetyRule,
    Step,
    TimeWindow,
)
from agent_operator.core import cel
from agent_operator.core.templating import _strings

APPROVAL_FROM = {
    SafetyLevel.strict: RiskLevel.medium,
    SafetyLevel.moderate: RiskLevel.high,
    SafetyLevel.permissive: RiskLevel.critical,
}

CAPABILITY_RISKS = {
    "shell": "runs commands in the step's pod",
    "network": "sends requests over the network",
    "sql:write": "changes data in a database",
    "sql:read": "reads data from a database",
    "kubernetes:write": "creates, changes or deletes Kubernetes objects",
    "kubernetes:read": "reads Kubernetes objects",
    "llm": "sends data to an LLM and spends tokens",
    MCP_CAPABILITY: "calls a tool of an MCP server, which acts with the server's own access",
}


# How an assessment says why a person must approve (the reasons follow it).
APPROVAL_MITIGATION = "a person approves it first: "


def _protected_hits(params: dict[str, Any], safety: Safety) -> list[str]:
    hits = []
    namespace = params.get("namespace")
    if isinstance(namespace, str) and namespace in safety.protected_namespaces:
        hits.append(f"targets protected namespace {namespace!r}")
    texts = _strings(params)
    hits += [
        f"targets protected {target!r}"
        for target in safety.protected_targets
        if any(target in text for text in texts)
    ]
    return hits


def _required_by_list(
    tool: ToolSpec, called: Sequence[ToolSpec], level: RiskLevel, safety: Safety
) -> str | None:
    """Why the tool's server or spec.safety.requireApprovalFor asks for approval of the step:
    for its tool, or for one its sub-agent may call (`called`)."""
    for spec in (tool, *called):
        said = "" if spec is tool else ", which the step may call"
        if spec.requires_approval:
            return f"the tool's server requires approval for every call of {spec.name!r}{said}"
        if spec.name in safety.require_approval_for:
            return f"spec.safety.requireApprovalFor names tool {spec.name!r}{said}"
    for entry in safety.require_approval_for:
        if entry in RiskLevel.__members__ and level >= RiskLevel(entry):
            return f"spec.safety.requireApprovalFor asks for approval from {entry} risk up"
    return None


# --- rules written as CEL ---------------------------------------------------------------

POOL, TASK = "pool", "task"  # RuleMatch.source


def rules_of(pool: AgentPoolSpec, safety: Safety) -> list[tuple[str, str, SafetyRule]]:
    """Every rule a step of the task meets, as (source, field path, rule): the pool's first.
    A task adds rules and cannot take any away, and every effect only tightens."""
    return [
        *((POOL, f"the pool's spec.rules[{i}]", rule) for i, rule in enumerate(pool.rules)),
        *((TASK, f"spec.safety.rules[{i}]", rule) for i, rule in enumerate(safety.rules)),
    ]


def rule_problems(pool: AgentPoolSpec, safety: Safety) -> list[str]:
    """The rules whose condition does not compile, and names used twice in one list (the
    API server refuses those; a task file is read without it), each named by field."""
    problems = [
        f"{where}.name: {name!r} is used by more than one rule"
        for where, names in (
            ("the pool's spec.rules", [r.name for r in pool.rules]),
            ("spec.safety.rules", [r.name for r in safety.rules]),
        )
        for name in sorted({n for n in names if names.count(n) > 1})
    ]
    for _source, where, rule in rules_of(pool, safety):
        try:
            cel.check(rule.condition)
        except cel.CelError as error:
            problems.append(f"{where} ({rule.name!r}).condition: {error}")
    return problems


def step_target(params: dict[str, Any]) -> tuple[str, str]:
    """The namespace and the host a step acts on, where its params name them: `namespace`
    (or the namespace of a `manifest`), and the host of `url`; empty when they do not."""
    namespace = params.get("namespace")
    manifest = params.get("manifest")
    if not isinstance(namespace, str) and isinstance(manifest, dict):
        metadata = manifest.get("metadata")
        namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    url = params.get("url")
    try:  # as the runtime's HTTP client reads it (IDNA: "api\u3002x.com" is "api.x.com")
        host = httpx.URL(url).host if isinstance(url, str) else ""
    except (httpx.InvalidURL, ValueError, UnicodeError):  # not a URL: it names no host
        host = ""
    return (namespace if isinstance(namespace, str) else ""), host


def matching_rules(
    rules: Sequence[tuple[str, str, SafetyRule]], tool: str, params: dict[str, Any] | None
) -> list[RuleMatch]:
    """The rules that hold for a call of `tool` with `params`. A condition that cannot be
    evaluated for it (a missing param, a wrong type) holds: a rule fails closed. `params`
    None: not known before the call (a sub-agent picks them), so `params`, `namespace` and
    `host` are not defined, and a rule that looks at them holds for `tool`."""
    variables: dict[str, Any] = {"tool": tool}
    if params is not None:
        namespace, host = step_target(params)
        variables |= {"params": params, "namespace": namespace, "host": host}
    matches = []
    for source, _where, rule in rules:
        message = rule.message
        try:
            held = cel.holds(rule.condition, variables)
        except cel.CelError as error:
            held = True
            message = "; ".join(filter(None, [message, f"its condition {error}, so it holds"]))
        if held:
            matches.append(
                RuleMatch(
                    name=rule.name,
                    source=source,
                    effect=rule.effect,
                    risk=rule.risk,
                    message=message,
                )
            )
    return matches


def step_matches(
    rules: Sequence[tuple[str, str, SafetyRule]],
    tool: ToolSpec,
    params: dict[str, Any],
) -> tuple[list[RuleMatch], list[str]]:
    """The rules that hold for a step, and why Deny rules refuse it: for its own call, and
    for each tool it may call in turn (a sub-agent's), whose params are not known yet."""
    matches = matching_rules(rules, tool.name, params)
    denied = [d] if (d := denial(matches)) else []
    for called in tool.calls(params):
        theirs = matching_rules(rules, called, None)
        if d := denial(theirs):
            denied.append(f"it may call tool {called!r}, {d}")
        matches += [m for m in theirs if m not in matches]
    return matches, denied


def denial(matches: Sequence[RuleMatch]) -> str | None:
    """Why the Deny rules among `matches` refuse the step, or None when none does."""
    denied = [
        f"denied by the {m.source}'s rule {m.name!r}" + (f": {m.message}" if m.message else "")
        for m in matches
        if m.effect == RuleEffect.deny
    ]
    return "; ".join(denied) or None


def assess(
    step: Step,
    level: RiskLevel,
    tool: ToolSpec,
    safety: Safety,
    timeout_seconds: int,
    rules: Sequence[RuleMatch] = (),
    called: Sequence[ToolSpec] = (),
) -> RiskAssessment:
    """The verdict stored in the plan: `level` is the tool's risk for these params, `rules`
    the safety rules that hold for the step (but Deny ones, which refuse it), `called` the
    tools its sub-agent may call."""
    risks = [CAPABILITY_RISKS.get(c, f"uses capability {c!r}") for c in sorted(tool.capabilities)]
    mitigations = [
        "runs as its own Job with the pool's ServiceAccount",
        f"stopped after {timeout_seconds}s",
    ]
    rules = [m for m in rules if m.effect != RuleEffect.deny]
    for match in rules:
        said = f": {match.message}" if match.message else ""
        if match.effect == RuleEffect.raise_risk and match.risk is not None:
            level = max(level, match.risk, key=lambda r: r.rank)
            raised = f"raises it to {match.risk}{said}"
            risks.append(f"the {match.source}'s rule {match.name!r} {raised}")
        elif said:
            risks.append(f"the {match.source}'s rule {match.name!r}{said}")
    protected = _protected_hits(step.params, safety) if level >= RiskLevel.medium else []
    if protected:
        level = max(level, RiskLevel.high, key=lambda r: r.rank)
        risks += protected
    reasons = []
    threshold = APPROVAL_FROM[safety.level]
    if level >= threshold:
        reasons.append(f"{level} risk needs approval under the {safety.level} policy")
    listed = _required_by_list(tool, called, level, safety)
    if listed:
        reasons.append(listed)
    if protected:
        reasons.append("it touches a protected target")
    reasons += [
        f"the {m.source}'s rule {m.name!r} requires it"
        for m in rules
        if m.effect == RuleEffect.require_approval
    ]
    if reasons:
        mitigations.append(APPROVAL_MITIGATION + "; ".join(reasons))
    if level == RiskLevel.critical and safety.critical_window:
        window = safety.critical_window
        mitigations.append(
            f"starts only between {window.start} and {window.end} UTC on {', '.join(window.days)}"
        )
    return RiskAssessment(
        level=level,
        requires_approval=bool(reasons),
        risks=risks,
        mitigations=mitigations,
        rules=rules,
    )


def tightest(planned: RiskAssessment, now: RiskAssessment) -> RiskAssessment:
    """The verdict on a step as it starts (`now`, for its substituted params) held to the
    plan's: a step never needs less approval or carries less risk than its plan said, and
    what either verdict found (risks, rules) is kept for the person who approves it."""
    if now.level >= planned.level and now.requires_approval >= planned.requires_approval:
        base = now
    elif planned.level >= now.level and planned.requires_approval >= now.requires_approval:
        base = planned
    else:  # each is tighter in one way: one of them requires approval
        base = now.model_copy(update={"level": planned.level, "requires_approval": True})
    return base.model_copy(
        update={
            "risks": list(dict.fromkeys([*planned.risks, *now.risks])),
            "mitigations": base.mitigations,
            "rules": [*planned.rules, *(m for m in now.rules if m not in planned.rules)],
        }
    )


def policy_problems(safety: Safety, registry: ToolRegistry) -> list[str]:
    """What in spec.safety the policy cannot act on: an approval rule that names neither a
    tool nor a risk level (a typo would silently drop the approval), a window that never
    opens (its critical steps would wait forever; the CRD's rule refuses it in a cluster,
    the embedded runner has only this check)."""
    problems = [
        f"spec.safety.requireApprovalFor[{index}]: {entry!r} is neither a risk level "
        f"({', '.join(RiskLevel)}) nor a known tool ({', '.join(registry.names())})"
        for index, entry in enumerate(safety.require_approval_for)
        if entry not in RiskLevel.__members__ and registry.get(entry) is None
    ]
    window = safety.critical_window
    if window is not None and window.start == window.end:
        problems.append(
            f"spec.safety.criticalWindow: start and end are both {window.start}; "
            "the window never opens"
        )
    return problems


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def in_window(window: TimeWindow, now: datetime) -> bool:
    """Whether `now` (UTC) falls inside the window; a window may wrap past midnight."""
    start, end = _minutes(window.start), _minutes(window.end)
    minute = now.hour * 60 + now.minute
    day = now.strftime("%a")
    if start <= end:
        return day in window.days and start <= minute < end
    yesterday = (now - timedelta(days=1)).strftime("%a")
    return (day in window.days and minute >= start) or (yesterday in window.days and minute < end)


def next_window_open(window: TimeWindow, now: datetime) -> datetime:
    """The next minute at which the window is open (searched minute by minute over a week)."""
    candidate = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(8 * 24 * 60):
        if in_window(window, candidate):
            return candidate
        candidate += timedelta(minutes=1)
    raise ValueError("the window never opens")
