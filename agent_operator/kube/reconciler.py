"""One AgentTask driven to its end: observe, decide, record, act, wait.

Each task has its own loop (a Kopf daemon thread). It is woken by the watches
of its Jobs and Pods, by changes to the task, its ApprovalRequests and its pool,
or by the time the core asked to look again. Everything it does is level-based:
after a restart it observes the same Jobs and store rows and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

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
from agent_runtime.registry import ToolRegistry, Usage

log = logging.getLogger(__name__)

Obj = dict[str, Any]
EventPoster = Callable[[Obj, Event], None]

STOP_POLL_SECONDS = 1.0  # how soon a sleeping task loop notices that the operator stops


class Wakers:
    """One event per task: set by watches and handlers, waited on by the task's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def _event(self, uid: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(uid, threading.Event())

    def wake(self, uid: str) -> None:
        self._event(uid).set()

    def wait(self, uid: str, seconds: float, stopped: Any = None) -> None:
        """Until woken or `seconds` pass; `stopped` (Kopf's daemon flag) is checked each
        STOP_POLL_SECONDS, so a stopping operator is not held up by a sleeping task loop."""
        event = self._event(uid)
        deadline = time.monotonic() + max(seconds, 0.0)
        while not event.wait(min(max(deadline - time.monotonic(), 0.0), STOP_POLL_SECONDS)):
            if stopped or time.monotonic() >= deadline:
                break
        event.clear()

    def forget(self, uid: str) -> None:
        with self._lock:
            self._events.pop(uid, None)


@dataclass
class OperatorContext:
    """What every task loop shares."""

    settings: OperatorSettings
    cluster: Cluster
    jobs: LabelledCache
    pods: LabelledCache
    post_event: EventPoster
    registry: ToolRegistry = field(default_factory=ToolRegistry.default)
    ledger: PoolLedger = field(default_factory=PoolLedger)
    wakers: Wakers = field(default_factory=Wakers)
    phases: dict[str, TaskPhase] = field(default_factory=dict)
    _store: Store | None = None
    _store_lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self) -> Store:
        """The checkpoint store, opened (again) on demand; raises StoreUnavailable."""
        with self._store_lock:
            if self._store is None:
                self._store = Store.open(self.settings.dsn)
            return self._store

    def close(self) -> None:
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

    def run(self, stopped: Any) -> None:
        while not stopped:
            try:
                wait = self.step()
            except (ApiException, urllib3.exceptions.HTTPError) as error:
                # Like a store outage: keep the task's place and look again soon. Nothing is
                # lost: the next pass observes again, and what was written is not redone.
                metrics.API_ERRORS.labels("kubernetes").inc()
                log.warning("task %s: Kubernetes API call failed (%s); retrying", self.uid, error)
                wait = self.ctx.settings.api_retry_seconds
            if wait is None:
                self.ctx.wakers.forget(self.uid)
                self.ctx.ledger.forget(self.uid)
                return
            self.ctx.wakers.wait(
                self.uid, min(wait, self.ctx.settings.idle_requeue_seconds), stopped
            )

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
        runs = {(r.step_id, r.attempt): r for r in _stored_runs(store, self.uid)}
        for job in self.ctx.jobs.for_key(self.uid):
            pods = self.ctx.pods.for_key(self.uid)
            name = job["metadata"]["name"]
            pod = next((p for p in pods if p["metadata"]["labels"].get("job-name") == name), None)
            run = run_from_job(job, pod, store.load_result)
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
        """Store first: an action is taken only once what led to it is written down."""
        store = self.ctx.store()
        status, meta = decision.status, task.metadata
        row = (status.phase, status.reason, status.usage.tokens, status.plan is not None)
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
            self.saved_task = row
        for run in runs:
            if run.state != RunState.running and self.recorded.get(_key(run)) != run.state:
                store.record_attempt(
                    self.uid,
                    run.step_id,
                    run.attempt,
                    phase=run.state.value,
                    job_name=run.job_name,
                    started_at=run.started_at,
                    finished_at=run.finished_at or datetime.now(UTC),
                    outputs=dict(run.outputs),
                    message=run.message,
                    tokens=run.usage.tokens,
                    cost_usd=run.usage.cost_usd,
                )
                self.recorded[_key(run)] = run.state
                self._observe_finished(task, run)
        for action in decision.actions:
            if isinstance(action, StartStep):
                store.record_attempt(
                    self.uid,
                    action.step_id,
                    action.attempt,
                    phase=RunState.running.value,
                    started_at=datetime.now(UTC),
                )
        self.pending_events += decision.events
        while self.pending_events:
            event = self.pending_events[0]
            store.append_event(
                self.uid,
                event.kind,
                step_id=event.step_id,
                attempt=event.attempt,
                message=event.message,
                dedupe_key=event.key,
            )
            self.pending_events.pop(0)
        if decision.checkpointed(task.status) and status.checkpoint is not None:
            store.record_checkpoint(
                self.uid,
                status.checkpoint.id,
                status.checkpoint.step,
                status.checkpoint.time,
                status.wire(),
            )
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
                job = step_job(task, pool, action, dsn_secret=self.ctx.settings.dsn_secret)
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


def _stored_runs(store: Store, uid: str) -> list[StepRun]:
    runs = []
    for record in store.attempts(uid):
        if record.finished_at is None:
            continue  # still running: its Job says how it goes
        runs.append(
            StepRun(
                step_id=record.step_id,
                attempt=record.attempt,
                state=RunState(record.phase),
                started_at=record.started_at or record.finished_at,
                finished_at=record.finished_at,
                outputs=record.outputs or {},
                message=record.message or "",
                usage=Usage(tokens=record.tokens, cost_usd=record.cost_usd),
                job_name=record.job_name,
            )
        )
    return runs


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
