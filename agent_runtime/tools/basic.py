"""Tools for tests and benchmarks: they do nothing, wait, or fail on purpose."""

from __future__ import annotations

import time
from typing import Any

from agent_contract.builtin import basic as specs
from agent_runtime.registry import Tool, ToolContext, ToolFailure, ToolOutcome

__all__ = ["TOOLS"]


def _noop(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    return ToolOutcome(outputs=dict(params.get("outputs", {})))


def _sleep(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    time.sleep(float(params["seconds"]))
    return ToolOutcome(outputs={"slept": params["seconds"], **params.get("outputs", {})})


def _fail(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    attempt = ctx.invocation.attempt
    if "attempts" in params and attempt > params["attempts"]:
        return ToolOutcome(outputs={"attempt": attempt})
    raise ToolFailure(params.get("message", "failed on purpose"))


TOOLS = [Tool(specs.NOOP, _noop), Tool(specs.SLEEP, _sleep), Tool(specs.FAIL, _fail)]
