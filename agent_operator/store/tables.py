"""The checkpoint store's schema as typed ORM models.

The Alembic revisions in `agent_operator/migrations/versions` create this
schema; a test compares the two so they cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Double,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from agent_operator.store.records import EventKind

UID = String(64)
STEP_ID = String(63)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone, so we keep UTC there)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass an aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json_document() -> TypeEngine[Any]:
    """JSON, stored as JSONB on Postgres (compact, comparable, indexable later)."""
    return JSON().with_variant(JSONB(), "postgresql")


def event_kind() -> Enum:
    """The event kinds as a VARCHAR with a CHECK constraint (no native enum to migrate)."""
    return Enum(
        EventKind,
        name="event_kind",
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda kinds: [kind.value for kind in kinds],
    )


def task_uid_fk() -> ForeignKey:
    return ForeignKey("tasks.uid", ondelete="CASCADE")


class Base(DeclarativeBase):
    pass


class Task(Base):
    """One AgentTask: its latest phase, plan and spend."""

    __tablename__ = "tasks"

    uid: Mapped[str] = mapped_column(UID, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(253))
    name: Mapped[str] = mapped_column(String(253))
    goal: Mapped[str | None] = mapped_column(Text)
    phase: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(128))
    message: Mapped[str | None] = mapped_column(Text)
    plan: Mapped[list[Any] | None] = mapped_column(json_document())
    tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # for retention


class StepAttempt(Base):
    """One attempt of one step; the key matches the attempt's Job name."""

    __tablename__ = "step_attempts"

    task_uid: Mapped[str] = mapped_column(UID, task_uid_fk(), primary_key=True)
    step_id: Mapped[str] = mapped_column(STEP_ID, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    phase: Mapped[str] = mapped_column(String(32))
    job_name: Mapped[str | None] = mapped_column(String(63))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outputs: Mapped[dict[str, Any] | None] = mapped_column(json_document())
    message: Mapped[str | None] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Double)


class Checkpoint(Base):
    """The task's status at a checkpoint (after planning, after each step that finished),
    kept as what changed: a JSON Patch against the previous checkpoint's status, or, on a
    `base` row, against nothing (the whole status). Rebuilding one starts at the latest
    base row at or before it."""

    __tablename__ = "checkpoints"

    task_uid: Mapped[str] = mapped_column(UID, task_uid_fk(), primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    step_id: Mapped[str | None] = mapped_column(STEP_ID)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    base: Mapped[bool] = mapped_column(Boolean)
    delta: Mapped[list[Any]] = mapped_column(json_document())


class AuditEvent(Base):
    """The append-only audit trail; `dedupe_key` makes re-recording an event a no-op."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("task_uid", "dedupe_key", name="uq_events_dedupe"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    task_uid: Mapped[str] = mapped_column(UID, task_uid_fk(), index=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[EventKind] = mapped_column(event_kind())
    step_id: Mapped[str | None] = mapped_column(STEP_ID)
    attempt: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(json_document())
    dedupe_key: Mapped[str | None] = mapped_column(String(255))


class Notification(Base):
    """The outbox of notices: written with the decision that made them, delivered from
    here (`notifier.py`). `next_attempt_at` is when a pending one is next tried (a
    delivery in flight holds it a lease ahead); a delivered or abandoned one has none."""

    __tablename__ = "notifications"

    task_uid: Mapped[str] = mapped_column(UID, task_uid_fk(), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(300))
    escalation: Mapped[bool] = mapped_column(Boolean)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
