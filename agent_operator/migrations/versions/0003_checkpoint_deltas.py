"""Checkpoints keep what changed (a JSON Patch against the previous checkpoint); tasks are
indexed by when they last changed, for the retention cleanup.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A whole status snapshot per finished step made the store grow by the plan's
size with every step. Existing snapshots become base rows (a patch that
replaces the whole document), so every stored status still rebuilds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from agent_operator.core.patch import apply_json_patch

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHOLE_DOCUMENT = {
    "postgresql": "jsonb_build_array(jsonb_build_object('op', 'replace', 'path', '', "
    "'value', snapshot))",
    "sqlite": "json_array(json_object('op', 'replace', 'path', '', 'value', json(snapshot)))",
}


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("base", sa.Boolean()))
        batch.add_column(sa.Column("delta", _json()))
    dialect = op.get_bind().dialect.name
    op.execute(f"UPDATE checkpoints SET base = true, delta = {WHOLE_DOCUMENT[dialect]}")
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column("base", existing_type=sa.Boolean(), nullable=False)
        batch.alter_column("delta", existing_type=_json(), nullable=False)
        batch.drop_column("snapshot")
    op.create_index("ix_tasks_updated_at", "tasks", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_updated_at", "tasks")
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("snapshot", _json()))
    table = sa.table(
        "checkpoints",
        sa.column("task_uid", sa.String()),
        sa.column("checkpoint_id", sa.BigInteger()),
        sa.column("base", sa.Boolean()),
        sa.column("delta", _json()),
        sa.column("snapshot", _json()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(table.c.task_uid, table.c.checkpoint_id, table.c.base, table.c.delta).order_by(
            table.c.task_uid, table.c.checkpoint_id
        )
    )
    status: Any = None
    for task_uid, checkpoint_id, base, delta in rows.all():
        status = apply_json_patch({} if base else status, delta)
        connection.execute(
            table.update()
            .where(table.c.task_uid == task_uid, table.c.checkpoint_id == checkpoint_id)
            .values(snapshot=status)
        )
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column("snapshot", existing_type=_json(), nullable=False)
        batch.drop_column("delta")
        batch.drop_column("base")
