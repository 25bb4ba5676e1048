"""The specs of the built-in tools, one module per area (the runtime's `agent_runtime.tools`
binds each to its implementation)."""

from __future__ import annotations

from agent_contract.builtin import basic, http, kube, llm, shell, sql
from agent_contract.tool import ToolSpec

__all__ = ["builtin_specs"]


def builtin_specs() -> list[ToolSpec]:
    """Every built-in tool's spec, for `ToolRegistry.default()`."""
    return [*basic.SPECS, *http.SPECS, *sql.SPECS, *kube.SPECS, *shell.SPECS, *llm.SPECS]
