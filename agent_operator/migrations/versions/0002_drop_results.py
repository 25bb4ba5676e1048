"""Drop `results`: steps no longer write large results to the store.

A result over the termination message's 4 KiB now comes back through the step pod's log,
and the store keeps it with the attempt (`step_attempts.outputs`), so no step holds the
store's DSN.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("results")


def downgrade() -> None:
    op.create_table(
        "results",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column(
            "task_uid",
            sa.String(64),
            sa.ForeignKey("tasks.uid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_results_task_uid", "results", ["task_uid"])
