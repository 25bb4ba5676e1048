"""One AgentTask driven to its end: observe, decide, record, act, wait.

Each task has its own loop (an async Kopf daemon: a waiting task costs a coroutine, not
a thread; its passes run on a small shared thread pool). It is woken by the watches
of its Jobs and Pods, by changes to the task, its ApprovalRequests and its pool,
or by the time the core asked to look again. Everything it does is level-based:
after a restart it observes the same Jobs and store rows and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from agent_contract import ToolRegistry, Usage
from agent_operator.api import (
    AgentPool,
    AgentTask,
    AgentTaskStatus,
    ApprovalPhase,
    TaskPhase,
)
from agent_operator.core.conditions import task_conditions
from agent_operator.core.decide import (
    Decision,
    Event,
    EventKind,
    ExpireApproval,
    Observed,
    PlanWithLLM,
    RequestApproval,
    RunState,
    StartStep,
    StepRun,
    StopStep,
    decide,
)
from agent_operator.core.patch import merge_patch
from agent_operator.core.plan import PlanningResult
from agent_operator.kube import metrics
from agent_operator.kube.cache import LabelledCache
from agent_operator.kube.capacity import PoolLedger
from agent_operator.kube.cluster import Cluster
from agent_operator.kube.manifests import approval_name, approval_request, step_job
from agent_operator.kube.observe import approval_view, run_from_job
from agent_operator.kube.settings import OperatorSettings
from agent_operator.planner import plan_with_llm
from agent_operator.store import Store, StoreUnavailable

Obj = dict[str, Any]
EventPoster = Callable[[Any, Event], None]  # a Kopf body or a plain dict
ObjectLoggerFactory = Callable[[Any], logging.LoggerAdapter[Any]]


@dataclass
class _Waker:
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)
    asleep: bool = False


class Wakers:
    """Wakes task loops from any thread (watches, Kopf's handlers). A wake that comes while a
    loop is busy with a pass is kept for its next wait; a wake for a task with no loop is
    dropped (its loop's first pass observes everything anyway)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: dict[str, _Waker] = {}

    def register(self, uid: str) -> None:
        """Called by a task's loop, on the operator's event loop, before its first pass."""
        with self._lock:
            self._loops[uid] = _Waker(asyncio.get_running_loop())

    def forget(self, uid: str) -> None:
        with self._lock:
            self._loops.pop(uid, None)

    def wake(self, uid: str) -> None:
        with self._lock:
            waker = self._loops.get(uid)
        if waker is not None:
            with contextlib.suppress(RuntimeError):  # the operator's event loop has closed
                waker.loop.call_soon_threadsafe(waker.event.set)

    async def wait(self, uid: str, seconds: float) -> None:
        """Until woken or `seconds` pass."""
        waker = self._loops[uid]
        waker.asleep = True
        try:
            await asyncio.wait_for(waker.event.wait(), max(seconds, 0.0))
        except TimeoutError:
            pass
        finally:
            waker.asleep = False
            waker.event.clear()

    def running(self) -> int:
        """Task loops now running."""
        with self._lock:
            return len(self._loops)

    def asleep(self) -> int:
        """Task loops now waiting to be woken."""
        with self._lock:
            return sum(1 for w in self._loops.values() if w.asleep)


@dataclass
class OperatorContext:
    """What every task loop shares."""

    settings: OperatorSettings
    cluster: Cluster
    jobs: LabelledCache
    pods: LabelledCache
    post_event: EventPoster
    object_logger: ObjectLoggerFactory
    registry: ToolRegistry = field(default_factory=ToolRegistry.default)
    ledger: PoolLedger = field(default_factory=PoolLedger)
    wakers: Wakers = field(default_factory=Wakers)
    phases: dict[str, TaskPhase] = field(default_factory=dict)
    passes: ThreadPoolExecutor = field(init=False)  # where task loops make their passes
    _store: Store | None = None
    _store_lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self) -> Store:
        """The checkpoint store, opened (again) on demand; raises StoreUnavailable."""
        with self._store_lock:
            if self._store is None:
                self._store = Store.open(self.settings.dsn)
            return self._store

    def __post_init__(self) -> None:
        self.passes = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="task-pass")

    def close(self) -> None:
        self.passes.shutdown(wait=True)
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def count_phase(self, uid: str, phase: TaskPhase) -> None:
        self.phases[uid] = phase
        for each in TaskPhase:
            metrics.TASKS.labels(each.value).set(sum(1 for p in self.phases.values() if p == each))


