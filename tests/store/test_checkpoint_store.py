"""The checkpoint store on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, make_url, text

from agent_contract import Usage
from agent_operator.api import StepPhase, TaskPhase
from agent_operator.core.decide import RunState, StepRun
from agent_operator.core.notify import Notice, NoticeKind
from agent_operator.redact import REDACTED
from agent_operator.store import (
    EventKind,
    Store,
    StoreError,
    default_sqlite_path,
    resolve_url,
)
from agent_operator.store.tables import Base

UID = "6f1c2d3e-0000-4000-8000-000000000001"
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
SECRET = "hunter2-s3cr3t"


@pytest.fixture
def raw(store_dsn: str) -> Iterator[Connection]:
    """A plain SQLAlchemy connection to the store's database, bypassing the store."""
    engine = create_engine(resolve_url(store_dsn))
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@pytest.fixture
def task(store: Store) -> str:
    store.upsert_task(UID, namespace="default", name="demo", phase="Running", goal="say hi")
    return UID


def test_migrations_create_the_schema_the_models_describe(store: Store, raw: Connection) -> None:
    tables = set(inspect(raw).get_table_names())
    assert tables == {
        "tasks",
        "step_attempts",
        "checkpoints",
        "events",
        "notifications",
        "alembic_version",
    }
    assert compare_metadata(MigrationContext.configure(raw), Base.metadata) == []


def test_opening_twice_migrates_once_and_shares_the_data(
    store_dsn: str, store: Store, raw: Connection, task: str
) -> None:
    with Store.open(store_dsn) as again:
        assert again.task(task) == store.task(task)
    assert raw.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0004"]


def test_opening_logs_where_but_not_the_password(
    store_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Store.open(store_dsn) as store:
        store.upsert_task(UID, namespace="ns", name="demo", phase="Pending")
    assert "checkpoint store ready" in caplog.text
    password = make_url(store_dsn).password
    if password:
        assert str(password) not in caplog.text


def test_a_schema_from_a_newer_release_is_refused_clearly(
    store_dsn: str, store: Store, raw: Connection
) -> None:
    with raw.begin():
        raw.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match=r"cannot migrate.*9999"):
        Store.open(store_dsn)


def _open_and_close(dsn: str) -> str | None:
    try:
        Store.open(dsn).close()
    except Exception as error:
        return repr(error)
    return None


def test_processes_opening_an_empty_database_at_once_all_succeed(
    store_dsn: str, raw: Connection
) -> None:
    # Separate processes, like operator replicas: only the database's own lock can order them.
    with multiprocessing.get_context("fork").Pool(3) as pool:
        assert pool.map(_open_and_close, [store_dsn] * 3) == [None, None, None]
    assert raw.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0004"]


def test_threads_opening_at_once_all_succeed(store_dsn: str) -> None:
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(_open_and_close, [store_dsn] * 3)) == [None, None, None]


def test_task_upsert_writes_only_changes(store: Store) -> None:
    assert store.upsert_task(UID, namespace="ns", name="demo", phase="Pending", goal="g")
    first = store.task(UID)
    assert first is not None
    assert (first.phase, first.goal, first.tokens, first.plan) == ("Pending", "g", 0, None)

    assert not store.upsert_task(UID, namespace="ns", name="demo", phase="Pending", goal="g")
    assert store.task(UID) == first

    plan = [{"id": "a", "tool": "noop", "params": {}}]
    assert store.upsert_task(
        UID, namespace="ns", name="demo", phase=TaskPhase.running, goal="g", plan=plan, tokens=7
    )
    second = store.task(UID)
    assert second is not None
    assert (second.phase, second.plan, second.tokens) == ("Running", plan, 7)
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    assert store.task("no-such-task") is None


def test_an_ended_task_is_not_reopened_by_a_stale_write(store: Store) -> None:
    store.upsert_task(UID, namespace="ns", name="demo", phase=TaskPhase.cancelled)
    assert not store.upsert_task(UID, namespace="ns", name="demo", phase=TaskPhase.running)
    ended = store.task(UID)
    assert ended is not None and ended.phase == "Cancelled"
    assert store.upsert_task(UID, namespace="ns", name="demo", phase=TaskPhase.failed)
    failed = store.task(UID)
    assert failed is not None and failed.phase == "Failed"


