"""Specs of the tools for tests and benchmarks: they do nothing, wait, or fail on purpose."""

from __future__ import annotations

from agent_contract.tool import RiskLevel, ToolSpec

__all__ = ["FAIL", "NOOP", "SLEEP", "SPECS"]

_OUTPUTS = {"type": "object", "description": "values returned as the step's outputs"}

NOOP = ToolSpec(
    name="noop",
    description="Does nothing; returns `outputs` as given.",
    params_schema={
        "type": "object",
        "properties": {"outputs": _OUTPUTS},
        "additionalProperties": True,
    },
    risk=RiskLevel.safe,
    timeout_seconds=10,
)

SLEEP = ToolSpec(
    name="sleep",
    description="Waits `seconds`, then returns `outputs` as given.",
    params_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0}, "outputs": _OUTPUTS},
        "required": ["seconds"],
        "additionalProperties": False,
    },
    risk=RiskLevel.safe,
    timeout_seconds=3600,
)

FAIL = ToolSpec(
    name="fail",
    description="Fails with `message`; with `attempts`, only its first that many attempts "
    "fail and a later one succeeds (a flaky step).",
    params_schema={
        "type": "object",
        "properties": {
            "message": {"type": "string"},
            "attempts": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": False,
    },
    risk=RiskLevel.safe,
    timeout_seconds=10,
)

SPECS = [NOOP, SLEEP, FAIL]
