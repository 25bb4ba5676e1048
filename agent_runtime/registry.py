"""The runtime's toolbox: each tool's spec (from `agent_contract`) bound to the function
that runs it, and what a running tool is handed and may raise.

Only the runtime imports this module and the tools: the operator validates plans against
the specs alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_contract import ByName, StepInvocation, ToolSpec, Usage, published

__all__ = [
    "ENTRY_POINT_GROUP",
    "Tool",
    "ToolContext",
    "ToolFailure",
    "ToolFunc",
    "ToolOutcome",
    "ToolTimeout",
    "Toolbox",
]

# Custom tools publish their Tool (or a list of them, or a callable returning either) here;
# their specs go to `agent_contract.SPEC_ENTRY_POINT_GROUP` for the operator.
ENTRY_POINT_GROUP = "agent_runtime.tools"


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
    """What a running tool may know about its step, and the toolbox for sub-agents."""

    invocation: StepInvocation
    toolbox: Toolbox
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
    """A tool a step can call: its spec, and the function that runs it."""

    spec: ToolSpec
    run: ToolFunc


class Toolbox(ByName[Tool]):
    """Runnable tools by name: the built-ins plus those published through entry points."""

    def name_of(self, item: Tool) -> str:
        return item.spec.name

    @classmethod
    def default(cls) -> Toolbox:
        """The built-in tools and every tool published under `ENTRY_POINT_GROUP`."""
        from agent_runtime.tools import builtin_tools

        return cls([*builtin_tools(), *published(ENTRY_POINT_GROUP, Tool)])
