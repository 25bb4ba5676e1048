"""Built-in tools, one module per area; custom ones come through entry points."""

from __future__ import annotations

from agent_runtime.registry import Tool
from agent_runtime.tools import basic, http, kube, llm, shell, sql


def builtin_tools() -> list[Tool]:
    """Every built-in tool, for `ToolRegistry.default()`."""
    return [*basic.TOOLS, *http.TOOLS, *sql.TOOLS, *kube.TOOLS, *shell.TOOLS, *llm.TOOLS]
