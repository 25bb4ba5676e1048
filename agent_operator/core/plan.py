"""Plan validation: every step checked against the tool registry, the pool and the policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

from agent_contract import NETWORK, ToolRegistry, ToolSpec, Usage, params_problem
from agent_contract.mcp import WHOLE_SERVER, granted, server_of, tool_name
from agent_operator.api import AgentPoolSpec, AgentTaskSpec, PlannedStep, Step
from agent_operator.core import cel
from agent_operator.core.cel import CelError
from agent_operator.core.safety import (
    assess,
    policy_problems,
    rule_problems,
    rules_of,
    step_matches,
)
from agent_operator.core.templating import (
    is_placeholder,
    referenced_inputs,
    referenced_steps,
    steps_in_condition,
)


@dataclass(frozen=True)
class PlanningResult:
    """A planner's answer: a validated plan, or the reason and what to fix; tokens either way."""

    plan: list[PlannedStep] | None
    usage: Usage = field(default_factory=Usage)
    reason: str | None = None
    message: str | None = None


class InvalidPlan(Exception):
    """The plan cannot run; `problems` says, per step and field, what to fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def resolve_dependencies(steps: list[Step]) -> dict[str, list[str]]:
    """Explicit dependencies per step: none given means after the previous step."""
    resolved: dict[str, list[str]] = {}
    for index, step in enumerate(steps):
        if step.depends_on is not None:
            resolved[step.id] = list(step.depends_on)
        else:
            resolved[step.id] = [steps[index - 1].id] if index else []
    return resolved


def _ancestors(dependencies: dict[str, list[str]]) -> dict[str, set[str]]:
    order = TopologicalSorter(dependencies).static_order()
    ancestors: dict[str, set[str]] = {}
    for step_id in order:
        parents = dependencies.get(step_id, [])
        ancestors[step_id] = set(parents).union(*(ancestors.get(p, set()) for p in parents))
    return ancestors


def _grant_problems(tool: ToolSpec, pool: AgentPoolSpec) -> list[str]:
    """Why the pool does not let its agents use `tool` (empty: it does)."""
    problems = []
    if not granted(tool.name, pool.tools):
        mcp = server_of(tool.name)
        problems.append(
            f"the pool does not grant MCP tool {tool.name!r}; list it (or "
            f"{tool_name(mcp[0], WHOLE_SERVER)!r}) in the AgentPool's spec.tools"
            if mcp is not None
            else f"the pool does not grant tool {tool.name!r}; it grants: "
            + (", ".join(pool.tools or []) or "none")
        )
    if pool.capabilities is not None:
        missing = sorted(tool.capabilities - set(pool.capabilities))
        if missing:
            problems.append(
                f"tool {tool.name!r} needs capabilities {missing} that the pool does not grant"
            )
    if NETWORK in tool.capabilities and not pool.allowed_hosts:
        problems.append(
            f"tool {tool.name!r} reaches other hosts and the pool grants none: list the hosts "
            "it may reach in the AgentPool's spec.allowedHosts (host, host:port or *.domain)"
        )
    return problems


def granted_tools(pool: AgentPoolSpec, registry: ToolRegistry) -> list[ToolSpec]:
    """The tools agents of the pool may use: what a planner may offer."""
    return [tool for tool in registry if not _grant_problems(tool, pool)]


def call_problems(
    tool: ToolSpec, params: dict[str, Any], pool: AgentPoolSpec, registry: ToolRegistry
) -> list[str]:
    """Why the tools a call of `tool` with `params` may call in turn (a sub-agent's) are
    not for this pool: unknown, or not granted. Checked on the plan, and again on the
    params a step starts with, where a placeholder may have filled the list in."""
    problems = []
    for name in tool.calls(params):
        called, mcp = registry.get(name), server_of(name)
        if called is None and mcp is not None:
            problems.append(
                f"calls tool {name!r}, which no MCPServer {mcp[0]!r} of the namespace offers"
            )
        elif called is None:
            problems.append(f"calls unknown tool {name!r}")
        else:
            problems += _grant_problems(called, pool)
    return problems


def _tool_problems(
    where: str, step: Step, pool: AgentPoolSpec, registry: ToolRegistry
) -> list[str]:
    tool = registry.get(step.tool)
    if tool is None:
        return [
            f"{where}.tool: unknown tool {step.tool!r}; known tools: {', '.join(registry.names())}"
        ]
    grants = [f"{where}.tool: {problem}" for problem in _grant_problems(tool, pool)]
    grants += [f"{where}.params: {p}" for p in call_problems(tool, step.params, pool, registry)]
    size = params_problem(step.params)
    return (
        grants
        + [f"{where}.{error}" for error in tool.param_errors(step.params, is_placeholder)]
        + ([f"{where}.params: {size}"] if size else [])
    )


def build_plan(
    steps: list[Step], spec: AgentTaskSpec, pool: AgentPoolSpec, registry: ToolRegistry
) -> list[PlannedStep]:
    """Validate the steps and attach dependencies, timeouts and risk; raise InvalidPlan."""
    if not steps:
        raise InvalidPlan(["the plan has no steps"])
    problems = policy_problems(spec.safety, registry) + rule_problems(pool, spec.safety)
    if len(steps) > spec.limits.max_steps:
        problems.append(
            f"the plan has {len(steps)} steps; spec.limits.maxSteps allows {spec.limits.max_steps}"
        )
    ids = [s.id for s in steps]
    problems += [
        f"steps[{i}].id: {s.id!r} is used by more than one step"
        for i, s in enumerate(steps)
        if ids.index(s.id) != i
    ]
    dependencies = resolve_dependencies(steps)
    for index, step in enumerate(steps):
        where = f"step {step.id!r} (steps[{index}])"
        problems += _tool_problems(where, step, pool, registry)
        problems += [
            f"{where}.dependsOn: unknown step {dep!r}"
            for dep in step.depends_on or []
            if dep not in ids
        ]
        problems += [
            f"{where}.params: uses inputs.{key}, which spec.inputs does not define"
            for key in sorted(referenced_inputs(step.params) - set(spec.inputs))
        ]
        if step.when is not None:
            try:
                cel.check(step.when)
            except CelError as error:
                problems.append(f"{where}.when: {error}")
    if problems:
        raise InvalidPlan(problems)

    try:
        ancestors = _ancestors(dependencies)
    except CycleError as error:
        cycle = " -> ".join(error.args[1])
        raise InvalidPlan([f"dependsOn forms a cycle: {cycle}"]) from None
    for index, step in enumerate(steps):
        where = f"step {step.id!r} (steps[{index}])"
        for part, used in (
            ("params", referenced_steps(step.params)),
            ("when", steps_in_condition(step.when or "")),
        ):
            for ref in sorted(used - ancestors[step.id]):
                problems.append(
                    f"{where}.{part}: uses step {ref!r}, "
                    + (
                        "which does not exist"
                        if ref not in ids
                        else "which is not among its dependencies (add it to dependsOn)"
                    )
                )
    if problems:
        raise InvalidPlan(problems)

    rules = rules_of(pool, spec.safety)
    planned = []
    for index, step in enumerate(steps):
        tool = registry.get(step.tool)
        assert tool is not None  # checked above
        matches, denied = step_matches(rules, tool, step.params)
        if denied:
            problems += [f"step {step.id!r} (steps[{index}]): {d}" for d in denied]
            continue
        timeout = step.timeout_seconds or int(tool.timeout_seconds)
        planned.append(
            PlannedStep(
                **step.model_dump(exclude={"depends_on", "timeout_seconds"}),
                depends_on=dependencies[step.id],
                timeout_seconds=timeout,
                risk=assess(
                    step,
                    tool.effective_risk(step.params, registry),
                    tool,
                    spec.safety,
                    timeout,
                    matches,
                    registry.called_by(tool, step.params),
                ),
            )
        )
    if problems:
        raise InvalidPlan(problems)
    return planned
