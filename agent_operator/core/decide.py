"""decide(): from what is observed about a task to its new status and the actions to take.

Pure and level-based: the same observation always gives the same decision, so a
restarted operator (or the embedded runner after `--resume`) simply observes
again and carries on. Attempts are numbered, and an attempt is started only when
no run of it has been recorded or observed, so no step runs twice: an attempt the
store recorded as started that no Job or process shows any more is `Lost`, a failed
attempt, and the step's retries decide what follows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from graphlib import TopologicalSorter
from typing import Any

from agent_contract import RiskLevel, ToolRegistry, Usage, params_problem
from agent_operator.api import (
    AgentPoolSpec,
    AgentTask,
    AgentTaskSpec,
    AgentTaskStatus,
    ApprovalPhase,
    CheckpointRef,
    OnReject,
    PlannedStep,
    RiskAssessment,
    StepPhase,
    StepStatus,
    TaskPhase,
)
from agent_operator.core.cel import CelError
from agent_operator.core.conditions import task_conditions
from agent_operator.core.plan import InvalidPlan, PlanningResult, build_plan, call_problems
from agent_operator.core.reasons import Reason
from agent_operator.core.safety import (
    assess,
    denial,
    in_window,
    matching_rules,
    next_window_open,
    rules_of,
    step_matches,
    tightest,
)
from agent_operator.core.summary import summarize
from agent_operator.core.templating import (
    MissingReference,
    evaluate_condition,
    substitute,
)

MAX_BACKOFF = timedelta(minutes=10)
# The runtime stops a step at its timeout and reports `TimedOut` with what it has; the shells
# step in only this long after (a hung or killed runtime), as does a Job's own deadline.
DEADLINE_GRACE_SECONDS = 30
# The approver of an Approved request that names none: no admission policy recorded who set
# the decision (the operator runs without its chart). The decision counts all the same.
UNRECORDED_APPROVER = "(approver not recorded)"
_Attempt = tuple[str, int]  # step id, attempt


class RunState(StrEnum):
    # Made, but not let run: the driver has an attempt's Job made suspended before it
    # records the attempt, and lets it run after (see `driver.py`). Never recorded.
    prepared = "Prepared"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"


@dataclass(frozen=True)
class StepRun:
    """One observed attempt of a step (a Job, a local process, or its stored record)."""

    step_id: str
    attempt: int
    state: RunState
    started_at: datetime
    finished_at: datetime | None = None
    outputs: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    job_name: str | None = None
    # Ended, but what runs it has not and never will by itself (a pod whose image cannot
    # be pulled waits forever): decide() stops it.
    lingering: bool = False


@dataclass(frozen=True)
class ApprovalView:
    """The observed state of a step's ApprovalRequest."""

    step_id: str
    phase: ApprovalPhase
    expires_at: datetime
    decided_by: str | None = None
    reason: str | None = None
    params_digest: str | None = None  # of the params it asked about; None: not recorded
    requested_at: datetime | None = None  # when the request was made (for reminders)


def bound_schemas(
    registry: ToolRegistry, tool: str, params: dict[str, Any]
) -> dict[str, Any] | None:
    """The params schemas an approval of a call of `tool` is bound to: the tool's, with
    those of the tools it may call in turn (a sub-agent's) when it has any; None for a
    tool no longer known."""
    spec = registry.get(tool)
    if spec is None:
        return None
    called = registry.called_by(spec, params)
    if not called:
        return spec.params_schema
    return {"tool": spec.params_schema, "calls": {c.name: c.params_schema for c in called}}


