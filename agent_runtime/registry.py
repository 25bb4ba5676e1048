"""The tool registry: what a step may call, how risky it is, and what it needs.

The operator reads the registry's metadata to validate plans; the runtime uses
the same registry to run the tools, so both sides agree on every rule.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib.metadata import entry_points
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "agent_runtime.tools"


class RiskLevel(StrEnum):
    """How much harm a tool can do, lowest first."""

    safe = "safe"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        return list(RiskLevel).index(self)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, RiskLevel):
            return NotImplemented
        return self.rank >= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, RiskLevel):
            return NotImplemented
        return self.rank > other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, RiskLevel):
            return NotImplemented
        return self.rank <= other.rank

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, RiskLevel):
            return NotImplemented
        return self.rank < other.rank


class ModelSettings(BaseModel):
    """Where an LLM-using tool or planner reaches its OpenAI-compatible model.

    The API key itself never travels here: only the name of the environment
    variable that holds it (filled from a Secret in a pod).
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    base_url: str | None = Field(default=None, alias="baseURL")
    model: str = "gpt-4o-mini"
    api_key_env: str = Field(default="OPENAI_API_KEY", alias="apiKeyEnv")
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, alias="maxTokens")
    timeout_seconds: float = Field(default=60.0, alias="timeoutSeconds")


class Usage(BaseModel):
    """Tokens and money a step or a plan spent."""

    model_config = ConfigDict(populate_by_name=True)

    tokens: int = 0
    cost_usd: float = Field(default=0.0, alias="costUSD")

    def __add__(self, other: Usage) -> Usage:
        return Usage(tokens=self.tokens + other.tokens, cost_usd=self.cost_usd + other.cost_usd)


class StepInvocation(BaseModel):
    """Everything a step Job needs to run one attempt of one step (and no secret)."""

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
    model: ModelSettings | None = None


class StepResult(BaseModel):
    """What a step reports back: through the termination message, or the store when large."""

    model_config = ConfigDict(populate_by_name=True)

    ok: bool
    outputs: dict[str, Any] = Field(default_factory=dict)
    message: str = ""
    usage: Usage = Field(default_factory=Usage)
    ref: str | None = None  # a checkpoint-store key holding the full result


class ToolFailure(Exception):
    """A tool failed in a way the user should read: the message is reported, not a traceback.

    `outputs` carries what the tool learnt before failing (an exit code, an HTTP status), so a
    failed step still reports it.
    """

    def __init__(
        self, message: str, outputs: Mapping[str, Any] | None = None, usage: Usage | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.outputs: dict[str, Any] = dict(outputs or {})
        self.usage = usage or Usage()  # tokens spent before failing still count against limits


class ToolTimeout(ToolFailure):
    """The tool ran into its deadline."""


@dataclass(frozen=True)
class ToolContext:
    """What a running tool may know about its step, and the registry for sub-agents."""

    invocation: StepInvocation
    registry: ToolRegistry
    deadline: float | None = None  # time.monotonic() by which the tool must be done
    env: Mapping[str, str] = field(default_factory=dict)

    def budget(self, limit: float) -> float:
        """Seconds a blocking call may take: `limit`, cut to what is left before the deadline.

        Tools pass this down as socket, statement or process timeouts, so they stop themselves
        at the deadline instead of being abandoned by the runner.
        """
        if self.deadline is None:
            return limit
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ToolTimeout("the step's deadline has passed")
        return min(limit, left)


ToolFunc = Callable[[dict[str, Any], ToolContext], "ToolOutcome"]


@dataclass(frozen=True)
class ToolOutcome:
    """A tool's outputs and the tokens it spent (LLM tools)."""

    outputs: dict[str, Any]
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class Tool:
    """A tool a step can call: metadata for validation plus the function that runs it."""

    name: str
    description: str
    params_schema: dict[str, Any]
    risk: RiskLevel
    run: ToolFunc
    capabilities: frozenset[str] = frozenset()
    timeout_seconds: float = 300.0
    # The risk of one call when it depends on the params (an HTTP GET is safer than a POST);
    # `risk` stays the worst case for callers that cannot look at params.
    risk_for: Callable[[dict[str, Any], ToolRegistry], RiskLevel] | None = None

    def effective_risk(self, params: dict[str, Any], registry: ToolRegistry) -> RiskLevel:
        """The risk of calling this tool with `params` (the safety policy's input)."""
        return self.risk if self.risk_for is None else self.risk_for(params, registry)

    def param_errors(self, params: Any, skip: Callable[[Any], bool] = lambda _: False) -> list[str]:
        """Every way `params` break the tool's schema, one line each, naming the field.

        `skip` drops errors about values that cannot be judged yet (placeholders
        filled in at run time).
        """
        validator = Draft202012Validator(self.params_schema)
        errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
        return [_describe(error) for error in errors if not skip(error.instance)]


def _describe(error: ValidationError) -> str:
    """`params.a[0].b: message`, with the allowed names when a property is unexpected."""
    path = "params" + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
    )
    message = str(error.message)
    if error.validator == "additionalProperties" and isinstance(error.schema, Mapping):
        allowed = sorted(error.schema.get("properties", {}))
        message += f" (allowed: {', '.join(allowed) or 'none'})"
    return f"{path}: {message}"


class ToolRegistry:
    """Tools by name: the built-ins plus those registered through entry points."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def __iter__(self) -> Any:
        return iter(self._tools[name] for name in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    @classmethod
    def default(cls) -> ToolRegistry:
        """The built-in tools and every tool published under the entry-point group."""
        from agent_runtime.tools import builtin_tools

        registry = cls(builtin_tools())
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            loaded = entry.load()
            tools = loaded() if callable(loaded) and not isinstance(loaded, Tool) else loaded
            for tool in tools if isinstance(tools, Iterable) else [tools]:
                registry.register(tool)
        return registry
