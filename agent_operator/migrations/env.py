"""Alembic environment for the checkpoint store.

`Store.open` hands over its own connection (inside the transaction that holds
the migration lock); the Alembic command line gets one from `-x dsn=...`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from agent_operator.store import create_engine_for
from agent_operator.store.tables import Base


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = create_engine_for(context.get_x_argument(as_dictionary=True).get("dsn"))
    try:
        with engine.connect() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


main()
