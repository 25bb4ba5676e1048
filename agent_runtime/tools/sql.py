"""`sql_query` (read) and `sql_execute` (write), through SQLAlchemy.

The DSN comes from an environment variable named by `dsnEnv` (filled from a Secret), never
from params. `sql_query` is read-only at the database itself, not by inspecting the SQL:
SQLite connections get `PRAGMA query_only`, PostgreSQL transactions `SET TRANSACTION READ
ONLY`, and both drivers take one statement per call, so no clever statement (or a second one
after a `COMMIT`) can write through it.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from agent_contract.builtin import sql as specs
from agent_contract.builtin.sql import DEFAULT_DSN_ENV, DEFAULT_MAX_ROWS
from agent_runtime.registry import Tool, ToolContext, ToolFailure, ToolOutcome, ToolTimeout

__all__ = ["SQL_EXECUTE", "SQL_QUERY", "TOOLS", "jsonable"]

DEFAULT_TIMEOUT = 60.0

if TYPE_CHECKING:  # SQLAlchemy is imported when a SQL tool runs: it slows every start
    from sqlalchemy.engine import Connection, CursorResult


def jsonable(value: Any) -> Any:
    """A database value as JSON can carry it."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


@contextmanager
def _database(
    tool: str, params: dict[str, Any], ctx: ToolContext, *, read_only: bool
) -> Iterator[Connection]:
    """A connection in one transaction, bounded by the step's deadline.

    Driver errors become `ToolFailure`s carrying the driver's own message (SQLAlchemy's
    wrapper would add the statement and a link; the statement is the user's anyway).
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError
    from sqlalchemy.pool import NullPool

    variable = params.get("dsnEnv", DEFAULT_DSN_ENV)
    dsn = ctx.env.get(variable)
    if not dsn:
        raise ToolFailure(f"{tool}: environment variable {variable} is unset (it holds the DSN)")
    try:
        url = make_url(dsn)
    except ArgumentError:
        raise ToolFailure(f"{tool}: {variable} does not hold a valid database URL") from None
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    backend = url.get_backend_name()
    if read_only and backend not in ("sqlite", "postgresql"):
        raise ToolFailure(
            f"{tool}: cannot enforce read-only on {backend}; use sqlite or postgresql"
        )
    timeout = ctx.budget(float(params.get("timeoutSeconds", DEFAULT_TIMEOUT)))
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args["connect_timeout"] = max(1, round(timeout))
        if read_only:
            # Prepared statements take one command each: without this, psycopg sends a query
            # without parameters as a simple query, where "COMMIT; INSERT ..." would escape
            # the read-only transaction.
            connect_args["prepare_threshold"] = 0
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    if read_only and backend == "sqlite":
        event.listen(engine, "connect", _sqlite_query_only)
    try:
        with engine.connect() as conn:
            if backend == "postgresql":
                if read_only:
                    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
            with _interrupt_after(conn, timeout if backend == "sqlite" else None):
                yield conn
    except DBAPIError as exc:
        cancelled = str(exc.orig) == "interrupted" or getattr(exc.orig, "sqlstate", "") == "57014"
        if cancelled:
            raise ToolTimeout(f"{tool}: statement cancelled at the deadline") from None
        raise ToolFailure(f"{tool} failed: {exc.orig}") from None
    finally:
        engine.dispose()


def _sqlite_query_only(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.execute("PRAGMA query_only = ON")


@contextmanager
def _interrupt_after(conn: Connection, seconds: float | None) -> Iterator[None]:
    """Interrupt SQLite's running statement at the deadline (it has no statement timeout)."""
    if seconds is None:
        yield
        return
    dbapi: Any = conn.connection.dbapi_connection
    timer = threading.Timer(seconds, dbapi.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _rows(result: CursorResult[Any], limit: int) -> dict[str, Any]:
    columns = list(result.keys())
    fetched = result.fetchmany(limit + 1)
    rows = [dict(zip(columns, (jsonable(v) for v in row), strict=True)) for row in fetched[:limit]]
    return {"columns": columns, "rows": rows, "truncated": len(fetched) > limit}


def _query(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    from sqlalchemy import text

    with _database("sql_query", params, ctx, read_only=True) as conn:
        result = conn.execute(text(params["query"]), params.get("parameters", {}))
        if result.returns_rows:
            outputs = _rows(result, params.get("maxRows", DEFAULT_MAX_ROWS))
        else:
            outputs = {"columns": [], "rows": [], "truncated": False}
        conn.rollback()
    return ToolOutcome(outputs={**outputs, "rowCount": len(outputs["rows"])})


def _execute(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    from sqlalchemy import text

    with _database("sql_execute", params, ctx, read_only=False) as conn:
        result = conn.execute(text(params["statement"]), params.get("parameters", {}))
        outputs: dict[str, Any] = {"rowCount": result.rowcount}
        if result.returns_rows:
            outputs.update(_rows(result, params.get("maxRows", DEFAULT_MAX_ROWS)))
        conn.commit()
    return ToolOutcome(outputs=outputs)


SQL_QUERY = Tool(specs.SQL_QUERY, _query)
SQL_EXECUTE = Tool(specs.SQL_EXECUTE, _execute)

TOOLS = [SQL_QUERY, SQL_EXECUTE]
