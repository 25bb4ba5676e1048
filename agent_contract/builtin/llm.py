"""The specs of the LLM tools: one completion, and a ReAct agent over the other tools."""

from __future__ import annotations

from typing import Any

from agent_contract.builtin._schema import obj
from agent_contract.tool import RiskLevel, ToolRegistry, ToolSpec

__all__ = ["LLM_COMPLETE", "REACT_AGENT", "REACT_AGENT_TOOL", "SPECS"]

REACT_AGENT = "react_agent"


def _react_tools(params: dict[str, Any]) -> list[str]:
    """The tools a ReAct call lists, itself left out (it never calls itself)."""
    tools = params.get("tools")
    if not isinstance(tools, list):  # a placeholder, filled in at run time
        return []
    return [name for name in tools if isinstance(name, str) and name != REACT_AGENT]


def _react_risk(params: dict[str, Any], registry: ToolRegistry) -> RiskLevel:
    """As risky as the riskiest tool it may call (and at least low: it talks to a model)."""
    risks = [RiskLevel.low]
    for name in _react_tools(params):
        tool = registry.get(name)
        if tool is not None:
            risks.append(tool.risk)
    return max(risks, key=lambda level: level.rank)


_TUNING = {
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "maxTokens": {"type": "integer", "minimum": 1, "description": "per completion"},
}

LLM_COMPLETE = ToolSpec(
    name="llm_complete",
    description=(
        "Ask the pool's model for one chat completion, from a prompt or a list of messages; "
        "returns text (and json, parsed, when json is true)."
    ),
    params_schema=obj(
        {
            "prompt": {"type": "string", "minLength": 1},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": obj(
                    {
                        "role": {"enum": ["system", "user", "assistant"]},
                        "content": {"type": "string"},
                    },
                    required=["role", "content"],
                ),
            },
            "system": {"type": "string"},
            "json": {"type": "boolean", "description": "ask for and parse a JSON object"},
            **_TUNING,
        },
        extra={"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]},
    ),
    risk=RiskLevel.low,
    capabilities=frozenset({"llm"}),
    timeout_seconds=120,
)

REACT_AGENT_TOOL = ToolSpec(
    name=REACT_AGENT,
    description=(
        "A sub-agent that works towards `goal` by calling the listed tools (those the step "
        "allows) through function calling, for at most maxIterations model turns; returns "
        "the answer and a trace of its tool calls."
    ),
    params_schema=obj(
        {
            "goal": {"type": "string", "minLength": 1},
            "tools": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "uniqueItems": True,
            },
            "maxIterations": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
            "system": {"type": "string", "description": "replaces the default instructions"},
            "context": {"description": "JSON handed to the model with the goal"},
            **_TUNING,
        },
        required=["goal", "tools"],
    ),
    # The worst case of the built-ins; `effective_risk` looks at the tools a call lists.
    risk=RiskLevel.high,
    risk_for=_react_risk,
    calls_for=_react_tools,
    capabilities=frozenset({"llm"}),
    timeout_seconds=600,
)

SPECS = [LLM_COMPLETE, REACT_AGENT_TOOL]
