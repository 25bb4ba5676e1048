"""What to tell people, and when: the notices a decision gives rise to.

A notice is written to the store's outbox in the same transaction as the decision that
made it (keyed, so making it again is a no-op), and delivered from there, with retries,
by `agent_operator/notifier.py`. So a notice is never lost to a restart and, once
delivered, never sent again. Reminders and escalation depend on the time alone: the
decision's `requeue_at` wakes the task when the next one is due, and a notice missed
while the operator was down is not made up for (only the latest reminder is sent).
The text carries no secret: params are redacted by key, as in the ApprovalRequest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from agent_operator.api import (
    AgentPoolSpec,
    AgentTask,
    AgentTaskStatus,
    ApprovalPhase,
    PlannedStep,
    StepPhase,
    TaskPhase,
)
from agent_operator.core.decide import ApprovalView, Decision, RequestApproval
from agent_operator.core.reasons import Reason
from agent_operator.redact import redact

__all__ = [
    "DEFAULT_CHANNEL",
    "ESCALATION_KEY",
    "MAX_BODY_CHARS",
    "URLS_KEY",
    "Notice",
    "NoticeKind",
    "NotifyPolicy",
    "due",
    "make_policy",
    "policy_for",
    "secret_channel",
]

DEFAULT_CHANNEL = "default"  # the operator's own channels (the chart's values)
URLS_KEY = "urls"  # the key of a channel's Secret (or file) every notice goes to
ESCALATION_KEY = "escalationUrls"  # and the one escalations go to
MAX_BODY_CHARS = 4000  # what every service takes (Slack and Teams allow more)
_MAX_VALUE_CHARS = 200
_MAX_PARAMS = 20


class NoticeKind(StrEnum):
    approval_requested = "ApprovalRequested"
    approval_reminder = "ApprovalReminder"
    approval_escalated = "ApprovalEscalated"
    approval_expired = "ApprovalExpired"
    task_succeeded = "TaskSucceeded"
    task_failed = "TaskFailed"


@dataclass(frozen=True)
class NotifyPolicy:
    """Where a task's notices go and which are sent. `channel` names a set of Apprise
    URLs (never the URLs: they are secrets): `default` or `secret:<namespace>/<name>`."""

    channel: str = DEFAULT_CHANNEL
    remind_every: timedelta | None = None
    escalate_after: timedelta | None = None
    task_finished: bool = False


@dataclass(frozen=True)
class Notice:
    """One message to deliver; `key` is unique within its task."""

    key: str
    kind: NoticeKind
    channel: str
    escalation: bool  # to the channel's escalation URLs
    title: str
    body: str


def secret_channel(namespace: str, name: str) -> str:
    return f"secret:{namespace}/{name}"


def policy_for(
    namespace: str, pool: AgentPoolSpec, defaults: NotifyPolicy | None
) -> NotifyPolicy | None:
    """A pool with `spec.notifications` uses it instead of the operator's defaults."""
    settings = pool.notifications
    if settings is None:
        return defaults
    return make_policy(
        secret_channel(namespace, settings.secret_name),
        remind_every_seconds=settings.remind_every_seconds,
        escalate_after_seconds=settings.escalate_after_seconds,
        task_finished=settings.task_finished,
    )


def make_policy(
    channel: str, *, remind_every_seconds: int, escalate_after_seconds: int, task_finished: bool
) -> NotifyPolicy:
    """A policy from settings in seconds, where 0 turns reminders or escalation off."""
    return NotifyPolicy(
        channel,
        remind_every=timedelta(seconds=remind_every_seconds) if remind_every_seconds else None,
        escalate_after=(
            timedelta(seconds=escalate_after_seconds) if escalate_after_seconds else None
        ),
        task_finished=task_finished,
    )


def due(
    task: AgentTask,
    decision: Decision,
    approvals: Mapping[str, ApprovalView],
    policy: NotifyPolicy,
    now: datetime,
) -> tuple[list[Notice], datetime | None]:
    """The notices a decision makes (by the approvals it asks for, the approvals that
    wait, the steps and the task it ends), and when the next time-bound one falls due."""
    before, status = task.status, decision.status
    requested = [a for a in decision.actions if isinstance(a, RequestApproval)]
    plan = {s.id: s for s in status.plan or []}
    notices = [_requested(task, r, plan.get(r.step_id), policy) for r in requested]
    wakes: list[datetime] = []
    if policy.remind_every is not None or policy.escalate_after is not None:
        for step in status.steps:
            approval = approvals.get(step.id)
            if step.phase != StepPhase.waiting_approval or approval is None:
                continue
            if approval.phase != ApprovalPhase.pending or approval.requested_at is None:
                continue
            made, wake = _waiting(task, approval, plan.get(step.id), policy, now)
            notices += made
            wakes += wake
    if requested:  # asked now: the first reminder counts from now
        wakes += [now + d for d in (policy.remind_every, policy.escalate_after) if d is not None]
    was = {s.id: s.reason for s in before.steps}
    for step in status.steps:
        if step.reason == Reason.approval_expired and was.get(step.id) != step.reason:
            notices.append(_expired(task, step.id, step.message, policy))
    ended = status.phase in (TaskPhase.succeeded, TaskPhase.failed)
    if ended and not before.phase.terminal and policy.task_finished:
        notices.append(_finished(task, status, policy))
    return notices, min(wakes, default=None)