def test_recording_the_same_attempt_twice_changes_nothing(
    store: Store, task: str, raw: Connection
) -> None:
    running: dict[str, Any] = {"phase": "Running", "job_name": "demo-a-1", "started_at": T0}
    assert store.record_attempt(task, "a", 1, **running)
    before = store.attempts(task)
    assert not store.record_attempt(task, "a", 1, **running)
    assert store.attempts(task) == before
    assert raw.execute(text("SELECT count(*) FROM step_attempts")).scalar_one() == 1

    [attempt] = before
    assert attempt.started_at == T0  # aware UTC, microseconds kept, on both backends
    assert attempt.finished_at is None


def test_a_finished_attempt_is_not_reopened_by_a_stale_write(store: Store, task: str) -> None:
    running: dict[str, Any] = {"phase": "Running", "job_name": "demo-a-1", "started_at": T0}
    finished = {
        **running,
        "phase": "Succeeded",
        "finished_at": T0 + timedelta(seconds=3),
        "outputs": {"rows": [1, 2]},
        "message": "2 rows",
        "tokens": 12,
        "cost_usd": 0.25,
    }
    store.record_attempt(task, "a", 1, **running)
    assert store.record_attempt(task, "a", 1, **finished)
    assert not store.record_attempt(task, "a", 1, **finished)
    assert not store.record_attempt(task, "a", 1, **running)  # e.g. a restarted operator

    store.record_attempt(task, "a", 2, phase=StepPhase.running)
    store.record_attempt(task, "b", 1, phase="Pending")
    attempts = store.attempts(task)
    assert [(a.step_id, a.attempt, a.phase) for a in attempts] == [
        ("a", 1, "Succeeded"),
        ("a", 2, "Running"),
        ("b", 1, "Pending"),
    ]
    assert attempts[0].outputs == {"rows": [1, 2]}
    assert (attempts[0].tokens, attempts[0].cost_usd) == (12, 0.25)


def test_runs_come_back_as_the_core_recorded_them(store: Store, task: str) -> None:
    done = StepRun(
        "a", 1, RunState.succeeded, T0, T0 + timedelta(seconds=3), {"n": 1}, "ok",
        usage=Usage(tokens=5, cost_usd=0.01), job_name="job-a-1",
    )  # fmt: skip
    running = StepRun("b", 1, RunState.running, T0, job_name="job-b-1")
    assert store.record_run(task, done) and store.record_run(task, running)
    assert store.runs(task) == [done, running]


def test_naive_times_are_refused(store: Store, task: str) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.record_attempt(task, "a", 1, phase="Running", started_at=datetime(2026, 1, 1))
    assert store.attempts(task) == []


def test_checkpoints_upsert_and_the_last_one_wins(store: Store, task: str) -> None:
    assert store.last_checkpoint(task) is None
    assert store.record_checkpoint(task, 1, None, T0, {"phase": "Running", "steps": []})
    assert store.record_checkpoint(task, 2, "a", T0 + timedelta(seconds=1), {"steps": ["a"]})
    assert not store.record_checkpoint(task, 2, "a", T0 + timedelta(seconds=1), {"steps": ["a"]})

    last = store.last_checkpoint(task)
    assert last is not None
    assert (last.checkpoint_id, last.step_id, last.time, last.snapshot) == (
        2,
        "a",
        T0 + timedelta(seconds=1),
        {"steps": ["a"]},
    )

    assert store.record_checkpoint(task, 2, "a", T0 + timedelta(seconds=1), {"steps": ["a", "b"]})
    rewritten = store.last_checkpoint(task)
    assert rewritten is not None
    assert rewritten.snapshot == {"steps": ["a", "b"]}


def _status(done: int, steps: int = 200) -> dict[str, Any]:
    """A status of a `steps`-step chain with `done` steps finished, plan included."""
    return {
        "phase": "Running",
        "message": f"{done} of {steps} steps done",
        "checkpoint": {"id": done + 1},
        "plan": [{"id": f"s{i}", "tool": "noop", "params": {"n": i}} for i in range(steps)],
        "steps": [
            {"id": f"s{i}", "phase": "Succeeded" if i < done else "Pending"} for i in range(steps)
        ],
        "outputs": {f"s{i}": {"n": i} for i in range(done)},
    }


def test_checkpoints_store_what_changed_and_each_rebuilds_whole(
    store: Store, raw: Connection, task: str
) -> None:
    statuses = [_status(done) for done in range(45)]
    for number, status in enumerate(statuses, start=1):
        assert store.record_checkpoint(task, number, None, T0 + timedelta(seconds=number), status)
    for number, status in enumerate(statuses, start=1):
        rebuilt = store.checkpoint(task, number)
        assert rebuilt is not None and rebuilt.snapshot == status, number
    last = store.last_checkpoint(task)
    assert last is not None and (last.checkpoint_id, last.snapshot) == (45, statuses[-1])
    assert store.checkpoint(task, 46) is None

    rows = raw.execute(
        text("SELECT checkpoint_id, base, delta FROM checkpoints ORDER BY checkpoint_id")
    ).all()
    assert [number for number, base, _ in rows if base] == [1, 21, 41]
    whole = len(json.dumps(statuses[-1]))
    for number, base, delta in rows:
        if not base:  # a step's change: its entry, the message, the checkpoint, its output
            size = len(delta if isinstance(delta, str) else json.dumps(delta))
            assert size < whole / 20, number


