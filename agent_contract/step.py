"""What crosses between the operator and a step: the invocation, the result, and their limits.

The operator writes a `StepInvocation` into the step's environment and reads a `StepResult`
back; the runtime does the reverse. Both import these names from here, so neither needs the
other's package.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_contract.mcp import MCPEndpoint
from agent_contract.pricing import Prices

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_TERMINATION_PATH",
    "MAX_PARAMS_BYTES",
    "MAX_RESULT_BYTES",
    "MESSAGE_LIMIT",
    "STEP_ENV",
    "TERMINATION_PATH_ENV",
    "TIMED_OUT",
    "ModelSettings",
    "StepInvocation",
    "StepResult",
    "Usage",
    "full_result",
    "params_problem",
]

STEP_ENV = "AGENT_STEP"  # the step's StepInvocation, as JSON
API_KEY_ENV = "OPENAI_API_KEY"  # filled from the pool's apiKeySecretRef
TERMINATION_PATH_ENV = "TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MESSAGE_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
# Larger results are read from the step's log; past this one the step fails instead.
MAX_RESULT_BYTES = 1024 * 1024
# Linux caps one environment string (`AGENT_STEP=...`) at 128 KiB (MAX_ARG_STRLEN); a larger
# one makes the step's process fail to start. The params get all but 8 KiB, which is room for
# the rest of the invocation (names, allowed tools, model settings).
_ENV_STRING_LIMIT = 128 * 1024
MAX_PARAMS_BYTES = _ENV_STRING_LIMIT - 8 * 1024
TIMED_OUT = "TimedOut"  # the reason of a step whose tool ran into the step's timeout


class ModelSettings(BaseModel):
    """Where an LLM-using tool or planner reaches its OpenAI-compatible model.

    The API key itself never travels here: only the name of the environment
    variable that holds it (filled from a Secret in a pod).
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    base_url: str | None = Field(default=None, alias="baseURL")
    model: str = "gpt-4o-mini"
    api_key_env: str = Field(default=API_KEY_ENV, alias="apiKeyEnv")
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, alias="maxTokens")
    timeout_seconds: float = Field(default=60.0, alias="timeoutSeconds")
    prices: Prices | None = None  # the pool's; None: the built-in table (`pricing.PRICES`)


class Usage(BaseModel):
    """Tokens and money a step or a plan spent."""

    model_config = ConfigDict(populate_by_name=True)

    tokens: int = 0
    cost_usd: float = Field(default=0.0, alias="costUSD")

    def __add__(self, other: Usage) -> Usage:
        return Usage(tokens=self.tokens + other.tokens, cost_usd=self.cost_usd + other.cost_usd)


class StepInvocation(BaseModel):
    """Everything a step needs to run one attempt of one step (and no secret)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    task: str
    namespace: str = "default"
    task_uid: str = Field(alias="taskUID")
    step_id: str = Field(alias="stepId")
    attempt: int = 1
    tool: str
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, alias="timeoutSeconds")
    requires_approval: bool = Field(default=False, alias="requiresApproval")
    approved_by: str | None = Field(default=None, alias="approvedBy")
    allowed_tools: list[str] | None = Field(default=None, alias="allowedTools")
    allowed_hosts: list[str] = Field(default_factory=list, alias="allowedHosts")
    model: ModelSettings | None = None
    # The MCP tools the step calls (its own, or those its sub-agent may call): where each
    # is and how to reach it.
    mcp_tools: list[MCPEndpoint] = Field(default_factory=list, alias="mcpTools")


class StepResult(BaseModel):
    """What a step reports back, as its termination message and as stdout's last line.

    A result over `MESSAGE_LIMIT` bytes leaves a summary in the termination message with
    `inLog` set: the full result is then the last line of the step's log (stdout), at most
    `MAX_RESULT_BYTES` long.
    """

    model_config = ConfigDict(populate_by_name=True)

    ok: bool
    outputs: dict[str, Any] = Field(default_factory=dict)
    message: str = ""
    reason: str | None = None  # why it failed, when the runtime knows: TIMED_OUT
    usage: Usage = Field(default_factory=Usage)
    in_log: bool = Field(default=False, alias="inLog")


def params_problem(params: Mapping[str, Any]) -> str | None:
    """Why `params` cannot reach a step (too large for its environment), or None."""
    size = len(json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode())
    if size <= MAX_PARAMS_BYTES:
        return None
    return (
        f"the params take {size} bytes as JSON; a step's params may take at most "
        f"{MAX_PARAMS_BYTES} bytes, because the step travels in the {STEP_ENV} environment "
        f"variable and Linux caps one at {_ENV_STRING_LIMIT // 1024} KiB; pass large data "
        "by reference (a URL, a table, an object name) instead"
    )


def full_result(summary: StepResult, last_line: str | None) -> StepResult:
    """The result a summary marked `inLog` stands for, from the last line of the step's log.

    A line that is missing (the log is gone), too long, or not the result the summary
    describes becomes a failed result that says so, with the summary's usage.
    """

    def failed(why: str) -> StepResult:
        message = f"the step's full result (over {MESSAGE_LIMIT} bytes) cannot be read: {why}"
        return StepResult(ok=False, usage=summary.usage, message=message)

    if last_line is None:
        return failed("its log is gone")
    line = last_line.rstrip("\n")
    if len(line.encode()) > MAX_RESULT_BYTES:
        return failed(f"the last line of its log is over the limit of {MAX_RESULT_BYTES} bytes")
    try:
        full = StepResult.model_validate_json(line)
    except ValidationError:
        return failed("the last line of its log is not a result")
    if full.in_log or full.ok != summary.ok or full.usage != summary.usage:
        return failed("the last line of its log is not the result the step summarized")
    return full
