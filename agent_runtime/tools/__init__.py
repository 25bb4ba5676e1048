"""Built-in tools, one module per area, each binding its spec to a function."""

from __future__ import annotations

from agent_runtime.registry import Tool
from agent_runtime.tools import basic, http, kube, llm, shell, sql

__all__ = ["builtin_tools"]


def builtin_tools() -> list[Tool]:
    """Every built-in tool, for `Toolbox.default()`."""
    return [*basic.TOOLS, *http.TOOLS, *sql.TOOLS, *kube.TOOLS, *shell.TOOLS, *llm.TOOLS]
