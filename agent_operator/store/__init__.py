"""The checkpoint store: the full history of every AgentTask, in Postgres or SQLite.

The AgentTask status stays small; this store keeps what it leaves out: every
step attempt with its full outputs, every checkpoint, and the audit trail of
events. Every write is an idempotent
upsert (or a deduplicated append), so a restarted operator can write the
same record again without harm. Every JSON document and message is redacted
before it is written.

The API is synchronous and thread-safe: the operator calls it from Kopf's
handler threads. A database that cannot be reached raises `StoreUnavailable`
within a few seconds instead of hanging.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from alembic.util.exc import CommandError
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Result,
    and_,
    create_engine,
    delete,
    event,
    func,
    make_url,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from sqlalchemy.sql.base import Executable, ReadOnlyColumnCollection
from sqlalchemy.sql.elements import KeyedColumnElement

from agent_contract import Usage
from agent_operator.api import TaskPhase
from agent_operator.core.decide import RunState, StepRun
from agent_operator.core.notify import Notice
from agent_operator.core.patch import apply_json_patch, json_patch
from agent_operator.redact import redact, redact_text
from agent_operator.store.migrate import upgrade_schema
from agent_operator.store.records import (
    AttemptRecord,
    CheckpointRecord,
    CheckpointRow,
    EventKind,
    EventRecord,
    NoticeRecord,
    StoreError,
    StoreUnavailable,
    TaskRecord,
)
from agent_operator.store.tables import (
    AuditEvent,
    Base,
    Checkpoint,
    Notification,
    StepAttempt,
    Task,
)

__all__ = [
    "DEFAULT_RETENTION",
    "AttemptRecord",
    "CheckpointRecord",
    "EventKind",
    "EventRecord",
    "NoticeRecord",
    "NoticeState",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TaskRecord",
    "create_engine_for",
    "default_sqlite_path",
    "resolve_url",
]

log = logging.getLogger(__name__)

ENDED = [phase.value for phase in TaskPhase if phase.terminal]  # a task in these stays there

DEFAULT_CONNECT_TIMEOUT = 5
# Every this many checkpoints of a task, one holds the whole status (see `Checkpoint`).
BASE_EVERY = 20
# Ended tasks deleted per transaction by `forget_ended`.
FORGET_BATCH = 500
# Days the history of an ended task is kept unless configured (AGENT_OPERATOR_RETENTION_DAYS).
DEFAULT_RETENTION_DAYS = 30.0

# libpq settings that turn a dead peer into an error instead of a hang: TCP
# keepalives notice a silent server, tcp_user_timeout a write nobody acknowledges.
_PG_LIVENESS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

# Sorted keys make equal documents byte-equal, so an unchanged upsert is a no-op on SQLite too.
_json_dumps = partial(json.dumps, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class NoticeState(StrEnum):
    pending = "Pending"
    delivered = "Delivered"
    failed = "Failed"  # every attempt failed; the last error is kept


R = TypeVar("R")
Excluded: TypeAlias = ReadOnlyColumnCollection[str, KeyedColumnElement[Any]]


def default_sqlite_path() -> Path:
    """Where the embedded store lives when no DSN is given (XDG state directory)."""
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "agent-operator" / "state.db"


def resolve_url(dsn: str | None) -> URL:
    """The SQLAlchemy URL for a DSN: `postgresql://...` (psycopg 3), `sqlite:///path` or None."""
    if not dsn:
        return URL.create("sqlite", database=str(default_sqlite_path()))
    if "://" not in dsn:
        raise StoreError("the store DSN must be a URL: postgresql://... or sqlite:///path")
    url = make_url(dsn)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername not in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        raise StoreError(f"unsupported store database {url.drivername!r}: use Postgres or SQLite")
    if url.drivername.startswith("sqlite") and url.database in (None, "", ":memory:"):
        raise StoreError("an in-memory SQLite store is lost on exit: give a file path")
    return url


def create_engine_for(dsn: str | None, *, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT) -> Engine:
    """An engine configured for the store: timeouts on Postgres, real transactions on SQLite."""
    url = resolve_url(dsn)
    if url.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {**_PG_LIVENESS, "connect_timeout": connect_timeout}
        for name in url.query:  # settings in the DSN win
            connect_args.pop(name, None)
        return create_engine(
            url, connect_args=connect_args, pool_pre_ping=True, json_serializer=_json_dumps
        )
    assert url.database is not None  # resolve_url refuses in-memory databases
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, json_serializer=_json_dumps)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


SQLITE_BUSY_SECONDS = 10.0


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
    dbapi_connection.isolation_level = None
    for pragma in (f"busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}", "foreign_keys=ON"):
        dbapi_connection.execute(f"PRAGMA {pragma}")
    _sqlite_wal(dbapi_connection)


def _sqlite_wal(dbapi_connection: Any) -> None:
    """Switch to WAL. The switch needs the database to itself, and SQLite refuses it at once
    (no busy handler) while another connection opens or reads it: processes opening one new
    database together met "database is locked". So it is tried again for the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    pause = 0.01
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _sqlite_begin(connection: Connection) -> None:
    # Take the write lock up front: upserts read then write, and a deferred
    # transaction that tries to upgrade its lock fails instead of waiting.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _describe(error: BaseException) -> str:
    """One line about a database error, without SQL, parameters or credentials."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return redact_text(lines[0] if lines else type(cause).__name__)


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Database errors as the store's own: unreachable means retry later, the rest is a fault."""
    try:
        yield
    except DBAPIError as error:
        if error.connection_invalidated or isinstance(error, OperationalError | InterfaceError):
            raise StoreUnavailable(f"checkpoint store unavailable: {_describe(error)}") from error
        if isinstance(error, IntegrityError | DataError):
            raise StoreError(f"checkpoint store refused the write: {_describe(error)}") from error
        raise
    except StatementError as error:
        # A value no column accepts (a naive datetime, a non-JSON object): the caller's error.
        if isinstance(error.orig, ValueError | TypeError):
            raise error.orig from None
        raise


