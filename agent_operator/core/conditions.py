"""Status conditions as the Kubernetes API conventions define them."""

from __future__ import annotations

from datetime import datetime

from agent_operator.api import (
    AgentTask,
    AgentTaskStatus,
    Condition,
    ConditionStatus,
    StepPhase,
    TaskPhase,
)
from agent_operator.core.reasons import Reason

T, F, U = ConditionStatus.true, ConditionStatus.false, ConditionStatus.unknown


def set_condition(conditions: list[Condition], new: Condition) -> list[Condition]:
    """Replace the condition of the same type; keep lastTransitionTime if status did not change."""
    old = next((c for c in conditions if c.type == new.type), None)
    if old is not None and old.status == new.status:
        new = new.model_copy(update={"last_transition_time": old.last_transition_time})
    return [c for c in conditions if c.type != new.type] + [new]


def pool_conditions(
    problems: list[str],
    conditions: list[Condition],
    generation: int | None,
    now: datetime,
    reason: Reason | None = None,
) -> list[Condition]:
    """An AgentPool's Ready condition: False, naming each problem (by default: rules that
    do not compile, for which the plans of its tasks are refused), else True."""
    ready = Condition(
        type="Ready",
        status=F if problems else T,
        reason=(reason or Reason.invalid_rules) if problems else Reason.rules_valid,
        message="; ".join(problems) or "every safety rule compiles",
        last_transition_time=now,
        observed_generation=generation,
    )
    return set_condition(conditions, ready)


def server_conditions(
    problem: tuple[Reason, str] | None,
    conditions: list[Condition],
    generation: int | None,
    now: datetime,
    tools: int,
) -> list[Condition]:
    """An MCPServer's Ready condition: False with why the tools could not be listed (the
    last list stays in use meanwhile), else True."""
    reason, message = problem or (Reason.tools_listed, f"{tools} tools listed")
    ready = Condition(
        type="Ready",
        status=F if problem else T,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )
    return set_condition(conditions, ready)


def task_conditions(status: AgentTaskStatus, task: AgentTask, now: datetime) -> list[Condition]:
    """Planned, Approved, Progressing and Ready, derived from the status."""
    gen = task.metadata.generation
    phase = status.phase

    def cond(kind: str, state: ConditionStatus, reason: str, message: str = "") -> Condition:
        return Condition(
            type=kind,
            status=state,
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=gen,
        )

    if status.plan is not None:
        planned = cond("Planned", T, "Planned", f"{len(status.plan)} steps")
    elif phase == TaskPhase.failed:
        planned = cond("Planned", F, status.reason or Reason.planning_failed, status.message or "")
    else:
        planned = cond("Planned", U, "Planning", "waiting for a plan")

    waiting = [s.id for s in status.steps if s.phase == StepPhase.waiting_approval]
    rejected = [
        s.id
        for s in status.steps
        if s.reason in (Reason.approval_rejected, Reason.approval_expired)
    ]
    if waiting:
        approved = cond(
            "Approved", F, Reason.waiting_for_approval, "waiting: " + ", ".join(waiting)
        )
    elif rejected:
        approved = cond(
            "Approved", F, Reason.approval_rejected, "not approved: " + ", ".join(rejected)
        )
    else:
        approved = cond("Approved", T, "NoApprovalPending", "no step waits for approval")

    if phase.terminal:
        progressing = cond("Progressing", F, status.reason or phase.value, status.message or "")
    elif status.reason == Reason.suspended:
        progressing = cond("Progressing", F, Reason.suspended, status.message or "")
    else:
        progressing = cond("Progressing", T, status.reason or phase.value, status.message or "")

    if phase == TaskPhase.succeeded:
        ready = cond("Ready", T, Reason.succeeded, status.message or "")
    else:
        ready = cond("Ready", F, status.reason or phase.value, status.message or "")

    conditions = list(status.conditions)
    for new in (planned, approved, progressing, ready):
        conditions = set_condition(conditions, new)
    return conditions