def _waiting(
    task: AgentTask,
    approval: ApprovalView,
    step: PlannedStep | None,
    policy: NotifyPolicy,
    now: datetime,
) -> tuple[list[Notice], list[datetime]]:
    """The reminder and escalation due for one waiting approval, and when the next is."""
    assert approval.requested_at is not None
    since = approval.requested_at
    waited = now - since
    notices: list[Notice] = []
    wakes: list[datetime] = []
    every = policy.remind_every
    if every is not None:
        count = int(waited / every)
        if count >= 1:  # only the latest: reminders missed while down are not made up for
            notices.append(
                _notice(
                    task,
                    f"reminder/{approval.step_id}/{count}",
                    NoticeKind.approval_reminder,
                    policy,
                    f"Still waiting for approval: {_where(task, approval.step_id)}",
                    _waiting_body(task, approval, step, waited),
                )
            )
        wakes.append(since + every * (count + 1))
    after = policy.escalate_after
    if after is not None:
        if waited >= after:
            notices.append(
                _notice(
                    task,
                    f"escalated/{approval.step_id}",
                    NoticeKind.approval_escalated,
                    policy,
                    f"Escalated: no decision for {_duration(waited)} on "
                    f"{_where(task, approval.step_id)}",
                    _waiting_body(task, approval, step, waited),
                    escalation=True,
                )
            )
        else:
            wakes.append(since + after)
    return notices, [w for w in wakes if w < approval.expires_at]


def _requested(
    task: AgentTask, request: RequestApproval, step: PlannedStep | None, policy: NotifyPolicy
) -> Notice:
    risk = request.risk
    lines = [
        f"Step {request.step_id} of AgentTask {_task(task)} waits for a person's approval "
        f"to run the tool {request.tool}.",
        f"Risk: {risk.level}.",
    ]
    if risk.risks:
        lines.append("Risks: " + "; ".join(risk.risks) + ".")
    if risk.mitigations:
        lines.append("Mitigations: " + "; ".join(risk.mitigations) + ".")
    if step is not None and step.rationale:
        lines.append(f"Why this step: {step.rationale}")
    params = _params(request.params)
    if params:
        lines += ["Params:", *params]
    lines += [
        f"Expires: {request.expires_at:%Y-%m-%d %H:%M:%S} UTC "
        "(then the step fails as ApprovalExpired).",
        *_commands(task, request.step_id),
    ]
    return _notice(
        task,
        f"requested/{request.step_id}",
        NoticeKind.approval_requested,
        policy,
        f"Approval needed ({risk.level} risk): {_where(task, request.step_id)}",
        "\n".join(lines),
    )


def _waiting_body(
    task: AgentTask, approval: ApprovalView, step: PlannedStep | None, waited: timedelta
) -> str:
    what = f" to run the tool {step.tool} ({step.risk.level} risk)" if step is not None else ""
    return "\n".join(
        [
            f"Step {approval.step_id} of AgentTask {_task(task)} has waited "
            f"{_duration(waited)} for approval{what}.",
            f"Expires: {approval.expires_at:%Y-%m-%d %H:%M:%S} UTC.",
            f"See it: kubectl agent get {task.metadata.name} -n {_namespace(task)}",
            *_commands(task, approval.step_id),
        ]
    )


def _expired(task: AgentTask, step_id: str, message: str | None, policy: NotifyPolicy) -> Notice:
    why = f" ({message})" if message else ""
    return _notice(
        task,
        f"expired/{step_id}",
        NoticeKind.approval_expired,
        policy,
        f"Approval expired: {_where(task, step_id)}",
        f"Nobody decided on step {step_id} of AgentTask {_task(task)} in time{why}; "
        "the step failed as ApprovalExpired.",
    )


def _finished(task: AgentTask, status: AgentTaskStatus, policy: NotifyPolicy) -> Notice:
    succeeded = status.phase == TaskPhase.succeeded
    kind = NoticeKind.task_succeeded if succeeded else NoticeKind.task_failed
    done = sum(1 for s in status.steps if s.phase == StepPhase.succeeded)
    lines = [
        f"AgentTask {_task(task)} {status.phase.value.lower()}: "
        f"{status.reason or status.phase.value}. {status.message or ''}".rstrip(),
        f"Steps succeeded: {done}/{len(status.plan or [])}.",
        f"See it: kubectl agent get {task.metadata.name} -n {_namespace(task)}",
    ]
    return _notice(
        task,
        "finished",
        kind,
        policy,
        f"Task {status.phase.value.lower()}: {_task(task)}",
        "\n".join(lines),
    )


def _notice(
    task: AgentTask,
    key: str,
    kind: NoticeKind,
    policy: NotifyPolicy,
    title: str,
    body: str,
    *,
    escalation: bool = False,
) -> Notice:
    if len(body) > MAX_BODY_CHARS:
        body = body[: MAX_BODY_CHARS - 1] + "…"
    return Notice(key, kind, policy.channel, escalation, title, body)


def _commands(task: AgentTask, step_id: str) -> list[str]:
    where = f"{task.metadata.name} {step_id} -n {_namespace(task)}"
    return [
        f"Approve: kubectl agent approve {where}",
        f"Reject:  kubectl agent reject {where} --reason '...'",
    ]


def _params(params: Mapping[str, Any]) -> list[str]:
    """One line per param, redacted by key as the ApprovalRequest's, long values cut."""
    shown = redact(dict(params))
    lines = []
    for key in sorted(shown)[:_MAX_PARAMS]:
        value = shown[key]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > _MAX_VALUE_CHARS:
            text = text[: _MAX_VALUE_CHARS - 1] + "…"
        lines.append(f"  {key}: {text}")
    if len(shown) > _MAX_PARAMS:
        lines.append(f"  ... and {len(shown) - _MAX_PARAMS} more")
    return lines


def _where(task: AgentTask, step_id: str) -> str:
    return f"{_task(task)} step {step_id}"


def _task(task: AgentTask) -> str:
    return f"{_namespace(task)}/{task.metadata.name}"


def _namespace(task: AgentTask) -> str:
    return task.metadata.namespace or "default"


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
