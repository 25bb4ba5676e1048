"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from agent_operator.store import Store, resolve_url
from tests.support.postgres import local_postgres

REPO = Path(__file__).resolve().parent.parent

# Fixtures defined next to the helpers they drive.
pytest_plugins = ["tests.support.openai_server", "tests.support.relay", "tests.support.webhook"]


# --- checkpoint store -------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL server for the whole run: $AGENT_OPERATOR_TEST_DSN, or a fresh local one."""
    external = os.environ.get("AGENT_OPERATOR_TEST_DSN")
    if external:
        yield external
        return
    with local_postgres() as dsn:
        yield dsn


@pytest.fixture
def postgres_store_dsn(postgres_dsn: str) -> Iterator[str]:
    """A DSN whose connections see only a fresh, empty schema (cheaper than a database)."""
    server = resolve_url(postgres_dsn)
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield server.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.store)])
def store_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DSN for an empty database on each backend (Postgres starts only when asked for)."""
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("postgres_store_dsn")
        return dsn
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def store(store_dsn: str) -> Iterator[Store]:
    """An open, migrated, empty checkpoint store on each backend."""
    with Store.open(store_dsn) as opened:
        yield opened