class PoolMissing(Exception):
    """The task names an AgentPool that does not exist."""


class TaskLoop:
    """The loop of one task. `body` is Kopf's live view of the AgentTask."""

    def __init__(
        self,
        ctx: OperatorContext,
        body: Any,
        pools: Callable[[str, str], Obj | None],
        approvals: Callable[[str], Iterable[Obj]],
    ) -> None:
        self.ctx = ctx
        self.body = body
        self.log = ctx.object_logger(body)
        self.pools = pools
        self.approvals = approvals
        self.planning: PlanningResult | None = None
        self.pending_events: list[Event] = []
        self.recorded: dict[tuple[str, int], str] = {}
        self.saved_task: tuple[Any, ...] | None = None
        self.spent = Usage()
        self.written: AgentTaskStatus | None = None

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    async def run(self) -> None:
        """Passes until the task ends, each on a worker thread, so a waiting task holds no
        thread. A pass is never cut short: when the loop is cancelled (the operator stops,
        the task is deleted), the pass in flight finishes first."""
        wakers = self.ctx.wakers
        wakers.register(self.uid)
        try:
            while True:
                # With Kopf's context (its event poster lives in context variables).
                context = contextvars.copy_context()
                work = asyncio.get_running_loop().run_in_executor(
                    self.ctx.passes, context.run, self._pass
                )
                wait = await _whole(work)
                if wait is None:
                    self.ctx.ledger.forget(self.uid)
                    return
                await wakers.wait(self.uid, min(wait, self.ctx.settings.idle_requeue_seconds))
        finally:
            wakers.forget(self.uid)

    def _pass(self) -> float | None:
        try:
            return self.step()
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            # Like a store outage: keep the task's place and look again soon. Nothing is
            # lost: the next pass observes again, and what was written is not redone.
            metrics.API_ERRORS.labels("kubernetes").inc()
            self.log.warning("Kubernetes API call failed (%s); retrying", error)
            return self.ctx.settings.api_retry_seconds

    def step(self) -> float | None:
        """One pass; the seconds until the next look, or None when the task has ended."""
        try:
            task = AgentTask.model_validate(_plain(self.body))
        except ValidationError as error:
            self._fail_raw("InvalidSpec", f"the AgentTask does not parse: {error}")
            return None
        if self.written is not None:  # the watch may not have brought our last write yet
            task = task.model_copy(update={"status": self.written})
        self.ctx.count_phase(self.uid, task.status.phase)
        if task.status.phase.terminal:
            return None
        try:
            pool = self._pool(task)
            runs = self._runs()
            decision = self._decide(task, pool, runs)
            if any(isinstance(a, PlanWithLLM) for a in decision.actions):
                self.planning = self._plan(task, pool)
                return 0.0
            self._record(task, decision, runs)
            self._act(task, pool, decision)
        except PoolMissing as missing:
            self._finish(task, "PoolNotFound", str(missing))
            return None
        except StoreUnavailable as error:
            metrics.API_ERRORS.labels("store").inc()
            self._store_down(task, str(error))
            return self.ctx.settings.store_retry_seconds
        except ValueError as error:  # a pool template that cannot make a safe pod
            self._finish(task, "InvalidPoolTemplate", str(error))
            return None
        self._write_status(task, decision.status)
        self._post_events(decision)
        if decision.status.phase.terminal:
            return None
        if decision.requeue_at is None:
            return self.ctx.settings.idle_requeue_seconds
        return (decision.requeue_at - datetime.now(UTC)).total_seconds()

    # --- observe and decide ---------------------------------------------------

    def _pool(self, task: AgentTask) -> AgentPool:
        name, namespace = task.spec.pool_ref.name, task.metadata.namespace
        body = self.pools(namespace, name)
        if body is None:
            raise PoolMissing(
                f"spec.poolRef names AgentPool {name!r}, which does not exist in namespace "
                f"{namespace!r}; create it or point poolRef at an existing pool"
            )
        return AgentPool.model_validate(_plain(body))

    def _runs(self) -> list[StepRun]:
        """Attempts from the store, overlaid with what the step Jobs show now."""
        store = self.ctx.store()
        # A run the store has as unfinished: its Job (below) says how it goes.
        stored = [r for r in store.runs(self.uid) if r.finished_at is not None]
        runs = {(r.step_id, r.attempt): r for r in stored}
        for job in self.ctx.jobs.for_key(self.uid):
            pods = self.ctx.pods.for_key(self.uid)
            name = job["metadata"]["name"]
            pod = next((p for p in pods if p["metadata"]["labels"].get("job-name") == name), None)
            # A large result is read from the pod's log once: the store keeps it after that.
            read_log = None if _attempt_of(job) in runs else self.ctx.cluster.step_log_tail
            run = run_from_job(job, pod, read_log)
            known = runs.get((run.step_id, run.attempt))
            if known is None or known.state == RunState.running:
                runs[(run.step_id, run.attempt)] = run
        return list(runs.values())

    def _decide(self, task: AgentTask, pool: AgentPool, runs: list[StepRun]) -> Decision:
        key = (task.metadata.namespace, pool.metadata.name)
        views = {}
        for body in self.approvals(self.uid):
            view = approval_view(_plain(body))
            views[view.step_id] = view
        return decide(
            Observed(
                task=task,
                now=datetime.now(UTC),
                pool=pool.spec,
                registry=self.ctx.registry,
                runs=runs,
                approvals=views,
                free_slots=self.ctx.ledger.free_for(key, self.uid, pool.spec.replicas),
                planning=self.planning,
            )
        )

    def _plan(self, task: AgentTask, pool: AgentPool) -> PlanningResult:
        model = pool.spec.model
        if model is None:
            return PlanningResult(
                plan=None,
                reason="NoModel",
                message=f"spec.goal needs an LLM, but AgentPool {pool.metadata.name!r} has no "
                "spec.model; add one or give spec.steps",
            )
        api_key = None
        if model.api_key_secret_ref is not None:
            ref = model.api_key_secret_ref
            api_key = self.ctx.cluster.secret_value(task.metadata.namespace, ref.name, ref.key)
            if api_key is None:
                return PlanningResult(
                    plan=None,
                    reason="MissingAPIKey",
                    message=f"Secret {ref.name!r} with key {ref.key!r} (the pool's "
                    "spec.model.apiKeySecretRef) does not exist",
                )
        result = asyncio.run(
            plan_with_llm(task.spec, pool.spec, self.ctx.registry, api_key=api_key, model=model)
        )
        metrics.LLM_TOKENS.inc(result.usage.tokens)
        metrics.LLM_COST.inc(result.usage.cost_usd)
        return result

    # --- record and act --------------------------------------------------------

    def _record(self, task: AgentTask, decision: Decision, runs: list[StepRun]) -> None:
        """Store first: an action is taken only once what led to it is written down. One
        transaction; what is remembered as written is only what it committed."""
        store = self.ctx.store()
        status, meta = decision.status, task.metadata
        row = (status.phase, status.reason, status.usage.tokens, status.plan is not None)
        finished = [
            run
            for run in runs
            if run.state != RunState.running and self.recorded.get(_key(run)) != run.state
        ]
        self.pending_events += decision.events
        with store.batch():
            if row != self.saved_task:
                store.upsert_task(
                    self.uid,
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
            for run in finished:
                store.record_run(self.uid, run)
            for action in decision.actions:
                if isinstance(action, StartStep):
                    store.record_attempt(
                        self.uid,
                        action.step_id,
                        action.attempt,
                        phase=RunState.running.value,
                        started_at=datetime.now(UTC),
                    )
            for event in self.pending_events:
                store.append_event(
                    self.uid,
                    event.kind,
                    step_id=event.step_id,
                    attempt=event.attempt,
                    message=event.message,
                    dedupe_key=event.key,
                )
            if decision.checkpointed(task.status) and status.checkpoint is not None:
                store.record_checkpoint(
                    self.uid,
                    status.checkpoint.id,
                    status.checkpoint.step,
                    status.checkpoint.time,
                    status.wire(),
                )
        self.saved_task = row
        for run in finished:
            self.recorded[_key(run)] = run.state
            self._observe_finished(task, run)
        self.pending_events = []
        spent = status.usage
        metrics.LLM_TOKENS.inc(max(0, spent.tokens - self.spent.tokens))
        metrics.LLM_COST.inc(max(0.0, spent.cost_usd - self.spent.cost_usd))
        self.spent = spent

    def _observe_finished(self, task: AgentTask, run: StepRun) -> None:
        tool = next((s.tool for s in task.status.plan or [] if s.id == run.step_id), "unknown")
        if run.finished_at is not None:
            seconds = (run.finished_at - run.started_at).total_seconds()
            metrics.STEP_SECONDS.labels(tool, run.state.value).observe(max(seconds, 0.0))

    def _act(self, task: AgentTask, pool: AgentPool, decision: Decision) -> None:
        cluster, meta = self.ctx.cluster, task.metadata
        started = []
        for action in decision.actions:
            if isinstance(action, StartStep):
                job = step_job(task, pool, action)
                cluster.create_job(job)
                started.append(job["metadata"]["name"])
                self._observe_handoff(task, action, decision)
            elif isinstance(action, StopStep):
                for job in self.ctx.jobs.for_key(self.uid):
                    if _attempt_of(job) == (action.step_id, action.attempt):
                        cluster.delete_job(meta.namespace, job["metadata"]["name"])
            elif isinstance(action, RequestApproval):
                cluster.create_approval(approval_request(task, action))
                metrics.APPROVALS_PENDING.inc()
            elif isinstance(action, ExpireApproval):
                name = approval_name(meta.name, self.uid, action.step_id)
                cluster.patch_status(
                    "approvalrequests", meta.namespace, name, {"phase": ApprovalPhase.expired}
                )
                metrics.APPROVALS_PENDING.dec()
        key = (meta.namespace, pool.metadata.name)
        self.ctx.ledger.hold(key, started)
        self.ctx.ledger.wait(key, self.uid, len(decision.queued))

    def _observe_handoff(self, task: AgentTask, start: StartStep, decision: Decision) -> None:
        step = next((s for s in decision.status.plan or [] if s.id == start.step_id), None)
        if step is None or start.attempt != 1:
            return
        finished = [
            s.finished_at for s in task.status.steps if s.id in step.depends_on and s.finished_at
        ]
        if finished:
            seconds = (datetime.now(UTC) - max(finished)).total_seconds()
            metrics.HANDOFF_SECONDS.observe(max(seconds, 0.0))

    # --- status -----------------------------------------------------------------

    def _write_status(self, task: AgentTask, status: AgentTaskStatus) -> None:
        """Patch only what changed; fields that went away are removed, not left stale."""
        patch = merge_patch(task.status.wire(), status.wire())
        if patch:
            meta = task.metadata
            self.ctx.cluster.patch_status("agenttasks", meta.namespace, meta.name, patch)
            self.ctx.count_phase(self.uid, status.phase)
        self.written = status  # only once written: a failed patch is made again next pass

    def _post_events(self, decision: Decision) -> None:
        for event in decision.events:
            if event.kind == EventKind.step_retried:
                metrics.RETRIES.inc()
            self.ctx.post_event(self.body, event)

    def _store_down(self, task: AgentTask, message: str) -> None:
        """Keep the task's place: nothing new starts until the store is back."""
        status = task.status.model_copy(deep=True)
        status.reason = "StoreUnavailable"
        status.message = f"the checkpoint store is unreachable; waiting: {message}"
        status.conditions = task_conditions(status, task, datetime.now(UTC))
        self._write_status(task, status)

    def _finish(self, task: AgentTask, reason: str, message: str) -> None:
        """Fail the task for a reason the core cannot see (pool, template, spec)."""
        status = task.status.model_copy(deep=True)
        status.phase, status.reason, status.message = TaskPhase.failed, reason, message
        status.completion_time = datetime.now(UTC)
        status.conditions = task_conditions(status, task, datetime.now(UTC))
        self._write_status(task, status)
        self.ctx.post_event(
            self.body, Event(EventKind.task_finished, reason, message, warning=True)
        )

    def _fail_raw(self, reason: str, message: str) -> None:
        meta = self.body["metadata"]
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        status = {"phase": "Failed", "reason": reason, "message": message[:1000]}
        status["completionTime"] = now
        self.ctx.cluster.patch_status("agenttasks", meta["namespace"], meta["name"], status)


def _key(run: StepRun) -> tuple[str, int]:
    return run.step_id, run.attempt


def _attempt_of(job: Obj) -> tuple[str, int]:
    labels = job["metadata"].get("labels", {})
    return labels.get("agentoperator.io/step", ""), int(labels.get("agentoperator.io/attempt", 0))


def _plain(body: Any) -> Obj:
    """A plain dict of a Kopf body (or a dict already)."""
    if isinstance(body, dict):
        return body
    return {k: _plain_value(v) for k, v in dict(body).items()}


def _plain_value(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain_value(v) for k, v in dict(value).items()}
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    return value


async def _whole(work: asyncio.Future[float | None]) -> float | None:
    """Await `work`; if cancelled meanwhile, let it finish, then pass the cancellation on."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise
