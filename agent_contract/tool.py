"""Tool metadata: what a step may call, how risky it is, and what it needs.

The operator validates plans against these specs and the runtime checks each step against
the same ones before it runs the tool bound to it (`agent_runtime.registry`), so both sides
agree on every rule while the operator never loads a tool's implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import entry_points
from typing import Any, Generic, Self, TypeVar

from jsonschema import Draft202012Validator, ValidationError

__all__ = [
    "NETWORK",
    "SPEC_ENTRY_POINT_GROUP",
    "ByName",
    "RiskLevel",
    "RiskRule",
    "ToolRegistry",
    "ToolSpec",
    "published",
]

# Custom tools publish their ToolSpec (or a list of them, or a callable returning either)
# here, for the operator; the runtime's implementations go to `agent_runtime.tools`.
SPEC_ENTRY_POINT_GROUP = "agent_contract.tools"
# The capability of tools that reach other hosts: they may reach only the hosts the pool
# grants (`StepInvocation.allowed_hosts`); a pool that grants none gives them no host at all.
NETWORK = "network"


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


RiskRule = Callable[[dict[str, Any], "ToolRegistry"], RiskLevel]


@dataclass(frozen=True)
class ToolSpec:
    """A tool as plans and policies see it: name, params schema, risk, needs, timeout."""

    name: str
    description: str
    params_schema: dict[str, Any]
    risk: RiskLevel
    capabilities: frozenset[str] = frozenset()
    timeout_seconds: float = 300.0
    # The risk of one call when it depends on the params (an HTTP GET is safer than a POST);
    # `risk` stays the worst case for callers that cannot look at params.
    risk_for: RiskRule | None = None
    # The tools one call may call in turn (a sub-agent's), so that planning holds them to the
    # pool's grants as if the plan called them itself.
    calls_for: Callable[[dict[str, Any]], list[str]] | None = None
    # Every call needs a person's approval, whatever its risk (an MCP server's override).
    requires_approval: bool = False

    def effective_risk(self, params: dict[str, Any], registry: ToolRegistry) -> RiskLevel:
        """The risk of calling this tool with `params` (the safety policy's input)."""
        return self.risk if self.risk_for is None else self.risk_for(params, registry)

    def calls(self, params: dict[str, Any]) -> list[str]:
        """The names of the tools a call with `params` may call in turn."""
        return [] if self.calls_for is None else self.calls_for(params)

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


T = TypeVar("T")


class ByName(Generic[T]):
    """Items by name, each name once: what the spec registry and the runtime's toolbox share."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._items: dict[str, T] = {}
        for item in items:
            self.register(item)

    def name_of(self, item: T) -> str:
        raise NotImplementedError

    def register(self, item: T) -> None:
        name = self.name_of(item)
        if name in self._items:
            raise ValueError(f"tool {name!r} is registered twice")
        self._items[name] = item

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[name] for name in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def with_tools(self, items: Iterable[T]) -> Self:
        """These items and `items` (an MCP server's tools, say) in a new collection."""
        return type(self)([*self, *items])


class ToolRegistry(ByName[ToolSpec]):
    """Tool specs by name: the built-ins plus those published through entry points."""

    def name_of(self, item: ToolSpec) -> str:
        return item.name

    def called_by(self, tool: ToolSpec, params: dict[str, Any]) -> list[ToolSpec]:
        """The known tools a call of `tool` with `params` may call in turn (a sub-agent's)."""
        return [spec for name in tool.calls(params) if (spec := self.get(name)) is not None]

    @classmethod
    def default(cls) -> ToolRegistry:
        """The built-in specs and every spec published under `SPEC_ENTRY_POINT_GROUP`."""
        from agent_contract.builtin import builtin_specs

        return cls([*builtin_specs(), *published(SPEC_ENTRY_POINT_GROUP, ToolSpec)])


def published(group: str, kind: type[T]) -> list[T]:
    """The objects of `kind` that installed packages publish under an entry-point `group`.

    An entry point names one object, a list of them, or a callable returning either.
    """
    found: list[T] = []
    for entry in entry_points(group=group):
        loaded = entry.load()
        if callable(loaded) and not isinstance(loaded, kind):
            loaded = loaded()
        items = loaded if isinstance(loaded, Iterable) else [loaded]
        for item in items:
            if not isinstance(item, kind):
                raise TypeError(
                    f"entry point {entry.name} = {entry.value} in group {group} gives "
                    f"{type(item).__name__}, not a {kind.__name__}"
                )
            found.append(item)
    return found
