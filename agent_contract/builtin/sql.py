"""The specs of `sql_query` (read) and `sql_execute` (write)."""

from __future__ import annotations

from typing import Any

from agent_contract.builtin._schema import ENV_NAME, TIMEOUT, obj
from agent_contract.tool import RiskLevel, ToolSpec

__all__ = ["DEFAULT_DSN_ENV", "DEFAULT_MAX_ROWS", "SPECS", "SQL_EXECUTE", "SQL_QUERY"]

DEFAULT_DSN_ENV = "AGENT_SQL_DSN"
DEFAULT_MAX_ROWS = 1000

_COMMON: dict[str, Any] = {
    "parameters": {
        "type": "object",
        "description": "values for :name placeholders in the SQL",
    },
    "dsnEnv": {**ENV_NAME, "default": DEFAULT_DSN_ENV, "description": "variable holding the DSN"},
    "maxRows": {"type": "integer", "minimum": 1, "maximum": 10000, "default": DEFAULT_MAX_ROWS},
    "timeoutSeconds": TIMEOUT,
}

SQL_QUERY = ToolSpec(
    name="sql_query",
    description=(
        "Run one read-only SQL query (the database refuses writes) and return columns, rows "
        "(at most maxRows) and rowCount. Use :name placeholders with `parameters`."
    ),
    params_schema=obj({"query": {"type": "string", "minLength": 1}, **_COMMON}, required=["query"]),
    risk=RiskLevel.low,
    capabilities=frozenset({"sql:read"}),
    timeout_seconds=120,
)

SQL_EXECUTE = ToolSpec(
    name="sql_execute",
    description=(
        "Run one SQL statement that may write (INSERT, UPDATE, DELETE, DDL) and commit it; "
        "returns rowCount, and rows when the statement returns some (RETURNING)."
    ),
    params_schema=obj(
        {"statement": {"type": "string", "minLength": 1}, **_COMMON}, required=["statement"]
    ),
    risk=RiskLevel.high,
    capabilities=frozenset({"sql:write"}),
    timeout_seconds=300,
)

SPECS = [SQL_QUERY, SQL_EXECUTE]
