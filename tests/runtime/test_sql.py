"""sql_query and sql_execute on real SQLite files, and on PostgreSQL (store tier)."""

from __future__ import annotations

import datetime
import decimal
import sqlite3
import uuid
from pathlib import Path

import pytest

from agent_runtime.registry import ToolFailure, ToolTimeout
from agent_runtime.tools.sql import jsonable
from tests.runtime.helpers import call


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite file with a table of two people."""
    path = tmp_path / "people.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, photo BLOB)")
        connection.execute(
            "INSERT INTO people (name, photo) VALUES ('ada', x'0102'), ('bob', NULL)"
        )
    return path


def env_for(path: Path, variable: str = "AGENT_SQL_DSN") -> dict[str, str]:
    return {variable: f"sqlite:///{path}"}


def names(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT name FROM people ORDER BY id")]


def test_query_returns_columns_rows_and_count(db: Path) -> None:
    params = {
        "query": "SELECT id, name, photo FROM people WHERE id >= :low",
        "parameters": {"low": 1},
    }
    outcome = call("sql_query", params, env=env_for(db))
    assert outcome.outputs["columns"] == ["id", "name", "photo"]
    assert outcome.outputs["rows"] == [
        {"id": 1, "name": "ada", "photo": "AQI="},
        {"id": 2, "name": "bob", "photo": None},
    ]
    assert outcome.outputs["rowCount"] == 2
    assert outcome.outputs["truncated"] is False


def test_query_caps_rows(db: Path) -> None:
    outcome = call("sql_query", {"query": "SELECT name FROM people", "maxRows": 1}, env=env_for(db))
    assert outcome.outputs["rows"] == [{"name": "ada"}]
    assert outcome.outputs["truncated"] is True


def test_dsn_variable_is_chosen_by_name(db: Path) -> None:
    outcome = call(
        "sql_query",
        {"query": "SELECT count(*) AS n FROM people", "dsnEnv": "REPORTS_DB"},
        env=env_for(db, "REPORTS_DB"),
    )
    assert outcome.outputs["rows"] == [{"n": 2}]


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("INSERT INTO people (name) VALUES ('eve')", "readonly"),
        ("UPDATE people SET name = 'eve'", "readonly"),
        ("REPLACE INTO people (id, name) VALUES (1, 'eve')", "readonly"),
        ("DELETE FROM people", "readonly"),
        ("DROP TABLE people", "readonly"),
        ("CREATE TABLE other (x INTEGER)", "readonly"),
        ("PRAGMA query_only = OFF; DELETE FROM people", "one statement at a time"),
    ],
)
def test_query_tool_cannot_write(db: Path, statement: str, refusal: str) -> None:
    with pytest.raises(ToolFailure, match=f"sql_query failed: .*{refusal}"):
        call("sql_query", {"query": statement}, env=env_for(db))
    assert names(db) == ["ada", "bob"]
    with sqlite3.connect(db) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert [row[0] for row in tables] == ["people"]


def test_execute_writes_and_commits(db: Path) -> None:
    params = {
        "statement": "UPDATE people SET name = :name WHERE id = 2",
        "parameters": {"name": "eve"},
    }
    outcome = call("sql_execute", params, env=env_for(db))
    assert outcome.outputs == {"rowCount": 1}
    assert names(db) == ["ada", "eve"]


def test_execute_returns_rows_of_returning(db: Path) -> None:
    params = {"statement": "INSERT INTO people (name) VALUES ('cy') RETURNING id, name"}
    outcome = call("sql_execute", params, env=env_for(db))
    assert outcome.outputs["rows"] == [{"id": 3, "name": "cy"}]
    assert names(db) == ["ada", "bob", "cy"]


def test_execute_failure_rolls_back_and_names_the_error(db: Path) -> None:
    params = {"statement": "INSERT INTO people (id, name) VALUES (1, 'dup')"}
    with pytest.raises(ToolFailure, match="sql_execute failed: UNIQUE constraint failed"):
        call("sql_execute", params, env=env_for(db))
    assert names(db) == ["ada", "bob"]


def test_missing_dsn_variable_is_named() -> None:
    with pytest.raises(ToolFailure, match="environment variable AGENT_SQL_DSN is unset"):
        call("sql_query", {"query": "SELECT 1"})


def test_malformed_dsn_is_not_quoted() -> None:
    secret_dsn = "not a url but hunter2-password"
    with pytest.raises(ToolFailure) as failure:
        call("sql_query", {"query": "SELECT 1"}, env={"AGENT_SQL_DSN": secret_dsn})
    assert "does not hold a valid database URL" in failure.value.message
    assert "hunter2" not in failure.value.message


def test_dsn_cannot_be_given_in_params() -> None:
    from agent_contract.builtin.sql import SQL_QUERY

    errors = SQL_QUERY.param_errors({"query": "SELECT 1", "dsn": "sqlite://"})
    assert errors == [
        "params: Additional properties are not allowed ('dsn' was unexpected) "
        "(allowed: dsnEnv, maxRows, parameters, query, timeoutSeconds)"
    ]


def test_runaway_query_is_interrupted_at_its_timeout(db: Path) -> None:
    forever = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    with pytest.raises(ToolTimeout):
        call("sql_query", {"query": forever, "timeoutSeconds": 0.2}, env=env_for(db))


def test_jsonable_converts_database_types() -> None:
    moment = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    ident = uuid.UUID(int=1)
    assert jsonable(decimal.Decimal("1.50")) == "1.50"
    assert jsonable(moment) == "2024-05-01T12:30:00+00:00"
    assert jsonable(datetime.date(2024, 5, 1)) == "2024-05-01"
    assert jsonable(datetime.timedelta(minutes=1)) == 60.0
    assert jsonable(b"\x00\xff") == "AP8="
    assert jsonable(ident) == str(ident)
    assert jsonable({"a": (1, decimal.Decimal(2))}) == {"a": [1, "2"]}


@pytest.mark.store
def test_postgres_query_runs_in_a_read_only_transaction(postgres_store_dsn: str) -> None:
    env = {"AGENT_SQL_DSN": postgres_store_dsn}
    created = call(
        "sql_execute",
        {"statement": "CREATE TABLE notes (id serial PRIMARY KEY, body text)"},
        env=env,
    )
    assert created.outputs["rowCount"] in (-1, 0)
    call("sql_execute", {"statement": "INSERT INTO notes (body) VALUES ('hi')"}, env=env)
    with pytest.raises(ToolFailure, match="read-only transaction"):
        call("sql_query", {"query": "INSERT INTO notes (body) VALUES ('no')"}, env=env)
    # A second command could end the read-only transaction and write outside it.
    escape = "COMMIT; INSERT INTO notes (body) VALUES ('no')"
    with pytest.raises(ToolFailure, match="cannot insert multiple commands"):
        call("sql_query", {"query": escape}, env=env)
    with pytest.raises(ToolTimeout):
        call("sql_query", {"query": "SELECT pg_sleep(5)", "timeoutSeconds": 0.3}, env=env)
    rows = call("sql_query", {"query": "SELECT body, 1.5::numeric AS n FROM notes"}, env=env)
    assert rows.outputs["rows"] == [{"body": "hi", "n": "1.5"}]
