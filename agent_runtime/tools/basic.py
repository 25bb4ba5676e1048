"""Tools for tests and benchmarks: they do nothing, wait, or fail on purpose."""

from __future__ import annotations

import time
from typing import Any

from agent_runtime.registry import RiskLevel, Tool, ToolContext, ToolFailure, ToolOutcome


def _noop(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    return ToolOutcome(outputs=dict(params.get("outputs", {})))


def _sleep(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    time.sleep(float(params["seconds"]))
    return ToolOutcome(outputs={"slept": params["seconds"], **params.get("outputs", {})})


def _fail(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    raise ToolFailure(params.get("message", "failed on purpose"))


_OUTPUTS = {"type": "object", "description": "values returned as the step's outputs"}

TOOLS = [
    Tool(
        name="noop",
        description="Does nothing; returns `outputs` as given.",
        params_schema={
            "type": "object",
            "properties": {"outputs": _OUTPUTS},
            "additionalProperties": True,
        },
        risk=RiskLevel.safe,
        run=_noop,
        timeout_seconds=10,
    ),
    Tool(
        name="sleep",
        description="Waits `seconds`, then returns `outputs` as given.",
        params_schema={
            "type": "object",
            "properties": {"seconds": {"type": "number", "minimum": 0}, "outputs": _OUTPUTS},
            "required": ["seconds"],
            "additionalProperties": False,
        },
        risk=RiskLevel.safe,
        run=_sleep,
        timeout_seconds=3600,
    ),
    Tool(
        name="fail",
        description="Fails with `message`.",
        params_schema={
            "type": "object",
            "properties": {"message": {"type": "string"}},
            "additionalProperties": False,
        },
        risk=RiskLevel.safe,
        run=_fail,
        timeout_seconds=10,
    ),
]
