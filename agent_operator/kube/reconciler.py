"""One AgentTask driven to its end in the cluster: the Kubernetes shell of the driver.

Each task has its own loop (an async Kopf daemon: a waiting task costs a coroutine, not
a thread; its passes run on a small shared thread pool). It is woken by the watches of
its Jobs and Pods, by changes to the task, its ApprovalRequests and its pool, or by the
time the core asked to look again. A pass is `driver.Driver.run_pass` with this module's
`KubeShell`: observe the Jobs, pods, approvals and pool slots; act by creating Jobs and
ApprovalRequests; write the status as a merge patch of what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from agent_contract import ToolRegistry
from agent_contract.mcp import server_of
from agent_operator.api import (
    AgentPool,
    AgentTask,
    AgentTaskStatus,
    ApprovalPhase,
    MCPServer,
    TaskPhase,
)
from agent_operator.core.conditions import task_conditions
from agent_operator.core.decide import (
    ApprovalView,
    Decision,
    Event,
    EventKind,
    ExpireApproval,
    LaunchStep,
    RequestApproval,
    StartStep,
    StepRun,
    StopStep,
)
from agent_operator.core.mcp import granted_servers, pool_registry
from agent_operator.core.naming import job_name
from agent_operator.core.patch import merge_patch
from agent_operator.core.plan import PlanningResult
from agent_operator.core.reasons import Reason
from agent_operator.driver import (
    BackOff,
    Done,
    Driver,
    Outcome,
    Permanent,
    Recorded,
    Transient,
)
from agent_operator.kube import metrics
from agent_operator.kube.cache import LabelledCache
from agent_operator.kube.capacity import PoolLedger
from agent_operator.kube.cluster import Cluster
from agent_operator.kube.manifests import (
    LABEL_ATTEMPT,
    LABEL_STEP,
    LAUNCH,
    InvocationTooLarge,
    approval_name,
    approval_request,
    step_job,
)
from agent_operator.kube.observe import approval_view, run_from_job
from agent_operator.kube.settings import OperatorSettings
from agent_operator.notifier import Deliverer
from agent_operator.planner import plan_with_llm
from agent_operator.store import Store, StoreUnavailable

__all__ = [
    "EventPoster",
    "KubeShell",
    "ObjectLoggerFactory",
    "OperatorContext",
    "TaskLoop",
    "plain_body",
]

Obj = dict[str, Any]
Key = tuple[str, int]  # step id, attempt
PROBE_SECONDS = 1.0  # how often a loop's back-off looks whether the API server or store is back
EventPoster = Callable[[Any, Event], None]  # a Kopf body or a plain dict
ObjectLoggerFactory = Callable[[Any], logging.LoggerAdapter[Any]]


@dataclass
class _Waker:
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)
    roused: asyncio.Event = field(default_factory=asyncio.Event)  # cuts a back-off short
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
        self._set(uid, lambda waker: waker.event)

    def rouse(self, uid: str) -> None:
        """End a back-off (`sleep`) early: what the task's pass failed on is back."""
        self._set(uid, lambda waker: waker.roused)

    def _set(self, uid: str, event: Callable[[_Waker], asyncio.Event]) -> None:
        with self._lock:
            waker = self._loops.get(uid)
        if waker is not None:
            with contextlib.suppress(RuntimeError):  # the operator's event loop has closed
                waker.loop.call_soon_threadsafe(event(waker).set)

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
            waker.roused.clear()

    async def sleep(self, uid: str, seconds: float) -> None:
        """`seconds`, whatever wakes come meanwhile (the next pass observes what they were
        about anyway), unless roused."""
        waker = self._loops[uid]
        # A rouse meant for an earlier back-off is stale (this one's probe starts after it).
        waker.roused.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waker.roused.wait(), max(seconds, 0.0))
        waker.event.clear()
        waker.roused.clear()

    def running(self) -> int:
        """Task loops now running."""
        with self._lock:
            return len(self._loops)

    def asleep(self) -> int:
        """Task loops now waiting to be woken."""
        with self._lock:
            return sum(1 for w in self._loops.values() if w.asleep)