def _records(make: Callable[..., R], result: Result[Any]) -> list[R]:
    return [make(**row._mapping) for row in result]


class Store:
    """The checkpoint store. Open with `Store.open(dsn)`; close when done."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._batches = threading.local()  # this thread's open batch() connection, if any

    @classmethod
    def open(
        cls, dsn: str | None = None, *, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    ) -> Store:
        """Connect and migrate the schema to the newest revision.

        `dsn`: `postgresql://user:password@host/db`, `sqlite:///path`, or None for
        SQLite at `default_sqlite_path()`. Raises `StoreUnavailable` when the
        database cannot be reached within `connect_timeout` seconds.
        """
        engine = create_engine_for(dsn, connect_timeout=connect_timeout)
        try:
            with _translated_errors():
                upgrade_schema(engine)
        except CommandError as error:
            engine.dispose()
            raise StoreError(f"cannot migrate the checkpoint store: {error}") from error
        except BaseException:
            engine.dispose()
            raise
        log.info("checkpoint store ready at %r", engine.url)  # the URL's repr hides the password
        return cls(engine)

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The calls made inside (in this thread) share one transaction: one commit for a
        pass's writes, and none of them is kept if one fails."""
        with self._transaction() as connection:
            self._batches.connection = connection
            try:
                yield
            finally:
                self._batches.connection = None

    # --- writes -------------------------------------------------------------

    def upsert_task(
        self,
        uid: str,
        *,
        namespace: str,
        name: str,
        phase: str,
        goal: str | None = None,
        reason: str | None = None,
        message: str | None = None,
        plan: list[Any] | None = None,
        tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> bool:
        """Record a task's current state; True when that changed anything.

        A task that ended (Succeeded, Failed, Cancelled) stays ended: a stale write of it
        still running (a pass that was in flight when it was cancelled) changes nothing.
        """
        now = datetime.now(UTC)
        row = {
            "uid": uid,
            "created_at": now,
            "updated_at": now,
            "namespace": namespace,
            "name": name,
            "goal": _text(goal),
            "phase": phase,
            "reason": _text(reason),
            "message": _text(message),
            "plan": redact(plan),
            "tokens": tokens,
            "cost_usd": cost_usd,
        }
        table = Task.__table__.c
        with self._transaction() as connection:
            return self._upsert(
                connection,
                Task,
                row,
                keep=["created_at"],
                touch=["updated_at"],
                guard=lambda new: or_(table.phase.not_in(ENDED), new.phase.in_(ENDED)),
            )

    def record_attempt(
        self,
        task_uid: str,
        step_id: str,
        attempt: int,
        *,
        phase: str,
        job_name: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        outputs: dict[str, Any] | None = None,
        message: str | None = None,
        tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> bool:
        """Record one attempt of one step; True when that changed anything.

        A finished attempt (one with `finished_at`) is never reopened by a
        stale write of the same attempt still running.
        """
        row = {
            "task_uid": task_uid,
            "step_id": step_id,
            "attempt": attempt,
            "phase": phase,
            "job_name": job_name,
            "started_at": started_at,
            "finished_at": finished_at,
            "outputs": redact(outputs),
            "message": _text(message),
            "tokens": tokens,
            "cost_usd": cost_usd,
        }
        table = StepAttempt.__table__.c
        with self._transaction() as connection:
            return self._upsert(
                connection,
                StepAttempt,
                row,
                guard=lambda new: or_(table.finished_at.is_(None), new.finished_at.is_not(None)),
            )

    def record_run(self, task_uid: str, run: StepRun) -> bool:
        """Record an attempt as the core observed it (a Job, a local process)."""
        running = run.state == RunState.running
        return self.record_attempt(
            task_uid,
            run.step_id,
            run.attempt,
            phase=run.state.value,
            job_name=run.job_name,
            started_at=run.started_at,
            finished_at=None if running else run.finished_at or datetime.now(UTC),
            outputs=dict(run.outputs),
            message=run.message,
            tokens=run.usage.tokens,
            cost_usd=run.usage.cost_usd,
        )

    def record_checkpoint(
        self,
        task_uid: str,
        checkpoint_id: int,
        step_id: str | None,
        time: datetime,
        snapshot: dict[str, Any],
    ) -> bool:
        """Record the status at a checkpoint; True when that changed anything.

        Only what changed since the previous checkpoint is written (see `Checkpoint`);
        every `BASE_EVERY`th row holds the whole status, so rebuilding one reads at most
        that many rows. Writing a checkpoint again with other content (a pass retried
        after its status write failed) replaces it, and the history continues from it:
        later checkpoints, computed from what it replaced, are dropped.
        """
        status = redact(snapshot)
        table = Checkpoint.__table__
        with self._transaction() as connection:
            chain = self._chain(connection, task_uid, below=checkpoint_id)
            base = len(chain) in (0, BASE_EVERY)
            row = {
                "task_uid": task_uid,
                "checkpoint_id": checkpoint_id,
                "step_id": step_id,
                "time": time,
                "base": base,
                "delta": json_patch(None if base else _rebuild(chain), status),
            }
            changed = self._upsert(connection, Checkpoint, row)
            if changed:
                connection.execute(
                    delete(Checkpoint).where(
                        table.c.task_uid == task_uid, table.c.checkpoint_id > checkpoint_id
                    )
                )
            return changed

    def append_event(
        self,
        task_uid: str,
        kind: EventKind,
        *,
        step_id: str | None = None,
        attempt: int | None = None,
        message: str | None = None,
        data: dict[str, Any] | None = None,
        dedupe_key: str | None = None,
        time: datetime | None = None,
    ) -> bool:
        """Append to the audit trail; False when an event with `dedupe_key` is already there."""
        statement = (
            self._insert(AuditEvent)
            .values(
                task_uid=task_uid,
                time=time or datetime.now(UTC),
                kind=EventKind(kind),
                step_id=step_id,
                attempt=attempt,
                message=_text(message),
                data=redact(data),
                dedupe_key=dedupe_key,
            )
            .on_conflict_do_nothing(index_elements=["task_uid", "dedupe_key"])
        )
        with self._transaction() as connection:
            return _wrote(connection, statement)

    def enqueue_notice(self, task_uid: str, notice: Notice) -> bool:
        """Put a notice in the outbox, due now; False when one with its key is there."""
        now = datetime.now(UTC)
        statement = (
            self._insert(Notification)
            .values(
                task_uid=task_uid,
                key=notice.key,
                kind=notice.kind.value,
                channel=notice.channel,
                escalation=notice.escalation,
                title=redact_text(notice.title),
                body=redact_text(notice.body),
                state=NoticeState.pending.value,
                attempts=0,
                created_at=now,
                next_attempt_at=now,
            )
            .on_conflict_do_nothing(index_elements=["task_uid", "key"])
        )
        with self._transaction() as connection:
            return _wrote(connection, statement)

    def claim_notice(self, notice: NoticeRecord, lease_until: datetime) -> bool:
        """Take a due notice for one delivery attempt: counts the attempt and holds the
        notice until `lease_until` (a deliverer that dies leaves it due again then).
        False when another deliverer took it first."""
        table = Notification.__table__.c
        statement = (
            update(Notification)
            .where(
                table.task_uid == notice.task_uid,
                table.key == notice.key,
                table.attempts == notice.attempts,
                table.state == NoticeState.pending.value,
            )
            .values(attempts=notice.attempts + 1, next_attempt_at=lease_until)
        )
        with self._transaction() as connection:
            return connection.execute(statement).rowcount > 0

    def notice_delivered(self, notice: NoticeRecord) -> None:
        self._settle_notice(notice, NoticeState.delivered, None, None)

    def notice_failed(self, notice: NoticeRecord, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt: tried again at `retry_at`, or (None) never again."""
        state = NoticeState.pending if retry_at is not None else NoticeState.failed
        self._settle_notice(notice, state, retry_at, error)

    def _settle_notice(
        self,
        notice: NoticeRecord,
        state: NoticeState,
        retry_at: datetime | None,
        error: str | None,
    ) -> None:
        table = Notification.__table__.c
        delivered = datetime.now(UTC) if state == NoticeState.delivered else None
        statement = (
            update(Notification)
            .where(table.task_uid == notice.task_uid, table.key == notice.key)
            .values(
                state=state.value,
                next_attempt_at=retry_at,
                delivered_at=delivered,
                last_error=_text(error),
            )
        )
        with self._transaction() as connection:
            connection.execute(statement)

    # --- reads --------------------------------------------------------------

    def due_notices(self, now: datetime, limit: int = 100) -> list[NoticeRecord]:
        """Pending notices whose next attempt is due, oldest first."""
        table = Notification.__table__
        query = (
            select(table)
            .where(table.c.next_attempt_at <= now)
            .order_by(table.c.next_attempt_at)
            .limit(limit)
        )
        with self._transaction() as connection:
            return _records(NoticeRecord, connection.execute(query))

    def next_notice_at(self) -> datetime | None:
        """When the next pending notice is due (None: none is pending)."""
        table = Notification.__table__.c
        query = select(func.min(table.next_attempt_at))
        with self._transaction() as connection:
            when: datetime | None = connection.execute(query).scalar()  # min keeps UTCDateTime
        return when

    def notices(self, task_uid: str) -> list[NoticeRecord]:
        """A task's notices, in the order they were made."""
        table = Notification.__table__
        query = (
            select(table)
            .where(table.c.task_uid == task_uid)
            .order_by(table.c.created_at, table.c.key)
        )
        with self._transaction() as connection:
            return _records(NoticeRecord, connection.execute(query))

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers now."""
        with self._transaction() as connection:
            connection.execute(text("SELECT 1"))

    def task(self, task_uid: str) -> TaskRecord | None:
        table = Task.__table__
        with self._transaction() as connection:
            found = _records(
                TaskRecord, connection.execute(select(table).where(table.c.uid == task_uid))
            )
        return found[0] if found else None

    def latest_task(self, namespace: str, name: str) -> TaskRecord | None:
        """The most recently created task of that name: what `--resume` continues."""
        table = Task.__table__
        query = (
            select(table)
            .where(table.c.namespace == namespace, table.c.name == name)
            .order_by(table.c.created_at.desc())
            .limit(1)
        )
        with self._transaction() as connection:
            found = _records(TaskRecord, connection.execute(query))
        return found[0] if found else None

    def attempts(self, task_uid: str) -> list[AttemptRecord]:
        """Every attempt of every step of a task, by step id then attempt."""
        table = StepAttempt.__table__
        query = (
            select(table)
            .where(table.c.task_uid == task_uid)
            .order_by(table.c.step_id, table.c.attempt)
        )
        with self._transaction() as connection:
            return _records(AttemptRecord, connection.execute(query))

    def runs(self, task_uid: str) -> list[StepRun]:
        """A task's recorded attempts as the core sees them; unfinished ones have no
        `finished_at` (what became of them, only their Job or process can say)."""
        return [
            StepRun(
                step_id=record.step_id,
                attempt=record.attempt,
                state=RunState(record.phase),
                started_at=record.started_at or record.finished_at or datetime.now(UTC),
                finished_at=record.finished_at,
                outputs=record.outputs or {},
                message=record.message or "",
                usage=Usage(tokens=record.tokens, cost_usd=record.cost_usd),
                job_name=record.job_name,
            )
            for record in self.attempts(task_uid)
        ]

    def checkpoint(self, task_uid: str, checkpoint_id: int) -> CheckpointRecord | None:
        """A task's whole status as it was at one checkpoint."""
        with self._transaction() as connection:
            chain = self._chain(connection, task_uid, below=checkpoint_id + 1)
        if not chain or chain[-1].checkpoint_id != checkpoint_id:
            return None
        return _checkpoint_record(chain)

    def last_checkpoint(self, task_uid: str) -> CheckpointRecord | None:
        """The checkpoint with the highest id, where a restarted operator resumes."""
        with self._transaction() as connection:
            chain = self._chain(connection, task_uid)
        return _checkpoint_record(chain) if chain else None

    def events(self, task_uid: str) -> list[EventRecord]:
        """A task's audit trail in the order it was written."""
        table = AuditEvent.__table__
        query = select(table).where(table.c.task_uid == task_uid).order_by(table.c.id)
        with self._transaction() as connection:
            return _records(EventRecord, connection.execute(query))

    def forget_ended(self, before: datetime) -> int:
        """Delete every task that ended before `before`, with its whole history (attempts,
        checkpoints, events); the number of tasks deleted. A task that has not
        ended is kept however old it is."""
        table = Task.__table__
        ended = (
            select(table.c.uid)
            .where(table.c.phase.in_(ENDED), table.c.updated_at < before)
            .limit(FORGET_BATCH)
        )
        forgotten = 0
        while True:  # in batches: short transactions, however much has piled up
            with self._transaction() as connection:
                uids = list(connection.execute(ended).scalars())
                if uids:
                    connection.execute(delete(Task).where(table.c.uid.in_(uids)))
            forgotten += len(uids)
            if len(uids) < FORGET_BATCH:
                return forgotten

    # --- plumbing -----------------------------------------------------------

    def _chain(
        self, connection: Connection, task_uid: str, below: int | None = None
    ) -> list[CheckpointRow]:
        """The rows that rebuild a task's latest checkpoint (under `below`, if given):
        the latest base row and the ones after it, oldest first."""
        table = Checkpoint.__table__
        scope = [table.c.task_uid == task_uid]
        if below is not None:
            scope.append(table.c.checkpoint_id < below)
        base = select(func.max(table.c.checkpoint_id)).where(*scope, table.c.base).scalar_subquery()
        query = (
            select(table)
            .where(*scope, table.c.checkpoint_id >= base)
            .order_by(table.c.checkpoint_id)
        )
        return _records(CheckpointRow, connection.execute(query))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        ongoing: Connection | None = getattr(self._batches, "connection", None)
        if ongoing is not None:
            yield ongoing
            return
        with _translated_errors(), self._engine.begin() as connection:
            yield connection

    def _insert(self, model: type[Base]) -> postgresql.Insert | sqlite.Insert:
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(model)
        return sqlite.insert(model)

    def _upsert(
        self,
        connection: Connection,
        model: type[Base],
        row: Mapping[str, Any],
        *,
        keep: Sequence[str] = (),
        touch: Sequence[str] = (),
        guard: Callable[[Excluded], ColumnElement[bool]] | None = None,
    ) -> bool:
        """Insert a row, or update it where a column differs; False when nothing was written.

        `keep`: columns written on insert only. `touch`: columns updated along
        with a change but not compared (an identical second write stays a no-op).
        `guard`: a further condition on the update, given the proposed row.
        """
        table = model.__table__
        key = [column.name for column in table.primary_key]
        compare = [column for column in row if column not in {*key, *keep, *touch}]
        insert = self._insert(model).values(dict(row))
        new = insert.excluded
        differs = or_(*(table.c[column].is_distinct_from(new[column]) for column in compare))
        statement = insert.on_conflict_do_update(
            index_elements=key,
            set_={column: new[column] for column in (*compare, *touch)},
            where=differs if guard is None else and_(differs, guard(new)),
        )
        return _wrote(connection, statement)


def _wrote(connection: Connection, statement: Executable) -> bool:
    """Execute an INSERT ... ON CONFLICT; whether it inserted or updated a row."""
    # SQLAlchemy keeps the row count of UPDATE and DELETE only, unless asked.
    result = connection.execute(statement, execution_options={"preserve_rowcount": True})
    return result.rowcount > 0


def _text(value: str | None) -> str | None:
    return None if value is None else redact_text(value)


def _rebuild(chain: Sequence[CheckpointRow]) -> dict[str, Any]:
    status: Any = None
    for row in chain:
        status = apply_json_patch(status, row.delta)
    assert isinstance(status, dict)
    return status


def _checkpoint_record(chain: Sequence[CheckpointRow]) -> CheckpointRecord:
    last = chain[-1]
    return CheckpointRecord(
        task_uid=last.task_uid,
        checkpoint_id=last.checkpoint_id,
        step_id=last.step_id,
        time=last.time,
        snapshot=_rebuild(chain),
    )
