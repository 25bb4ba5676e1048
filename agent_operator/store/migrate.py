"""Bring a database's schema up to date when the store opens."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

# Any fixed 64-bit number works; this one spells "agentop".
_MIGRATION_LOCK = 0x6167656E746F70
# Alembic keeps its running context in module globals: one migration per process at a time.
_IN_PROCESS = threading.Lock()


def upgrade_schema(engine: Engine) -> None:
    """Run `alembic upgrade head`; safe when several processes open one database at once.

    Postgres: a transaction-scoped advisory lock serializes the openers, and the
    DDL commits in the same transaction, so a waiter sees the finished schema
    and has nothing to do. SQLite: the transaction starts with BEGIN IMMEDIATE
    (see `create_engine_for`), which takes the database's write lock. Threads
    of one process take turns first, as Alembic is not thread-safe.
    """
    config = Config(str(MIGRATIONS / "alembic.ini"))
    with _IN_PROCESS, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
