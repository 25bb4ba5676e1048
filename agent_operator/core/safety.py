"""The safety policy: how risky a step is, and whether a person must approve it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from agent_contract import RiskLevel, ToolRegistry, ToolSpec
from agent_operator.api import RiskAssessment, Safety, SafetyLevel, Step, TimeWindow
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
}


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


def _required_by_list(tool: ToolSpec, level: RiskLevel, safety: Safety) -> str | None:
    for entry in safety.require_approval_for:
        if entry == tool.name:
            return f"spec.safety.requireApprovalFor names tool {tool.name!r}"
        if entry in RiskLevel.__members__ and level >= RiskLevel(entry):
            return f"spec.safety.requireApprovalFor asks for approval from {entry} risk up"
    return None


def assess(
    step: Step, level: RiskLevel, tool: ToolSpec, safety: Safety, timeout_seconds: int
) -> RiskAssessment:
    """The verdict stored in the plan: `level` is the tool's risk for these params."""
    risks = [CAPABILITY_RISKS.get(c, f"uses capability {c!r}") for c in sorted(tool.capabilities)]
    mitigations = [
        "runs as its own Job with the pool's ServiceAccount",
        f"stopped after {timeout_seconds}s",
    ]
    protected = _protected_hits(step.params, safety) if level >= RiskLevel.medium else []
    if protected:
        level = max(level, RiskLevel.high, key=lambda r: r.rank)
        risks += protected
    reasons = []
    threshold = APPROVAL_FROM[safety.level]
    if level >= threshold:
        reasons.append(f"{level} risk needs approval under the {safety.level} policy")
    listed = _required_by_list(tool, level, safety)
    if listed:
        reasons.append(listed)
    if protected:
        reasons.append("it touches a protected target")
    if reasons:
        mitigations.append("a person approves it first: " + "; ".join(reasons))
    if level == RiskLevel.critical and safety.critical_window:
        window = safety.critical_window
        mitigations.append(
            f"starts only between {window.start} and {window.end} UTC on {', '.join(window.days)}"
        )
    return RiskAssessment(
        level=level, requires_approval=bool(reasons), risks=risks, mitigations=mitigations
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
