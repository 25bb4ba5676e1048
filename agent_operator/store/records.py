"""What the checkpoint store hands back, and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent_operator.core.decide import EventKind

__all__ = ["EventKind"]


class StoreError(Exception):
    """The store refused or failed an operation (bad input, schema mismatch, constraint)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now; keep the task's place and try again later."""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    uid: str
    namespace: str
    name: str
    goal: str | None
    phase: str
    reason: str | None
    message: str | None
    plan: list[Any] | None
    tokens: int
    cost_usd: float
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    task_uid: str
    step_id: str
    attempt: int
    phase: str
    job_name: str | None
    started_at: datetime | None
    finished_at: datetime | None
    outputs: dict[str, Any] | None
    message: str | None
    tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A task's whole status at one checkpoint, rebuilt from the stored rows."""

    task_uid: str
    checkpoint_id: int
    step_id: str | None
    time: datetime
    snapshot: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A checkpoint as stored: what changed (see `tables.Checkpoint`)."""

    task_uid: str
    checkpoint_id: int
    step_id: str | None
    time: datetime
    base: bool
    delta: list[Any]


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    task_uid: str
    time: datetime
    kind: EventKind
    step_id: str | None
    attempt: int | None
    message: str | None
    data: dict[str, Any] | None
    dedupe_key: str | None


@dataclass(frozen=True, slots=True)
class NoticeRecord:
    """A notice in the outbox (see `tables.Notification`)."""

    task_uid: str
    key: str
    kind: str
    channel: str
    escalation: bool
    title: str
    body: str
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
