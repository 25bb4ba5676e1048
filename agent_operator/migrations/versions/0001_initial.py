"""The initial checkpoint store schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Types are spelled out here rather than imported from the models: a revision
is a frozen record of the schema at one point in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_KINDS = (
    "planned",
    "approval_requested",
    "approval_decided",
    "step_started",
    "step_finished",
    "step_retried",
    "step_failed",
    "task_finished",
    "task_cancelled",
)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _uid_fk(primary_key: bool = False) -> sa.Column[str]:
    return sa.Column(
        "task_uid",
        sa.String(64),
        sa.ForeignKey("tasks.uid", ondelete="CASCADE"),
        primary_key=primary_key,
        nullable=False,
    )


def _spend() -> list[sa.Column[object]]:
    return [
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Double(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("uid", sa.String(64), primary_key=True),
        sa.Column("namespace", sa.String(253), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("goal", sa.Text()),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(128)),
        sa.Column("message", sa.Text()),
        sa.Column("plan", _json()),
        *_spend(),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "step_attempts",
        _uid_fk(primary_key=True),
        sa.Column("step_id", sa.String(63), primary_key=True),
        sa.Column("attempt", sa.Integer(), primary_key=True),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("job_name", sa.String(63)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("outputs", _json()),
        sa.Column("message", sa.Text()),
        *_spend(),
    )
    op.create_table(
        "checkpoints",
        _uid_fk(primary_key=True),
        sa.Column("checkpoint_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("step_id", sa.String(63)),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("snapshot", _json(), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        _uid_fk(),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                *EVENT_KINDS,
                name="event_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("step_id", sa.String(63)),
        sa.Column("attempt", sa.Integer()),
        sa.Column("message", sa.Text()),
        sa.Column("data", _json()),
        sa.Column("dedupe_key", sa.String(255)),
        sa.UniqueConstraint("task_uid", "dedupe_key", name="uq_events_dedupe"),
    )
    op.create_index("ix_events_task_uid", "events", ["task_uid"])
    op.create_table(
        "results",
        sa.Column("key", sa.String(255), primary_key=True),
        _uid_fk(),
        sa.Column("data", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_results_task_uid", "results", ["task_uid"])


def downgrade() -> None:
    for table in ("results", "events", "checkpoints", "step_attempts", "tasks"):
        op.drop_table(table)