def params_digest(params: Mapping[str, Any], schema: Mapping[str, Any] | None) -> str:
    """What an approval is bound to: the step's params as it asked about them (before any
    redaction) and the params schemas of its tools then (`bound_schemas`), so an approval
    given for some params never lets others run (spec.inputs may change while a step
    waits), nor the same params on a tool whose server has changed it."""
    bound = params if schema is None else {"params": params, "schema": schema}
    text = json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ShellFailure:
    """Why the task cannot go on, found by a shell rather than the core (its pool is
    missing, the pool's template cannot make a safe pod, the API server refused a
    request for good). decide() ends the task with it, through the same path as
    every other end."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """Everything decide() may look at.

    `recorded` are the attempts the store holds (an unfinished one has no
    `finished_at`); `live` are those the executor shows now (Jobs and pods, local
    processes), which the shell must have seen whole (a synced cache): a recorded
    attempt that is not live any more and never recorded an end is lost.
    """

    task: AgentTask
    now: datetime
    pool: AgentPoolSpec
    registry: ToolRegistry
    recorded: Sequence[StepRun] = ()
    live: Sequence[StepRun] = ()
    approvals: Mapping[str, ApprovalView] = field(default_factory=dict)
    free_slots: int | None = None  # None: the executor has no pool limit
    planning: PlanningResult | None = None
    failure: ShellFailure | None = None


@dataclass(frozen=True)
class PlanWithLLM:
    """Ask the LLM planner for a plan; feed the answer back as Observed.planning."""


@dataclass(frozen=True)
class StartStep:
    step_id: str
    attempt: int
    tool: str
    params: dict[str, Any]
    timeout_seconds: int
    requires_approval: bool
    approved_by: str | None
    # The tools the step's sub-agent may call: the step's pod needs their MCP endpoints too.
    calls: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchStep:
    """Let a prepared attempt run: it is recorded, but the pass that recorded it ended
    before letting it run (the operator was killed)."""

    step_id: str
    attempt: int


@dataclass(frozen=True)
class StopStep:
    step_id: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class RequestApproval:
    step_id: str
    tool: str
    params: dict[str, Any]
    risk: RiskAssessment
    expires_at: datetime
    digest: str  # `params_digest`: what an approval of this request is bound to


@dataclass(frozen=True)
class ExpireApproval:
    step_id: str


Action = PlanWithLLM | StartStep | LaunchStep | StopStep | RequestApproval | ExpireApproval


class EventKind(StrEnum):
    planned = "planned"
    approval_requested = "approval_requested"
    approval_decided = "approval_decided"
    step_started = "step_started"
    step_finished = "step_finished"
    step_retried = "step_retried"
    step_failed = "step_failed"
    task_finished = "task_finished"
    task_cancelled = "task_cancelled"


@dataclass(frozen=True)
class Event:
    """A transition worth telling a person about (Kubernetes Event, store audit log)."""

    kind: EventKind
    reason: str
    message: str
    step_id: str | None = None
    attempt: int | None = None
    warning: bool = False

    @property
    def key(self) -> str:
        """Same transition, same key: recording it twice is a no-op."""
        return f"{self.kind}/{self.step_id or ''}/{self.attempt or 0}/{self.reason}"


@dataclass(frozen=True)
class Decision:
    """The new status, what to do, and what to write down before doing it.

    `finished` are the attempts that ended as this decision sees them and are not yet
    recorded as ended (a Job's outcome, a lost attempt, a run being stopped): the
    shell records them, with the started attempts of `actions`, before it acts.
    """

    status: AgentTaskStatus
    actions: list[Action]
    events: list[Event]
    requeue_at: datetime | None = None
    queued: list[str] = field(default_factory=list)
    finished: list[StepRun] = field(default_factory=list)

    def checkpointed(self, before: AgentTaskStatus) -> bool:
        return self.status.checkpoint != before.checkpoint


@dataclass
class _StepView:
    """Where a step stands in this decision."""

    phase: StepPhase
    attempt: int = 0
    reason: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    job_name: str | None = None
    outputs: Mapping[str, Any] = field(default_factory=dict)


def backoff(base_seconds: float, failed_attempt: int) -> timedelta:
    """Delay before the next attempt: base, doubled per failed attempt, capped."""
    return min(timedelta(seconds=base_seconds * 2 ** (failed_attempt - 1)), MAX_BACKOFF)


def decide(observed: Observed) -> Decision:
    live, prepared = _prepared(observed)
    unrecorded = sum(1 for is_recorded in prepared.values() if not is_recorded)
    if unrecorded and observed.free_slots is not None:
        # Each holds a slot of the pool; the start that adopts it fills that slot.
        observed = replace(observed, free_slots=observed.free_slots + unrecorded)
    runs, ended = merge_runs(observed.recorded, live, observed.now)
    decision = _decide(observed, runs)
    actions = [
        *decision.actions,
        *(StopStep(r.step_id, r.attempt, r.reason or Reason.failed) for r in live if r.lingering),
    ]
    decision = replace(decision, actions=[*actions, *_launch_or_discard(actions, prepared)])
    stopped = {
        (a.step_id, a.attempt): a.reason for a in decision.actions if isinstance(a, StopStep)
    }
    for run in runs:
        reason = stopped.get((run.step_id, run.attempt))
        if reason is not None and run.state == RunState.running:
            message = f"stopped by the operator: {reason}"
            ended.append(_ended(run, observed.now, reason, message))
    return replace(decision, finished=ended)


def _prepared(observed: Observed) -> tuple[list[StepRun], dict[_Attempt, bool]]:
    """The live runs, with a prepared attempt that is recorded counted as running from now
    (it will run; its timeout counts once it does), and one that is not left out (it is
    no attempt yet); and every prepared attempt, with whether it is recorded."""
    recorded = {(r.step_id, r.attempt) for r in observed.recorded if r.finished_at is None}
    live: list[StepRun] = []
    prepared: dict[_Attempt, bool] = {}
    for run in observed.live:
        key = (run.step_id, run.attempt)
        if run.state != RunState.prepared:
            live.append(run)
            continue
        prepared[key] = key in recorded
        if key in recorded:
            live.append(replace(run, state=RunState.running, started_at=observed.now))
    return live, prepared


def _launch_or_discard(
    actions: Sequence[Action], prepared: Mapping[_Attempt, bool]
) -> list[Action]:
    """A recorded prepared attempt is let run unless `actions` stop it; one that is not
    recorded is removed unless `actions` start it (the start adopts it)."""
    started = {(a.step_id, a.attempt) for a in actions if isinstance(a, StartStep)}
    stopped = {(a.step_id, a.attempt) for a in actions if isinstance(a, StopStep)}
    more: list[Action] = []
    for key, is_recorded in prepared.items():
        if is_recorded and key not in stopped:
            more.append(LaunchStep(*key))
        elif not is_recorded and key not in started:
            more.append(StopStep(*key, Reason.unrecorded))
    return more


def merge_runs(
    recorded: Sequence[StepRun], live: Sequence[StepRun], now: datetime
) -> tuple[list[StepRun], list[StepRun]]:
    """Every attempt as it stands, and those of them that ended but are not recorded so.

    A recorded end is final (a Job's later word changes nothing); a live run tells how
    an unfinished recorded attempt goes; an unfinished recorded attempt with no live run
    is lost: it ran, or may have, and nothing will ever report its end.
    """
    merged = {(r.step_id, r.attempt): r for r in recorded}
    ended_before = {key for key, r in merged.items() if r.finished_at is not None}
    seen = set()
    for run in live:
        key = (run.step_id, run.attempt)
        seen.add(key)
        if key not in ended_before:
            merged[key] = run
    for key, run in merged.items():
        if key not in ended_before and key not in seen and run.state == RunState.running:
            merged[key] = _ended(
                run,
                now,
                Reason.lost,
                f"attempt {run.attempt} was started, but its Job or process is gone and no "
                "outcome was recorded",
            )
    ended = [
        r for key, r in merged.items() if r.state != RunState.running and key not in ended_before
    ]
    return list(merged.values()), ended


def _ended(run: StepRun, now: datetime, reason: str, message: str) -> StepRun:
    return replace(run, state=RunState.failed, finished_at=now, reason=reason, message=message)


def _decide(observed: Observed, runs: list[StepRun]) -> Decision:
    task = observed.task
    if task.status.phase.terminal:
        return Decision(status=task.status, actions=[], events=[])
    status = task.status.model_copy(deep=True)
    status.observed_generation = task.metadata.generation
    if observed.failure is not None:
        stop: list[Action] = [
            StopStep(r.step_id, r.attempt, Reason.task_failed)
            for r in runs
            if r.state == RunState.running
        ]
        failure = observed.failure
        return _finish(observed, status, stop, TaskPhase.failed, failure.reason, failure.message)
    if status.plan is None:
        if task.metadata.deletion_timestamp is not None:
            return _finish(observed, status, [], TaskPhase.cancelled, Reason.cancelled, "deleted")
        planning = _plan(observed, status)
        if planning is not None:
            return planning
    return _run(observed, status, runs)


def _plan(observed: Observed, status: AgentTaskStatus) -> Decision | None:
    """Put a plan into the status, or return the decision that waits for or fails it."""
    spec = observed.task.spec
    if spec.steps:
        try:
            built = build_plan(spec.steps, spec, observed.pool, observed.registry)
        except InvalidPlan as error:
            return _fail_planning(observed, status, Reason.invalid_plan, str(error))
        status.plan = [s.model_copy(update={"params": {}}) for s in built]  # in the spec
    elif observed.planning is None:
        status.phase = TaskPhase.planning
        status.conditions = task_conditions(status, observed.task, observed.now)
        return Decision(status=status, actions=[PlanWithLLM()], events=[])
    else:
        status.planning_usage = observed.planning.usage
        status.usage = observed.planning.usage
        if observed.planning.plan is None:
            return _fail_planning(
                observed,
                status,
                observed.planning.reason or Reason.planning_failed,
                observed.planning.message or "the planner returned no plan",
            )
        status.plan = observed.planning.plan
    status.start_time = status.start_time or observed.now
    return None


def full_plan(spec: AgentTaskSpec, plan: list[PlannedStep]) -> list[PlannedStep]:
    """The plan with every step's params. A plan made from `spec.steps` keeps its params in
    the spec only (immutable once planned), so the status stays small however large they
    are; an LLM-made plan carries its own."""
    if not spec.steps:
        return plan
    params = {s.id: s.params for s in spec.steps}
    return [s.model_copy(update={"params": params.get(s.id, {})}) for s in plan]


def _fail_planning(
    observed: Observed, status: AgentTaskStatus, reason: str, message: str
) -> Decision:
    return _finish(observed, status, [], TaskPhase.failed, reason, message)


def _finish(
    observed: Observed,
    status: AgentTaskStatus,
    actions: list[Action],
    phase: TaskPhase,
    reason: str,
    message: str,
) -> Decision:
    before = observed.task.status
    status.phase, status.reason, status.message = phase, reason, message
    status.completion_time = observed.now
    status.current_step = None
    status.conditions = task_conditions(status, observed.task, observed.now)
    status.checkpoint = _next_checkpoint(before, status, observed.now, force=True)
    return Decision(
        status=status, actions=actions, events=_events(before, status, observed.approvals)
    )


def _runs_by_step(runs: Sequence[StepRun]) -> dict[str, list[StepRun]]:
    grouped: dict[str, list[StepRun]] = {}
    for run in sorted(runs, key=lambda r: r.attempt):
        grouped.setdefault(run.step_id, []).append(run)
    return grouped


def _deadline(started_at: datetime, step: PlannedStep) -> datetime:
    """When the operator stops an attempt the runtime has not ended: timeout plus grace."""
    return started_at + timedelta(seconds=step.timeout_seconds + DEADLINE_GRACE_SECONDS)


def _timed_out(run: StepRun, step: PlannedStep, now: datetime) -> bool:
    return run.state == RunState.running and now >= _deadline(run.started_at, step)


def _run(observed: Observed, status: AgentTaskStatus, merged: list[StepRun]) -> Decision:
    task, now = observed.task, observed.now
    spec = task.spec
    plan = full_plan(spec, status.plan or [])
    actions: list[Action] = []
    runs = _runs_by_step(merged)
    running = [r for rs in runs.values() for r in rs if r.state == RunState.running]
    status.usage = sum(
        (r.usage for rs in runs.values() for r in rs), status.planning_usage or Usage()
    )
    stop_all: list[Action] = [StopStep(r.step_id, r.attempt, Reason.task_ended) for r in running]

    if task.metadata.deletion_timestamp is not None:
        return _finish(observed, status, stop_all, TaskPhase.cancelled, Reason.cancelled, "deleted")
    limit = _limit_exceeded(observed, status)
    if limit:
        return _finish(observed, status, stop_all, TaskPhase.failed, *limit)

    views: dict[str, _StepView] = {}
    wake: list[datetime] = []
    ready: list[tuple[PlannedStep, _Start]] = []
    by_id = {s.id: s for s in plan}
    order = TopologicalSorter({s.id: s.depends_on for s in plan}).static_order()
    for step_id in order:
        step = by_id[step_id]
        view, start = _step_view(observed, step, runs.get(step_id, []), views, actions, wake)
        views[step_id] = view
        if start is not None:
            ready.append((step, start))

    failed = [sid for sid, v in views.items() if v.phase == StepPhase.failed]
    in_flight = sum(1 for v in views.values() if v.phase == StepPhase.running)
    queued: list[str] = []
    if not failed and not spec.suspend:
        slots = _slots(observed, in_flight)
        ready.sort(key=lambda r: plan.index(r[0]))
        for step, start in ready:
            if slots <= 0:
                views[step.id].phase, views[step.id].reason = (
                    StepPhase.queued,
                    Reason.waiting_for_capacity,
                )
                queued.append(step.id)
                continue
            slots -= 1
            wake.append(_deadline(now, step))
            approval = observed.approvals.get(step.id)
            actions.append(
                StartStep(
                    step_id=step.id,
                    attempt=start.attempt,
                    tool=step.tool,
                    params=start.params,
                    timeout_seconds=step.timeout_seconds,
                    requires_approval=start.requires_approval,
                    approved_by=(approval.decided_by or UNRECORDED_APPROVER) if approval else None,
                    calls=tuple(
                        tool.calls(start.params)
                        if (tool := observed.registry.get(step.tool)) is not None
                        else ()
                    ),
                )
            )
            views[step.id] = _StepView(
                phase=StepPhase.running,
                attempt=start.attempt,
                started_at=now,
                reason=Reason.starting,
                message=None,
            )

    status.steps = [
        _step_status(task.metadata.uid or task.metadata.name, s.id, views[s.id]) for s in plan
    ]
    status.outputs = _final_outputs(plan, views)
    active = [
        s.id for s in plan if views[s.id].phase in (StepPhase.running, StepPhase.waiting_approval)
    ]
    status.current_step = ",".join(active) or None

    if failed:
        if not any(v.phase == StepPhase.running for v in views.values()):
            first = views[failed[0]]
            reason = (
                first.reason
                if first.reason in (Reason.approval_expired, Reason.approval_rejected)
                else Reason.step_failed
            )
            message = f"step {failed[0]!r} failed: {first.message or first.reason}"
            return _finish(observed, status, actions, TaskPhase.failed, reason, message)
    elif all(v.phase.done for v in views.values()):
        return _finish(
            observed, status, actions, TaskPhase.succeeded, Reason.succeeded, _done_message(views)
        )

    if any(v.phase == StepPhase.running for v in views.values()) or not any(
        v.phase == StepPhase.waiting_approval for v in views.values()
    ):
        status.phase = TaskPhase.running
    else:
        status.phase = TaskPhase.waiting_approval
    status.reason, status.message = _progress(views, spec.suspend)
    status.conditions = task_conditions(status, task, now)
    status.checkpoint = _next_checkpoint(task.status, status, now)
    if spec.limits.active_deadline_seconds and status.start_time:
        wake.append(status.start_time + timedelta(seconds=spec.limits.active_deadline_seconds))
    return Decision(
        status=status,
        actions=actions,
        events=_events(task.status, status, observed.approvals),
        requeue_at=min((w for w in wake if w > now), default=None),
        queued=queued,
    )


def _limit_exceeded(observed: Observed, status: AgentTaskStatus) -> tuple[str, str] | None:
    limits = observed.task.spec.limits
    start = status.start_time or observed.now
    if limits.active_deadline_seconds is not None and observed.now >= start + timedelta(
        seconds=limits.active_deadline_seconds
    ):
        return (
            Reason.deadline_exceeded,
            f"the task ran longer than spec.limits.activeDeadlineSeconds "
            f"({limits.active_deadline_seconds}s)",
        )
    if limits.max_tokens is not None and status.usage.tokens > limits.max_tokens:
        return (
            Reason.budget_exceeded,
            f"used {status.usage.tokens} tokens; spec.limits.maxTokens is {limits.max_tokens}",
        )
    if limits.max_cost_usd is not None and status.usage.cost_usd > limits.max_cost_usd:
        return (
            Reason.budget_exceeded,
            f"spent ${status.usage.cost_usd:.4f}; spec.limits.maxCostUSD is {limits.max_cost_usd}",
        )
    return None


def _slots(observed: Observed, in_flight: int) -> int:
    limits = observed.task.spec.limits
    slots = observed.free_slots if observed.free_slots is not None else 1 << 30
    if limits.max_parallel is not None:
        slots = min(slots, limits.max_parallel - in_flight)
    return slots


def _step_view(
    observed: Observed,
    step: PlannedStep,
    runs: list[StepRun],
    views: Mapping[str, _StepView],
    actions: list[Action],
    wake: list[datetime],
) -> tuple[_StepView, _Start | None]:
    """A step's view, and how it starts when it should start now."""
    now = observed.now
    if runs:
        latest = runs[-1]
        view = _StepView(
            phase=StepPhase.running,
            attempt=latest.attempt,
            started_at=latest.started_at,
            finished_at=latest.finished_at,
            job_name=latest.job_name,
            message=latest.message or None,
            reason=latest.reason,
        )
        if latest.state == RunState.succeeded:
            view.phase, view.outputs, view.reason = (
                StepPhase.succeeded,
                latest.outputs,
                Reason.succeeded,
            )
            view.message = summarize(latest.outputs)
            return view, None
        if latest.state == RunState.running and not _timed_out(latest, step, now):
            wake.append(_deadline(latest.started_at, step))
            return view, None
        if latest.state == RunState.running:
            actions.append(StopStep(step.id, latest.attempt, Reason.timed_out))
            view.finished_at = _deadline(latest.started_at, step)
            view.reason = Reason.timed_out
            view.message = (
                f"attempt {latest.attempt} did not end within its timeout of "
                f"{step.timeout_seconds}s and {DEADLINE_GRACE_SECONDS}s of grace"
            )
        if latest.attempt > step.retries:
            view.phase, view.reason = StepPhase.failed, view.reason or Reason.failed
            view.message = _attempts_message(latest.attempt, view.message)
            return view, None
        retry_at = (view.finished_at or now) + backoff(
            observed.task.spec.limits.backoff_seconds, latest.attempt
        )
        if now < retry_at:
            view.phase, view.reason = StepPhase.retrying, Reason.backing_off
            view.message = (
                f"attempt {latest.attempt} failed ({view.message}); next at {retry_at:%H:%M:%S}"
            )
            wake.append(retry_at)
            return view, None
        return _prepare(observed, step, views, latest.attempt + 1, actions, wake)
    return _prepare(observed, step, views, 1, actions, wake)


def _attempts_message(attempts: int, last: str | None) -> str:
    plural = "attempt" if attempts == 1 else "attempts"
    return f"failed after {attempts} {plural}: {last or 'no message'}"


@dataclass(frozen=True)
class _Start:
    """How a ready step starts: its attempt, substituted params, and whether the verdict
    made with them (at start, never looser than the plan's) required approval."""

    attempt: int
    params: dict[str, Any]
    requires_approval: bool


def _prepare(
    observed: Observed,
    step: PlannedStep,
    views: Mapping[str, _StepView],
    attempt: int,
    actions: list[Action],
    wake: list[datetime],
) -> tuple[_StepView, _Start | None]:
    """Whether a step with no run in flight may start: dependencies, when, params, approval."""
    spec, now = observed.task.spec, observed.now
    deps = [views[d] for d in step.depends_on]
    pending = _StepView(phase=StepPhase.pending, attempt=attempt - 1)
    if any(not d.phase.done for d in deps) or any(d.phase == StepPhase.failed for d in deps):
        pending.reason = Reason.waiting_for_dependencies
        return pending, None
    outputs = {sid: v.outputs for sid, v in views.items() if v.phase == StepPhase.succeeded}
    if step.when is not None and attempt == 1:
        try:
            if not evaluate_condition(
                step.when, outputs, {sid: v.phase.value for sid, v in views.items()}, spec.inputs
            ):
                return _StepView(
                    StepPhase.skipped, reason=Reason.condition_false, message=f"when: {step.when}"
                ), None
        except CelError as error:
            return _StepView(
                StepPhase.failed, reason=Reason.when_error, message=f"when {error}"
            ), None
    try:
        params = substitute(step.params, outputs, spec.inputs)
    except MissingReference as error:
        return _StepView(
            StepPhase.failed, reason=Reason.missing_output, message=f"params: {error}"
        ), None
    if too_large := params_problem(params):  # a Job with it could never start
        return _StepView(
            StepPhase.failed, reason=Reason.params_too_large, message=f"params: {too_large}"
        ), None
    tool = observed.registry.get(step.tool)
    calls = call_problems(tool, params, observed.pool, observed.registry) if tool else []
    if calls:  # a placeholder filled in the tools a sub-agent may call
        return _StepView(
            StepPhase.failed, reason=Reason.tool_not_granted, message="params: " + "; ".join(calls)
        ), None
    risk, denied = _risk_at_start(observed, step, params)
    if denied:
        return _StepView(StepPhase.failed, reason=Reason.denied_by_rule, message=denied), None
    if risk.requires_approval:
        gate = _approval_gate(observed, step, params, risk, actions, wake)
        if gate is not None:
            gate.attempt = attempt - 1
            return gate, None
    window = spec.safety.critical_window
    if risk.level == RiskLevel.critical and window and not in_window(window, now):
        opens = next_window_open(window, now)
        wake.append(opens)
        pending.reason, pending.message = (
            Reason.outside_change_window,
            f"starts at {opens:%Y-%m-%d %H:%M} UTC",
        )
        return pending, None
    return pending, _Start(attempt, params, risk.requires_approval)


def _risk_at_start(
    observed: Observed, step: PlannedStep, params: dict[str, Any]
) -> tuple[RiskAssessment, str | None]:
    """The verdict on the params the step will run with (a placeholder may have filled in
    what a rule or the policy looks for), never looser than the plan's; and why a Deny
    rule refuses the step, if one does."""
    safety = observed.task.spec.safety
    rules = rules_of(observed.pool, safety)
    tool = observed.registry.get(step.tool)
    if tool is None:  # gone from the registry since planning: the plan's verdict stands
        return step.risk, denial(matching_rules(rules, step.tool, params))
    matches, denied = step_matches(rules, tool, params)
    now = assess(
        step.model_copy(update={"params": params}),
        tool.effective_risk(params, observed.registry),
        tool,
        safety,
        step.timeout_seconds,
        matches,
        observed.registry.called_by(tool, params),
    )
    return tightest(step.risk, now), "; ".join(denied) or None


def _approval_gate(
    observed: Observed,
    step: PlannedStep,
    params: dict[str, Any],
    risk: RiskAssessment,
    actions: list[Action],
    wake: list[datetime],
) -> _StepView | None:
    """None when the step is approved; otherwise the view that holds or ends it."""
    approval, now = observed.approvals.get(step.id), observed.now
    safety = observed.task.spec.safety
    if approval is None and observed.task.spec.suspend:
        return _StepView(
            StepPhase.pending, reason=Reason.suspended, message="asks for approval once resumed"
        )
    digest = params_digest(params, bound_schemas(observed.registry, step.tool, params))
    if approval is None:
        expires = now + timedelta(seconds=safety.approval_timeout_seconds)
        actions.append(RequestApproval(step.id, step.tool, params, risk, expires, digest))
        wake.append(expires)
        return _StepView(
            StepPhase.waiting_approval,
            reason=Reason.waiting_for_approval,
            message=_why(risk, step.tool),
        )
    if approval.phase == ApprovalPhase.approved:
        if approval.params_digest in (None, digest):
            return None
        return _StepView(
            StepPhase.failed,
            reason=Reason.approval_stale,
            message="approved for other params or another schema of its tool than it would "
            "start with (spec.inputs or the tool's server changed since it asked); create a "
            "new AgentTask to ask again",
        )
    if approval.phase == ApprovalPhase.rejected:
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        why = f": {approval.reason}" if approval.reason else ""
        message = f"rejected{by}{why}"
        if safety.on_reject == OnReject.skip:
            return _StepView(StepPhase.skipped, reason=Reason.approval_rejected, message=message)
        return _StepView(StepPhase.failed, reason=Reason.approval_rejected, message=message)
    if approval.phase == ApprovalPhase.expired or now >= approval.expires_at:
        if approval.phase != ApprovalPhase.expired:
            actions.append(ExpireApproval(step.id))
        return _StepView(
            StepPhase.failed,
            reason=Reason.approval_expired,
            message=f"no decision before {approval.expires_at:%Y-%m-%d %H:%M:%S} UTC",
        )
    wake.append(approval.expires_at)
    return _StepView(
        StepPhase.waiting_approval,
        reason=Reason.waiting_for_approval,
        message=_why(risk, step.tool),
    )


def _approval_decided(approval: ApprovalView) -> Event:
    """What became of a step's approval, who decided and why, for the audit trail."""
    phase = approval.phase
    if phase == ApprovalPhase.expired or phase == ApprovalPhase.pending:  # pending: past expiry
        return Event(
            EventKind.approval_decided,
            Reason.approval_expired,
            f"no decision before {approval.expires_at:%Y-%m-%d %H:%M:%S} UTC",
            approval.step_id,
            warning=True,
        )
    by = approval.decided_by or UNRECORDED_APPROVER
    why = f": {approval.reason}" if approval.reason else ""
    return Event(
        EventKind.approval_decided,
        f"Step{phase.value}",
        f"{phase.value.lower()} by {by}{why}",
        approval.step_id,
        warning=phase == ApprovalPhase.rejected,
    )


def _why(risk: RiskAssessment, tool: str) -> str:
    return f"{risk.level} risk: " + ("; ".join(risk.risks) or tool)


def _step_status(task_uid: str, step_id: str, view: _StepView) -> StepStatus:
    return StepStatus(
        id=step_id,
        phase=view.phase,
        attempt=view.attempt,
        job_name=view.job_name,
        started_at=view.started_at,
        finished_at=view.finished_at
        if view.phase.done or view.phase == StepPhase.retrying
        else None,
        reason=view.reason,
        message=view.message,
    )


def _final_outputs(plan: list[PlannedStep], views: Mapping[str, _StepView]) -> dict[str, Any]:
    """Outputs of the steps nothing depends on: what the task produced."""
    needed = {d for s in plan for d in s.depends_on}
    return {
        s.id: dict(views[s.id].outputs)
        for s in plan
        if s.id not in needed and views[s.id].phase == StepPhase.succeeded
    }


def _done_message(views: Mapping[str, _StepView]) -> str:
    ran = sum(1 for v in views.values() if v.phase == StepPhase.succeeded)
    skipped = sum(1 for v in views.values() if v.phase == StepPhase.skipped)
    return f"{ran} steps succeeded" + (f", {skipped} skipped" if skipped else "")


def _progress(views: Mapping[str, _StepView], suspended: bool) -> tuple[str, str]:
    if suspended:
        return Reason.suspended, "spec.suspend is true: running steps finish, nothing new starts"
    waiting = [sid for sid, v in views.items() if v.phase == StepPhase.waiting_approval]
    if waiting and not any(v.phase == StepPhase.running for v in views.values()):
        return Reason.waiting_for_approval, f"waiting for approval of: {', '.join(sorted(waiting))}"
    done = sum(1 for v in views.values() if v.phase.done)
    return Reason.steps_running, f"{done} of {len(views)} steps done"


def _next_checkpoint(
    before: AgentTaskStatus, after: AgentTaskStatus, now: datetime, force: bool = False
) -> CheckpointRef | None:
    """A new checkpoint after planning and after every step that finished."""
    done_before = {s.id for s in before.steps if s.phase.done}
    newly_done = [s.id for s in after.steps if s.phase.done and s.id not in done_before]
    planned_now = before.plan is None and after.plan is not None
    if not (newly_done or planned_now or force):
        return before.checkpoint
    number = before.checkpoint.id + 1 if before.checkpoint else 1
    last = newly_done[-1] if newly_done else (before.checkpoint.step if before.checkpoint else None)
    return CheckpointRef(id=number, step=last, time=now)


def _events(
    before: AgentTaskStatus, after: AgentTaskStatus, approvals: Mapping[str, ApprovalView]
) -> list[Event]:
    """The transitions between two statuses, as events."""
    events: list[Event] = []
    if before.plan is None and after.plan is not None:
        gated = sum(1 for s in after.plan if s.risk.requires_approval)
        events.append(
            Event(EventKind.planned, "Planned", f"{len(after.plan)} steps, {gated} need approval")
        )
    old = {s.id: s for s in before.steps}
    for step in after.steps:
        prev = old.get(step.id)
        if prev is not None and (prev.phase, prev.attempt) == (step.phase, step.attempt):
            continue
        events += _step_events(prev, step, approvals.get(step.id))
    if after.phase.terminal and not before.phase.terminal:
        kind = (
            EventKind.task_cancelled
            if after.phase == TaskPhase.cancelled
            else EventKind.task_finished
        )
        events.append(
            Event(
                kind,
                after.reason or after.phase.value,
                after.message or "",
                warning=after.phase != TaskPhase.succeeded,
            )
        )
    return events


def _step_events(
    prev: StepStatus | None, step: StepStatus, approval: ApprovalView | None
) -> list[Event]:
    sid, attempt, text = step.id, step.attempt, step.message or ""
    was = prev.phase if prev else StepPhase.pending
    events = []
    if (
        was == StepPhase.waiting_approval
        and step.phase != StepPhase.waiting_approval
        and approval is not None
    ):
        events.append(_approval_decided(approval))
    match step.phase:
        case StepPhase.waiting_approval if was != StepPhase.waiting_approval:
            events.append(Event(EventKind.approval_requested, "ApprovalRequested", text, sid))
        case StepPhase.running if (
            prev is None or prev.attempt != attempt or was != StepPhase.running
        ):
            events.append(
                Event(EventKind.step_started, "StepStarted", f"attempt {attempt}", sid, attempt)
            )
        case StepPhase.succeeded:
            events.append(Event(EventKind.step_finished, "StepSucceeded", text, sid, attempt))
        case StepPhase.skipped:
            events.append(
                Event(EventKind.step_finished, step.reason or "Skipped", text, sid, attempt)
            )
        case StepPhase.retrying if was != StepPhase.retrying:
            events.append(
                Event(
                    EventKind.step_retried,
                    step.reason or Reason.backing_off,
                    text,
                    sid,
                    attempt,
                    True,
                )
            )
        case StepPhase.failed:
            events.append(
                Event(EventKind.step_failed, step.reason or Reason.failed, text, sid, attempt, True)
            )
    return events