def test_rewriting_a_checkpoint_continues_the_history_from_it(store: Store, task: str) -> None:
    for number in range(1, 6):
        store.record_checkpoint(task, number, None, T0, _status(number, steps=10))
    assert store.record_checkpoint(task, 3, None, T0, _status(7, steps=10))
    last = store.last_checkpoint(task)
    assert last is not None and (last.checkpoint_id, last.snapshot) == (3, _status(7, steps=10))
    assert store.record_checkpoint(task, 4, None, T0, _status(8, steps=10))
    rebuilt = store.checkpoint(task, 4)
    assert rebuilt is not None and rebuilt.snapshot == _status(8, steps=10)


def test_checkpoints_written_before_the_deltas_still_rebuild(store_dsn: str) -> None:
    from alembic import command
    from alembic.config import Config

    from agent_operator.store import create_engine_for
    from agent_operator.store.migrate import MIGRATIONS

    config = Config(str(MIGRATIONS / "alembic.ini"))
    engine = create_engine_for(store_dsn)

    def migrate(step: Any, revision: str) -> None:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            step(config, revision)

    try:
        migrate(command.upgrade, "0001")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO tasks VALUES (:uid, 'default', 'old', NULL, 'Running', NULL, "
                    "NULL, NULL, 0, 0, :now, :now)"
                ),
                {"uid": UID, "now": T0},
            )
            for number in (1, 2):
                connection.execute(
                    text("INSERT INTO checkpoints VALUES (:uid, :n, NULL, :now, :snapshot)"),
                    {"uid": UID, "n": number, "now": T0, "snapshot": json.dumps(_status(number))},
                )
        with Store.open(store_dsn) as store:  # migrates to the newest revision
            assert (old := store.checkpoint(UID, 1)) is not None
            assert old.snapshot == _status(1)
            store.record_checkpoint(UID, 3, "s2", T0, _status(3))
            assert (last := store.last_checkpoint(UID)) is not None
            assert last.snapshot == _status(3)
        migrate(command.downgrade, "0001")
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT snapshot FROM checkpoints ORDER BY 1")).all()
        assert [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows] == [
            _status(number) for number in (1, 2, 3)
        ]
    finally:
        engine.dispose()


def test_forgetting_deletes_the_history_of_tasks_that_ended_before_the_cutoff(
    store: Store, raw: Connection
) -> None:
    for name, phase in (("done", "Succeeded"), ("failed", "Failed"), ("running", "Running")):
        uid = f"uid-{name}"
        store.upsert_task(uid, namespace="default", name=name, phase=phase)
        store.record_attempt(uid, "a", 1, phase="Succeeded", started_at=T0, finished_at=T0)
        store.record_checkpoint(uid, 1, "a", T0, _status(1, steps=2))
        store.append_event(uid, EventKind.step_finished, step_id="a", dedupe_key="a/1")
    now = datetime.now(UTC)
    assert store.forget_ended(before=now - timedelta(hours=1)) == 0  # they ended just now
    assert store.forget_ended(before=now + timedelta(hours=1)) == 2
    assert store.task("uid-done") is None and store.task("uid-failed") is None
    assert store.task("uid-running") is not None
    for table in ("step_attempts", "checkpoints", "events"):
        left = raw.execute(text(f"SELECT DISTINCT task_uid FROM {table}")).scalars().all()
        assert left == ["uid-running"], table
    assert store.forget_ended(before=now + timedelta(hours=1)) == 0


def test_events_append_in_order_and_dedupe_by_key(store: Store, task: str) -> None:
    assert store.append_event(task, EventKind.planned, message="2 steps", dedupe_key="planned")
    assert not store.append_event(task, EventKind.planned, message="again", dedupe_key="planned")
    assert store.append_event(
        task, EventKind.step_started, step_id="a", attempt=1, time=T0, dedupe_key="a/1/started"
    )
    assert store.append_event(task, EventKind.step_retried, step_id="a", data={"after": 2})
    assert store.append_event(task, EventKind.step_retried, step_id="a", data={"after": 2})

    events = store.events(task)
    assert [(e.kind, e.step_id, e.message) for e in events] == [
        (EventKind.planned, None, "2 steps"),
        (EventKind.step_started, "a", None),
        (EventKind.step_retried, "a", None),
        (EventKind.step_retried, "a", None),
    ]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert events[1].time == T0
    assert events[2].data == {"after": 2}
    assert isinstance(events[0].kind, EventKind)