class Recovery:
    """Rouses the task loops backing off because the API server or the store failed, once
    a probe finds it answering. A loop backs off for its whole delay, which doubles while
    the outage lasts, so it could otherwise wait nearly as long again after the end of the
    outage (the API server's restart cost 25 s). One probe per cause, every `interval`, for
    all the loops; each loop is roused once per run of failed passes, so a pass that keeps
    failing for its own reason while the probe succeeds cannot make passes hot."""

    def __init__(
        self, probes: Mapping[str, Callable[[], object]], wakers: Wakers, interval: float
    ) -> None:
        self._probes, self._wakers, self._interval = probes, wakers, interval
        self._lock = threading.Lock()
        self._waiting: dict[str, set[str]] = {cause: set() for cause in probes}
        self._roused: set[str] = set()  # roused since their last pass that went through
        self._stop = threading.Event()

    def backing_off(self, uid: str, cause: str) -> None:
        """The loop of `uid` backs off, its pass having failed for `cause`."""
        if cause not in self._probes:
            return  # a defect: nothing to probe, it waits its delay out
        with self._lock:
            if uid in self._roused:
                return
            probing = bool(self._waiting[cause])
            self._waiting[cause].add(uid)
        if not probing:
            threading.Thread(
                target=self._probe, args=(cause,), name=f"probe-{cause}-{id(self):x}", daemon=True
            ).start()

    def forget(self, uid: str) -> None:
        """The loop's pass went through (or the loop ended): nothing to rouse it for, and
        its next failure may rouse it."""
        with self._lock:
            self._roused.discard(uid)
            for waiting in self._waiting.values():
                waiting.discard(uid)

    def _probe(self, cause: str) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                if not self._waiting[cause]:  # their passes went through, or they ended
                    return
            try:
                self._probes[cause]()
            except Exception:  # any failure: still down
                continue
            with self._lock:
                waiting, self._waiting[cause] = self._waiting[cause], set()
                self._roused |= waiting
            for uid in waiting:
                self._wakers.rouse(uid)
            return

    def stop(self) -> None:
        self._stop.set()


class PhaseGauge:
    """The tasks-by-phase gauge, set from the phase each known task is in (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[str, TaskPhase] = {}

    def set(self, uid: str, phase: TaskPhase) -> None:
        with self._lock:
            old = self._phases.get(uid)
            self._phases[uid] = phase
            if old != phase:
                self._publish()

    def forget(self, uid: str) -> None:
        with self._lock:
            if self._phases.pop(uid, None) is not None:
                self._publish()

    def _publish(self) -> None:
        """Under the lock: every phase's count, so the gauge always sums to the tasks."""
        for each in TaskPhase:
            metrics.TASKS.labels(each.value).set(sum(1 for p in self._phases.values() if p == each))


