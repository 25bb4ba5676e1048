"""One pass of a task, for both runners: observe, decide, prepare, record, act.

The Kopf operator (`kube/reconciler.py`) and the embedded runner (`embedded.py`) are
shells: each says how to observe its world and how to act on it (`Shell`). The order and
the bookkeeping are here, once: the store is written in one transaction before any action
is taken, so an action happens only once what led to it is recorded. A step's attempt is
prepared before that transaction (its Job made suspended) and let run after it: a runner
killed in between finds either a prepared attempt it never recorded (adopted or removed)
or a recorded one that is prepared (let run), never a recorded attempt with nothing
made, which it could not tell from one that ran and vanished (lost). Errors are
classified once (`Transient` and `StoreUnavailable`: back off and look again;
`Permanent`: the task fails with a reason, through the core like every other end); and
every pass ends in a typed `Outcome`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from agent_contract import ToolRegistry
from agent_operator.api import AgentPool, AgentPoolSpec, AgentTask, AgentTaskStatus
from agent_operator.core.decide import (
    Action,
    ApprovalView,
    Decision,
    Event,
    LaunchStep,
    Observed,
    PlanWithLLM,
    RunState,
    ShellFailure,
    StartStep,
    StepRun,
    decide,
)
from agent_operator.core.naming import job_name
from agent_operator.core.notify import Notice, NotifyPolicy, due, policy_for
from agent_operator.core.plan import PlanningResult
from agent_operator.store import Store, StoreUnavailable

__all__ = [
    "MAX_BACKOFF_SECONDS",
    "BackOff",
    "Done",
    "Driver",
    "Key",
    "Outcome",
    "Permanent",
    "Recorded",
    "RequeueAt",
    "Shell",
    "Transient",
]

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
Key = tuple[str, int]


class Transient(Exception):
    """A failure that may pass (5xx, 429, a dropped connection): the task keeps its place
    and the pass is made again after a backoff."""


class Permanent(Exception):
    """A failure that retrying cannot mend (a refused request, an unusable pool): the task
    fails with `reason`, and `message` says what to change."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Done:
    """The task has ended; its loop ends too."""


@dataclass(frozen=True)
class RequeueAt:
    """Look again when woken, or at `when` (None: when woken, or at the idle look)."""

    when: datetime | None


@dataclass(frozen=True)
class BackOff:
    """The pass failed for a reason that may pass; look again after `seconds`. `cause` is
    `transient` (an API call), `store` (the store is unreachable) or `unexpected` (a
    defect, logged with its traceback)."""

    seconds: float
    cause: str
    error: str


Outcome = Done | RequeueAt | BackOff


@dataclass(frozen=True)
class Recorded:
    """What one pass wrote for the first time: counters and Events count these, once."""

    decision: Decision
    runs: Sequence[StepRun]  # attempts that ended
    events: Sequence[Event]
    notices: Sequence[Notice] = ()  # put in the outbox: a deliverer has work


class Shell(Protocol):
    """How a runner observes its world and acts on it. A call may raise `Transient`,
    `Permanent` or `StoreUnavailable`."""

    def observe_task(self) -> AgentTask:
        """The task with the status this runner last wrote (a watch may lag behind it)."""

    def observe_pool(self, task: AgentTask) -> AgentPool: ...

    def observe_tools(self, pool: AgentPool) -> ToolRegistry:
        """The tools the task's steps may name: the built-ins and those of the MCP servers
        (of the pool's namespace) the pool grants."""

    def observe_runs(self, task: AgentTask, ended: Collection[Key]) -> Sequence[StepRun]:
        """Every attempt the executor shows now, from a complete view (a synced cache).
        `ended` are the attempts whose end is recorded: their results need no reading."""

    def observe_approvals(self, task: AgentTask) -> Mapping[str, ApprovalView]: ...

    def free_slots(self, task: AgentTask, pool: AgentPool) -> int | None:
        """Slots this task may fill now, set aside for it until `settle`."""

    def plan(self, task: AgentTask, pool: AgentPool, tools: ToolRegistry) -> PlanningResult: ...

    def prepare(self, task: AgentTask, pool: AgentPool, decision: Decision) -> None:
        """Make what the decision's `StartStep`s run without letting it run (a suspended
        Job), so that once recorded it is found again whatever happens next; idempotent."""

    def act(self, task: AgentTask, pool: AgentPool | None, decision: Decision) -> None:
        """Carry out the decision's actions (a `StartStep` lets its prepared attempt run);
        each is idempotent (made again after a transient failure). `pool` is None when the
        task is failing without one."""

    def settle(self, task: AgentTask) -> None:
        """The pass is over: slots set aside and not taken are given back."""

    def write_status(self, task: AgentTask, status: AgentTaskStatus) -> None: ...

    def tell(self, task: AgentTask, recorded: Recorded) -> None:
        """Events, log lines and counters for what was recorded."""


