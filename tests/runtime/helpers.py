"""Building blocks for runtime tests: a step context without the CLI around it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_contract import ModelSettings, StepInvocation
from agent_runtime.executor import run_tool
from agent_runtime.registry import Toolbox, ToolContext, ToolOutcome


def invocation(
    tool: str = "noop", params: dict[str, Any] | None = None, **fields: Any
) -> StepInvocation:
    """A valid step of task `demo` with `fields` (python names) overriding the defaults."""
    return StepInvocation(
        task="demo", task_uid="uid-1", step_id="s1", tool=tool, params=params or {}, **fields
    )


def context(
    tool: str = "noop",
    params: dict[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    model: ModelSettings | None = None,
    allowed_tools: list[str] | None = None,
    allowed_hosts: list[str] | None = None,
    toolbox: Toolbox | None = None,
) -> ToolContext:
    """What a tool sees when the runtime calls it (no deadline unless the executor sets one)."""
    return ToolContext(
        invocation=invocation(
            tool,
            params,
            model=model,
            allowed_tools=allowed_tools,
            allowed_hosts=allowed_hosts or [],
        ),
        toolbox=toolbox or Toolbox.default(),
        env=dict(env or {}),
    )


def call(
    name: str,
    params: dict[str, Any],
    *,
    timeout: float | None = None,
    **context_fields: Any,
) -> ToolOutcome:
    """Run a registered tool as the runtime does: params checked, under its timeout."""
    ctx = context(name, params, **context_fields)
    tool = ctx.toolbox.get(name)
    assert tool is not None
    assert tool.spec.param_errors(params) == []
    return run_tool(tool, params, ctx, timeout or tool.spec.timeout_seconds)