def test_a_batch_commits_its_writes_together_or_not_at_all(store: Store, task: str) -> None:
    with pytest.raises(RuntimeError), store.batch():
        store.record_attempt(task, "a", 1, phase="Running", started_at=T0)
        store.append_event(task, EventKind.step_started, step_id="a", dedupe_key="a/1")
        raise RuntimeError("the pass failed half-way")
    assert store.attempts(task) == [] and store.events(task) == []

    with store.batch():
        store.record_attempt(task, "a", 1, phase="Running", started_at=T0)
        store.append_event(task, EventKind.step_started, step_id="a", dedupe_key="a/1")
    assert [a.step_id for a in store.attempts(task)] == ["a"]
    assert [e.dedupe_key for e in store.events(task)] == ["a/1"]


def test_an_unknown_event_kind_is_refused(store: Store, task: str) -> None:
    with pytest.raises(ValueError, match="exploded"):
        store.append_event(task, "exploded")  # type: ignore[arg-type]
    assert store.events(task) == []


def test_writes_for_an_unknown_task_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="refused"):
        store.record_attempt("no-such-task", "a", 1, phase="Running")


def test_no_secret_reaches_any_row(store: Store, raw: Connection) -> None:
    dsn = f"postgresql://agent:{SECRET}@db:5432/x"
    store.upsert_task(
        UID,
        namespace="ns",
        name="demo",
        phase="Running",
        goal=f"connect to {dsn}",
        message=f"password={SECRET}",
        plan=[{"id": "q", "tool": "sql", "params": {"dsn": dsn, "password": SECRET}}],
    )
    store.record_attempt(
        UID,
        "q",
        1,
        phase="Failed",
        outputs={"apiKey": SECRET, "headers": {"Authorization": f"Bearer {SECRET}"}},
        message=f"could not connect to {dsn}",
    )
    store.record_checkpoint(UID, 1, "q", T0, {"env": [{"name": "DB_PASSWORD", "value": SECRET}]})
    store.append_event(
        UID, EventKind.step_failed, step_id="q", message=f"token: {SECRET}", data={"token": SECRET}
    )
    notice = Notice(
        "requested/q", NoticeKind.approval_requested, "default", False, f"token={SECRET}", dsn
    )
    store.enqueue_notice(UID, notice)
    store.notice_failed(store.notices(UID)[0], f"refused: password={SECRET}", None)

    dumped = []
    for table in Base.metadata.sorted_tables:
        rows = raw.execute(text(f"SELECT * FROM {table.name}")).all()
        assert rows, f"nothing was written to {table.name}"
        dumped.append(repr(rows))
    everything = "\n".join(dumped)
    assert SECRET not in everything
    assert everything.count(REDACTED) >= 10


def test_threads_can_write_at_once(store: Store, task: str) -> None:
    def write(step: str) -> None:
        for attempt in range(1, 6):
            store.record_attempt(task, step, attempt, phase="Running", started_at=T0)
            store.append_event(task, EventKind.step_started, step_id=step, attempt=attempt)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, ["a", "b", "c", "d"]))

    assert len(store.attempts(task)) == 20
    assert len(store.events(task)) == 20


def test_no_dsn_means_sqlite_in_the_xdg_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = tmp_path / "state" / "agent-operator" / "state.db"
    assert default_sqlite_path() == path

    with Store.open() as store:
        store.upsert_task(UID, namespace="ns", name="demo", phase="Pending")
    with Store.open(f"sqlite:///{path}") as store:
        assert store.task(UID) is not None


@pytest.mark.parametrize(
    ("dsn", "driver"),
    [
        ("postgresql://u:p@h/db", "postgresql+psycopg"),
        ("postgres://u:p@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg"),
        ("sqlite:///state.db", "sqlite"),
    ],
)
def test_dsns_resolve_to_the_supported_drivers(dsn: str, driver: str) -> None:
    assert resolve_url(dsn).drivername == driver


@pytest.mark.parametrize(
    "dsn", ["mysql://u:p@h/db", "postgresql+psycopg2://h/db", "sqlite://", "host=db dbname=x"]
)
def test_unsupported_dsns_are_refused_clearly(dsn: str) -> None:
    with pytest.raises(StoreError):
        resolve_url(dsn)