class PendingApprovals:
    """The approvals-pending gauge, set from the ApprovalRequests the watch shows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[tuple[str, str]] = set()

    def observe(self, namespace: str, name: str, pending: bool) -> None:
        with self._lock:
            if pending:
                self._pending.add((namespace, name))
            else:
                self._pending.discard((namespace, name))
            metrics.APPROVALS_PENDING.set(len(self._pending))


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
    phases: PhaseGauge = field(default_factory=PhaseGauge)
    pending_approvals: PendingApprovals = field(default_factory=PendingApprovals)
    loops: dict[str, TaskLoop] = field(default_factory=dict)  # the running loops, by uid
    deliverer: Deliverer | None = None  # delivers the outbox's notices
    passes: ThreadPoolExecutor = field(init=False)  # where task loops make their passes
    recovery: Recovery = field(init=False)  # rouses loops backing off once an outage ends
    _store: Store | None = None
    _store_lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self) -> Store:
        """The checkpoint store, opened (again) on demand; raises StoreUnavailable.

        Opened outside the lock: during an outage every pass fails fast on its own
        instead of queueing behind one that waits for its connection timeout."""
        store = self._store
        if store is not None:
            return store
        opened = Store.open(self.settings.dsn)
        with self._store_lock:
            if self._store is None:
                self._store = opened
                return opened
        opened.close()  # another pass opened it meanwhile
        return self._store

    def __post_init__(self) -> None:
        self.passes = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="task-pass")
        probes = {"store": lambda: self.store().ping(), "transient": self.cluster.ping}
        self.recovery = Recovery(probes, self.wakers, PROBE_SECONDS)

    def close(self) -> None:
        self.recovery.stop()
        self.passes.shutdown(wait=True)
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None


class TaskLoop:
    """The loop of one task: passes of its driver with the task's Kubernetes shell."""

    def __init__(self, shell: KubeShell) -> None:
        self.ctx = ctx = shell.ctx
        self.shell = shell
        settings = ctx.settings
        self.driver = Driver(
            self.shell,
            ctx.store,
            ctx.registry,
            retry_seconds=settings.api_retry_seconds,
            store_retry_seconds=settings.store_retry_seconds,
            notifies=True,
            notify_defaults=settings.notify_defaults(),
        )

    @property
    def uid(self) -> str:
        return self.shell.uid

    async def run(self) -> None:
        """Passes until the task ends, each on a worker thread, so a waiting task holds no
        thread. A pass is never cut short: when the loop is cancelled (the operator stops,
        the task is deleted), the pass in flight finishes first."""
        wakers = self.ctx.wakers
        wakers.register(self.uid)
        self.ctx.loops[self.uid] = self
        try:
            while True:
                # With Kopf's context (its event poster lives in context variables).
                context = contextvars.copy_context()
                work = asyncio.get_running_loop().run_in_executor(
                    self.ctx.passes, context.run, self.step
                )
                wait = await _whole(work)
                if wait is None:
                    return
                seconds, wakeable = wait
                seconds = min(seconds, self.ctx.settings.idle_requeue_seconds)
                if wakeable:
                    await wakers.wait(self.uid, seconds)
                else:
                    await wakers.sleep(self.uid, seconds)
        finally:
            wakers.forget(self.uid)
            self.ctx.recovery.forget(self.uid)
            self.ctx.loops.pop(self.uid, None)
            self.ctx.ledger.forget(self.uid)
            if self.shell.body["metadata"].get("deletionTimestamp"):
                self.ctx.phases.forget(self.uid)  # a deleted task is no task of any phase

    def step(self) -> tuple[float, bool] | None:
        """One pass; then the seconds until the next look and whether a wake may cut them
        short, or None when the task has ended. A pass that failed backs off for all of
        its delay: it gave its pool slots back, which wakes the tasks in line, whose passes
        fail as well (the store is down) and wake it again, without end."""
        outcome = self.pass_once()
        seconds = self.shell.seconds_until(outcome)
        return None if seconds is None else (seconds, not isinstance(outcome, BackOff))

    def pass_once(self) -> Outcome:
        """A pass of the driver, after checking the object is an AgentTask the core can
        read; if not, the task is failed here (recorded, then its status written), the
        one end the core cannot decide."""
        try:
            self.shell.observe_task()
        except ValidationError as error:
            try:
                self.shell.fail_unreadable(f"the AgentTask does not parse: {error}")
                return Done()
            except (Transient, Permanent, StoreUnavailable) as failed:
                outcome: Outcome = BackOff(
                    self.ctx.settings.store_retry_seconds, "transient", str(failed)
                )
        else:
            outcome = self.driver.run_pass()
        if isinstance(outcome, BackOff):
            self.ctx.recovery.backing_off(self.uid, outcome.cause)
            cause = "kubernetes" if outcome.cause == "transient" else outcome.cause
            metrics.API_ERRORS.labels(cause).inc()
            self.shell.log.warning(
                "the pass failed (%s); looking again in %.1fs", outcome.error, outcome.seconds
            )
            if outcome.cause == "store":
                self.shell.show_store_down(outcome.error)
        else:
            self.ctx.recovery.forget(self.uid)
        return outcome


