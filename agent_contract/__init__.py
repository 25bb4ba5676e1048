"""The contract between the operator and the step runtime.

Both `agent_operator` and `agent_runtime` import this package, and neither imports the
other: the step's invocation and result, their size limits and environment names
(`agent_contract.step`), tool metadata with the risk rules (`agent_contract.tool`, the
built-ins' specs in `agent_contract.builtin`), and what a model's tokens cost, for the
planner and the LLM tools alike (`agent_contract.pricing`).
"""

from __future__ import annotations

from agent_contract.pricing import PRICES, Prices, cost_usd
from agent_contract.step import (
    API_KEY_ENV,
    DEFAULT_TERMINATION_PATH,
    MAX_PARAMS_BYTES,
    MAX_RESULT_BYTES,
    MESSAGE_LIMIT,
    STEP_ENV,
    TERMINATION_PATH_ENV,
    TIMED_OUT,
    ModelSettings,
    StepInvocation,
    StepResult,
    Usage,
    full_result,
    params_problem,
)
from agent_contract.tool import (
    NETWORK,
    SPEC_ENTRY_POINT_GROUP,
    ByName,
    RiskLevel,
    RiskRule,
    ToolRegistry,
    ToolSpec,
    published,
)

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_TERMINATION_PATH",
    "MAX_PARAMS_BYTES",
    "MAX_RESULT_BYTES",
    "MESSAGE_LIMIT",
    "NETWORK",
    "PRICES",
    "SPEC_ENTRY_POINT_GROUP",
    "STEP_ENV",
    "TERMINATION_PATH_ENV",
    "TIMED_OUT",
    "ByName",
    "ModelSettings",
    "Prices",
    "RiskLevel",
    "RiskRule",
    "StepInvocation",
    "StepResult",
    "ToolRegistry",
    "ToolSpec",
    "Usage",
    "cost_usd",
    "full_result",
    "params_problem",
    "published",
]