@dataclass
class Driver:
    """Drives one task, a pass at a time; a lock keeps passes from two callers (the loop,
    a finalizer) apart. Kept across passes: the planner's answer until it is recorded,
    the attempts recorded so far, actions a transient failure interrupted, the failure a
    shell found, and the notices known to be in the outbox.

    `notifies`: this runner delivers notices (the operator); `notify_defaults` is where
    they go for a pool that names no channel of its own."""

    shell: Shell
    store: Callable[[], Store]
    registry: ToolRegistry
    retry_seconds: float = 2.0
    store_retry_seconds: float = 5.0
    notifies: bool = False
    notify_defaults: NotifyPolicy | None = None
    planning: PlanningResult | None = None
    failure: ShellFailure | None = None
    _recorded: dict[Key, StepRun] | None = None
    _unacted: Decision | None = None
    _saved_row: tuple[object, ...] | None = None
    _notified: set[str] = field(default_factory=set)
    _errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run_pass(self) -> Outcome:
        """One pass. Never raises: whatever goes wrong becomes an outcome, so no loop dies."""
        with self._lock:
            try:
                outcome = self._pass()
            except StoreUnavailable as error:
                return self._back_off(error, "store", self.store_retry_seconds)
            except (Transient, Permanent) as error:  # Permanent: not even the failure is written
                return self._back_off(error, "transient", self.retry_seconds)
            except Exception as error:  # a defect: logged whole, and the loop carries on
                log.exception(
                    "a pass of AgentTask %s failed", self.shell.observe_task().metadata.name
                )
                return self._back_off(error, "unexpected", self.retry_seconds)
            self._errors = 0
            return outcome

    def _back_off(self, error: Exception, cause: str, base: float) -> BackOff:
        """Exponential per task: base, doubled per consecutive failed pass, capped."""
        self._errors += 1
        seconds = min(base * 2 ** (self._errors - 1), MAX_BACKOFF_SECONDS)
        return BackOff(seconds, cause, str(error) or type(error).__name__)

    def _pass(self) -> Outcome:
        task = self.shell.observe_task()
        if task.status.phase.terminal:
            return Done()
        if self.failure is None:
            try:
                return self._work(task)
            except Permanent as error:
                self.failure = ShellFailure(error.reason, error.message)
                log.warning("AgentTask %s fails: %s", task.metadata.name, error.message)
        return self._fail(task)

    def _work(self, task: AgentTask) -> Outcome:
        pool = self.shell.observe_pool(task)
        tools = self.shell.observe_tools(pool)
        try:
            if self._unacted is not None:  # finish what a transient failure interrupted
                self.shell.act(task, pool, self._unacted)
                self._unacted = None
            decision, notices = self._decide(task, pool, tools)
            if any(isinstance(a, PlanWithLLM) for a in decision.actions):  # no slot held
                self.planning = self.shell.plan(task, pool, tools)
                return RequeueAt(datetime.now(UTC))
            self.shell.prepare(task, pool, decision)  # before the record that names it
            recorded = self._record(task, decision, notices)
            self._act(task, pool, decision)
        finally:
            self.shell.settle(task)
        return self._conclude(task, recorded)

    def _fail(self, task: AgentTask) -> Outcome:
        """End the task with the failure a shell found: recorded, then acted on (what still
        runs is stopped), like any other end. No pool is needed for it."""
        assert self.failure is not None
        decision, notices = self._observe_and_decide(task, AgentPoolSpec(), self.registry, {}, None)
        recorded = self._record(task, decision, notices)
        self._act(task, None, decision)
        return self._conclude(task, recorded)

    def _act(self, task: AgentTask, pool: AgentPool | None, decision: Decision) -> None:
        """Act on a recorded decision. If acting fails (but for a Permanent failure, which
        ends the task), the next pass makes the same actions again before anything else
        (each is idempotent): a stop, say, of an attempt recorded as ended, which no later
        decision asks for again. Not the starts and launches: a recorded attempt still
        prepared is let run by the next decision, unless that one stops it (the task was
        deleted meanwhile)."""
        try:
            self.shell.act(task, pool, decision)
        except Permanent:
            raise
        except Exception:
            again: list[Action] = [
                a for a in decision.actions if not isinstance(a, StartStep | LaunchStep)
            ]
            self._unacted = replace(decision, actions=again, events=[])
            raise

    def _conclude(self, task: AgentTask, recorded: Recorded) -> Outcome:
        status = recorded.decision.status
        self.shell.tell(task, recorded)  # recorded: told now, even if the status write fails
        self.shell.write_status(task, status)
        if status.plan is not None or status.phase.terminal:
            self.planning = None  # in the written status now (or of no more use)
        return Done() if status.phase.terminal else RequeueAt(recorded.decision.requeue_at)

    def _decide(
        self, task: AgentTask, pool: AgentPool, tools: ToolRegistry
    ) -> tuple[Decision, list[Notice]]:
        approvals = self.shell.observe_approvals(task)
        # A task about to be planned starts nothing this pass: it sets no slot aside, so the
        # planner's call (seconds, minutes) keeps no other task of the pool waiting.
        planning = task.status.plan is None and not task.spec.steps and self.planning is None
        slots = 0 if planning else self.shell.free_slots(task, pool)
        return self._observe_and_decide(task, pool.spec, tools, approvals, slots)

    def _observe_and_decide(
        self,
        task: AgentTask,
        pool: AgentPoolSpec,
        tools: ToolRegistry,
        approvals: Mapping[str, ApprovalView],
        free_slots: int | None,
    ) -> tuple[Decision, list[Notice]]:
        """The decision, and the notices it makes (with the time the next one falls due
        folded into its `requeue_at`)."""
        now = datetime.now(UTC)
        decision = decide(
            Observed(
                task=task,
                now=now,
                pool=pool,
                registry=tools,
                recorded=list(self._runs(task).values()),
                live=self.shell.observe_runs(task, self._ended(task)),
                approvals=approvals,
                free_slots=free_slots,
                planning=self.planning,
                failure=self.failure,
            )
        )
        policy = policy_for(task.metadata.namespace or "default", pool, self.notify_defaults)
        if not self.notifies or policy is None:
            return decision, []
        notices, wake = due(task, decision, approvals, policy, now)
        if wake is not None and (decision.requeue_at is None or wake < decision.requeue_at):
            decision = replace(decision, requeue_at=wake)
        return decision, [n for n in notices if n.key not in self._notified]

    def _ended(self, task: AgentTask) -> set[Key]:
        return {key for key, run in self._runs(task).items() if run.finished_at is not None}

    def _runs(self, task: AgentTask) -> dict[Key, StepRun]:
        """The attempts recorded: read once, then kept up to date by this driver's writes."""
        if self._recorded is None:
            runs = self.store().runs(_uid(task))
            self._recorded = {(r.step_id, r.attempt): r for r in runs}
        return self._recorded

    def _record(self, task: AgentTask, decision: Decision, notices: Sequence[Notice]) -> Recorded:
        """Everything the decision needs written, in one transaction; only what it committed
        is remembered as written."""
        store, uid = self.store(), _uid(task)
        status, meta = decision.status, task.metadata
        row = (status.phase, status.reason, status.usage.tokens, status.plan is not None)
        now = datetime.now(UTC)
        started = [
            StepRun(
                a.step_id,
                a.attempt,
                RunState.running,
                now,
                job_name=job_name(meta.name, uid, a.step_id, a.attempt),
            )
            for a in decision.actions
            if isinstance(a, StartStep)
        ]
        with store.batch():
            if row != self._saved_row:
                store.upsert_task(
                    uid,
                    namespace=meta.namespace,
                    name=meta.name,
                    phase=status.phase.value,
                    goal=task.spec.goal,
                    reason=status.reason,
                    message=status.message,
                    plan=[p.wire() for p in status.plan] if status.plan else None,
                    tokens=status.usage.tokens,
                    cost_usd=status.usage.cost_usd,
                )
            ended = [run for run in decision.finished if store.record_run(uid, run)]
            for run in started:
                store.record_run(uid, run)
            events = [
                event
                for event in decision.events
                if store.append_event(
                    uid,
                    event.kind,
                    step_id=event.step_id,
                    attempt=event.attempt,
                    message=event.message,
                    dedupe_key=event.key,
                )
            ]
            queued = [n for n in notices if store.enqueue_notice(uid, n)]
            if decision.checkpointed(task.status) and status.checkpoint is not None:
                store.record_checkpoint(
                    uid,
                    status.checkpoint.id,
                    status.checkpoint.step,
                    status.checkpoint.time,
                    status.wire(),
                )
        self._saved_row = row
        self._notified.update(n.key for n in notices)
        recorded = self._runs(task)
        for run in [*decision.finished, *started]:
            recorded[(run.step_id, run.attempt)] = run
        return Recorded(decision, ended, events, queued)


def _uid(task: AgentTask) -> str:
    return task.metadata.uid or task.metadata.name