class KubeShell:
    """The cluster as the driver sees it (see `driver.Shell`). `body` is Kopf's live view
    of the AgentTask; `pools` and `approvals` read Kopf's indexes."""

    def __init__(
        self,
        ctx: OperatorContext,
        body: Any,
        pools: Callable[[str, str], Obj | None],
        approvals: Callable[[str], Iterable[Obj]],
        servers: Callable[[str], Iterable[Obj]],
    ) -> None:
        self.ctx = ctx
        self.body = body
        self.log = ctx.object_logger(body)
        self._pools = pools
        self._approvals = approvals
        self._servers = servers
        self.written: AgentTaskStatus | None = None

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    def seconds_until(self, outcome: Outcome) -> float | None:
        if isinstance(outcome, Done):
            return None
        if isinstance(outcome, BackOff):
            return outcome.seconds
        if outcome.when is None:
            return self.ctx.settings.idle_requeue_seconds
        return (outcome.when - datetime.now(UTC)).total_seconds()

    # --- observe ------------------------------------------------------------------

    def observe_task(self) -> AgentTask:
        task = AgentTask.model_validate(plain_body(self.body))
        if self.written is not None:  # the watch may not have brought our last write yet
            task = task.model_copy(update={"status": self.written})
        self.ctx.phases.set(self.uid, task.status.phase)
        return task

    def observe_pool(self, task: AgentTask) -> AgentPool:
        name, namespace = task.spec.pool_ref.name, task.metadata.namespace
        body = self._pools(namespace, name)
        if body is None:
            raise Permanent(
                Reason.pool_not_found,
                f"spec.poolRef names AgentPool {name!r}, which does not exist in namespace "
                f"{namespace!r}; create it or point poolRef at an existing pool",
            )
        return AgentPool.model_validate(plain_body(body))

    def observe_runs(self, task: AgentTask, ended: Collection[Key]) -> Sequence[StepRun]:
        """Runs of the task's Jobs as the caches show them. A Job deleted a short while ago
        still tells how its attempt ended; one deleted before it ended shows nothing, so
        the core counts that attempt as lost. A large result is read from the pod's log
        only while its attempt's end is not recorded (the store keeps it after that)."""
        if not (self.ctx.jobs.ready and self.ctx.pods.ready):
            raise Transient("the Job and Pod caches have not listed everything yet")
        jobs, pods = self.ctx.jobs, self.ctx.pods
        by_job = {
            p["metadata"].get("labels", {}).get("job-name"): p
            for p in [*pods.gone_for_key(self.uid), *pods.for_key(self.uid)]
        }
        live_pods = {
            p["metadata"].get("labels", {}).get("job-name") for p in pods.for_key(self.uid)
        }
        runs = []
        for job, gone in [(j, True) for j in jobs.gone_for_key(self.uid)] + [
            (j, False) for j in jobs.for_key(self.uid)
        ]:
            name = job["metadata"]["name"]
            read_log = None if _attempt_of(job) in ended else self.ctx.cluster.step_log_tail
            run = run_from_job(job, by_job.get(name), read_log)
            # A Job gone before its attempt ended is lost, unless its pod still runs (an
            # orphaning delete): a retry must never overlap it.
            if not (gone and run.finished_at is None and name not in live_pods):
                runs.append(run)
        return runs

    def observe_approvals(self, task: AgentTask) -> Mapping[str, ApprovalView]:
        """The requests this operator made for the task's steps: one made by anyone else
        (with the task's label, for a step of it, decided already) decides nothing."""
        views = {}
        for body in self._approvals(self.uid):
            view = approval_view(plain_body(body))
            if body["metadata"]["name"] == approval_name(
                task.metadata.name, self.uid, view.step_id
            ):
                views[view.step_id] = view
        return views

    def free_slots(self, task: AgentTask, pool: AgentPool) -> int | None:
        key = (task.metadata.namespace, pool.metadata.name)
        return self.ctx.ledger.reserve(key, self.uid, pool.spec.replicas)

    def observe_tools(self, pool: AgentPool) -> ToolRegistry:
        granted = granted_servers(pool.spec)
        if not granted:
            return self.ctx.registry
        servers = self._mcp_servers(pool)
        unseen = sorted(
            s.metadata.name
            for s in servers
            if s.metadata.name in granted and not s.status.conditions
        )
        if unseen:  # applied with the task (GitOps applies all at once): its list is moments away
            raise Transient(f"waiting for MCPServer {unseen[0]!r} to list its tools")
        return pool_registry(self.ctx.registry, pool.spec, servers)

    def _mcp_servers(self, pool: AgentPool) -> list[MCPServer]:
        """The MCPServers of the pool's namespace, but those that do not parse (their
        status says so; their tools are unknown to plans)."""
        servers = []
        for body in self._servers(pool.metadata.namespace):
            with contextlib.suppress(ValidationError):
                servers.append(MCPServer.model_validate(plain_body(body)))
        return servers

    def plan(self, task: AgentTask, pool: AgentPool, tools: ToolRegistry) -> PlanningResult:
        model = pool.spec.model
        if model is None:
            return PlanningResult(
                plan=None,
                reason=Reason.no_model,
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
                    reason=Reason.missing_api_key,
                    message=f"Secret {ref.name!r} with key {ref.key!r} (the pool's "
                    "spec.model.apiKeySecretRef) does not exist",
                )
        result = asyncio.run(
            plan_with_llm(task.spec, pool.spec, tools, api_key=api_key, model=model)
        )
        metrics.LLM_TOKENS.inc(result.usage.tokens)  # spent now, whatever becomes of it
        metrics.LLM_COST.inc(result.usage.cost_usd)
        return result

    # --- act ----------------------------------------------------------------------

    def prepare(self, task: AgentTask, pool: AgentPool, decision: Decision) -> None:
        key = (task.metadata.namespace, pool.metadata.name)
        for start in decision.actions:
            if not isinstance(start, StartStep):
                continue
            servers = (
                self._mcp_servers(pool)
                if any(server_of(tool) for tool in (start.tool, *start.calls))
                else []
            )
            try:
                job = step_job(task, pool, start, servers)
            except ValueError as error:  # the pool's template cannot make a safe pod
                raise Permanent(Reason.invalid_pool_template, str(error)) from error
            except InvocationTooLarge as error:
                raise Permanent(Reason.invocation_too_large, str(error)) from error
            except LookupError as error:  # its server deleted since the plan was made
                raise Permanent(
                    Reason.mcp_server_not_found,
                    f"{error} (namespace {pool.metadata.namespace!r})",
                ) from error
            name = job["metadata"]["name"]
            self.ctx.ledger.take(key, self.uid, [name])  # held while it is being made
            try:
                created = self.ctx.cluster.create_job(job)  # or adopted: a killed pass made it
            except Exception:
                # Nothing recorded: the next pass decides afresh, and must find the slot free.
                # (Had the failed call made the Job, its watch event takes the slot again.)
                self.ctx.ledger.release(key, [name])
                raise
            self.ctx.jobs.put(created)  # known now: the next pass must not think it lost

    def act(self, task: AgentTask, pool: AgentPool | None, decision: Decision) -> None:
        cluster, meta = self.ctx.cluster, task.metadata
        for action in decision.actions:
            if isinstance(action, StartStep | LaunchStep):
                self._launch(task, action.step_id, action.attempt)
                if isinstance(action, StartStep):
                    self._observe_handoff(task, action, decision)
            elif isinstance(action, StopStep):
                for job in self.ctx.jobs.for_key(self.uid):
                    if _attempt_of(job) == (action.step_id, action.attempt):
                        cluster.delete_job(meta.namespace, job["metadata"]["name"])
            elif isinstance(action, RequestApproval):
                cluster.create_approval(approval_request(task, action))
            elif isinstance(action, ExpireApproval):
                name = approval_name(meta.name, self.uid, action.step_id)
                cluster.patch_status(
                    "approvalrequests", meta.namespace, name, {"phase": ApprovalPhase.expired}
                )
        if pool is not None:
            key = (meta.namespace, pool.metadata.name)
            self.ctx.ledger.wait(key, self.uid, len(decision.queued))

    def _launch(self, task: AgentTask, step_id: str, attempt: int) -> None:
        """Let a prepared Job run. One gone meanwhile (deleted) stays gone: its attempt is
        recorded, so the next pass counts it lost."""
        meta = task.metadata
        name = job_name(meta.name, self.uid, step_id, attempt)
        launched = self.ctx.cluster.patch_job(meta.namespace, name, LAUNCH)
        if launched is not None:
            self.ctx.jobs.put(launched)  # the next pass must not launch it again

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

    def settle(self, task: AgentTask) -> None:
        for uid in self.ctx.ledger.settle(self.uid):
            self.ctx.wakers.wake(uid)

    # --- status and what to tell ----------------------------------------------------

    def write_status(self, task: AgentTask, status: AgentTaskStatus) -> None:
        """Patch only what changed; fields that went away are removed, not left stale."""
        patch = merge_patch(task.status.wire(), status.wire())
        if patch:
            meta = task.metadata
            self.ctx.cluster.patch_status("agenttasks", meta.namespace, meta.name, patch)
            self.ctx.phases.set(self.uid, status.phase)
        self.written = status  # only once written: a failed patch is made again next pass

    def tell(self, task: AgentTask, recorded: Recorded) -> None:
        plan = {s.id: s.tool for s in recorded.decision.status.plan or []}
        for run in recorded.runs:
            metrics.LLM_TOKENS.inc(run.usage.tokens)
            metrics.LLM_COST.inc(run.usage.cost_usd)
            if run.finished_at is not None:
                seconds = max((run.finished_at - run.started_at).total_seconds(), 0.0)
                tool = plan.get(run.step_id, "unknown")
                metrics.STEP_SECONDS.labels(tool, run.state.value).observe(seconds)
        for event in recorded.events:
            if event.kind == EventKind.step_retried:
                metrics.RETRIES.inc()
            self.ctx.post_event(self.body, event)
        if recorded.notices and self.ctx.deliverer is not None:
            self.ctx.deliverer.poke()

    def show_store_down(self, error: str) -> None:
        """Say in the status why the task is held: nothing new starts until the store is
        back (nothing is recorded, so nothing may be done)."""
        with contextlib.suppress(Transient, Permanent, ValidationError):
            task = self.observe_task()
            status = task.status.model_copy(deep=True)
            status.reason = Reason.store_unavailable
            status.message = f"the checkpoint store is unreachable; waiting: {error}"
            status.conditions = task_conditions(status, task, datetime.now(UTC))
            self.write_status(task, status)

    def fail_unreadable(self, message: str) -> None:
        meta = self.body["metadata"]
        now = datetime.now(UTC)
        store = self.ctx.store()
        with store.batch():
            store.upsert_task(
                self.uid,
                namespace=meta["namespace"],
                name=meta["name"],
                phase=TaskPhase.failed.value,
                reason=Reason.invalid_spec,
                message=message,
            )
            store.append_event(
                self.uid, EventKind.task_finished, message=message, dedupe_key=Reason.invalid_spec
            )
        status = {"phase": TaskPhase.failed.value, "reason": Reason.invalid_spec}
        status |= {"message": message[:1000], "completionTime": now.isoformat()}
        self.ctx.cluster.patch_status("agenttasks", meta["namespace"], meta["name"], status)
        self.ctx.post_event(
            self.body, Event(EventKind.task_finished, Reason.invalid_spec, message, warning=True)
        )


def _attempt_of(job: Obj) -> tuple[str, int]:
    labels = job["metadata"].get("labels", {})
    return labels.get(LABEL_STEP, ""), int(labels.get(LABEL_ATTEMPT, 0))


def plain_body(body: Any) -> Obj:
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


T = TypeVar("T")


async def _whole(work: asyncio.Future[T]) -> T:
    """Await `work`; if cancelled meanwhile, let it finish, then pass the cancellation on."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise
