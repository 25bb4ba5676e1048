"""core/notify.due(): which notices a decision makes, what they say, and when the next."""

from __future__ import annotations

from datetime import datetime, timedelta

from agent_operator.api import AgentPoolSpec, ApprovalPhase
from agent_operator.core.decide import Decision
from agent_operator.core.notify import (
    DEFAULT_CHANNEL,
    Notice,
    NoticeKind,
    NotifyPolicy,
    due,
    policy_for,
)
from agent_operator.redact import REDACTED

from .sim import T0, World, make_task

SECRET = "s3cr3t-value-1234"
POLICY = NotifyPolicy(DEFAULT_CHANNEL, remind_every=timedelta(minutes=10))


def risky(**safety: object) -> World:
    task = make_task(
        {
            "steps": [
                {
                    "id": "drop",
                    "tool": "fail",
                    "params": {"message": f"drop table users; password={SECRET}"},
                    "rationale": "the table is obsolete",
                },
                {"id": "after", "tool": "noop"},
            ],
            "safety": {"requireApprovalFor": ["fail"], "approvalTimeoutSeconds": 3600, **safety},
        }
    )
    task.metadata.namespace = "team-a"
    return World(task)


def step(w: World, policy: NotifyPolicy = POLICY) -> tuple[Decision, list[Notice], datetime | None]:
    """One decision and the notices it makes, as the driver computes them."""
    before, approvals = w.task, dict(w.approvals)
    decision = w.step()
    notices, wake = due(before, decision, approvals, policy, w.now)
    return decision, notices, wake


def test_an_approval_request_says_what_why_the_risk_and_how_to_answer() -> None:
    w = risky()
    _, notices, wake = step(w)
    [notice] = notices
    assert (notice.key, notice.kind, notice.escalation) == (
        "requested/drop",
        NoticeKind.approval_requested,
        False,
    )
    assert "team-a/t step drop" in notice.title
    body = notice.body
    assert "tool fail" in body and "drop table users" in body
    assert "the table is obsolete" in body  # the rationale
    assert "Risk: " in body
    assert "kubectl agent approve t drop -n team-a" in body
    assert "kubectl agent reject t drop -n team-a" in body
    assert SECRET not in body and f"password={REDACTED}" in body
    assert wake == T0 + timedelta(minutes=10)  # the first reminder


def test_reminders_come_every_interval_only_the_latest_and_stop_once_decided() -> None:
    w = risky()
    step(w)
    w.advance(5 * 60)
    _, notices, wake = step(w)
    assert notices == [] and wake == T0 + timedelta(minutes=10)
    w.advance(5 * 60)
    _, notices, wake = step(w)
    assert [n.key for n in notices] == ["reminder/drop/1"]
    assert notices[0].kind == NoticeKind.approval_reminder
    assert "has waited 10 min" in notices[0].body
    assert "kubectl agent approve t drop -n team-a" in notices[0].body
    assert wake == T0 + timedelta(minutes=20)
    w.advance(35 * 60)  # the operator was down: reminders 2 and 3 are not made up for
    _, notices, _ = step(w)
    assert [n.key for n in notices] == ["reminder/drop/4"]
    w.decide_approval("drop", ApprovalPhase.approved)
    w.advance(10 * 60)
    _, notices, _ = step(w)
    assert notices == []


def test_no_reminder_is_planned_past_the_expiry() -> None:
    w = risky(approvalTimeoutSeconds=900)
    step(w)
    w.advance(10 * 60)
    _, notices, wake = step(w)
    assert [n.key for n in notices] == ["reminder/drop/1"]
    assert wake is None  # the next would come after the expiry, which decide() wakes for


def test_escalation_goes_once_to_the_escalation_urls() -> None:
    policy = NotifyPolicy(DEFAULT_CHANNEL, escalate_after=timedelta(minutes=30))
    w = risky()
    _, _, wake = step(w, policy)
    assert wake == T0 + timedelta(minutes=30)
    w.advance(30 * 60)
    _, notices, wake = step(w, policy)
    [escalated] = notices
    assert (escalated.key, escalated.kind, escalated.escalation) == (
        "escalated/drop",
        NoticeKind.approval_escalated,
        True,
    )
    assert wake is None
    w.advance(60)
    _, again, _ = step(w, policy)
    assert [n.key for n in again] == ["escalated/drop"]  # same key: the outbox keeps one


def test_an_expired_request_is_told_once() -> None:
    policy = NotifyPolicy(DEFAULT_CHANNEL)
    w = risky(approvalTimeoutSeconds=60)
    step(w, policy)
    w.advance(60)
    _, notices, _ = step(w, policy)
    assert [(n.key, n.kind) for n in notices] == [("expired/drop", NoticeKind.approval_expired)]
    assert "ApprovalExpired" in notices[0].body


def test_task_ends_are_told_only_when_asked_for() -> None:
    for finished, expected in ((False, []), (True, [("finished", NoticeKind.task_succeeded)])):
        policy = NotifyPolicy(DEFAULT_CHANNEL, task_finished=finished)
        w = World(make_task({"steps": [{"id": "a", "tool": "noop"}]}))
        step(w, policy)
        w.finish("a")
        _, notices, _ = step(w, policy)
        assert [(n.key, n.kind) for n in notices] == expected
    w = risky()
    step(w)
    w.decide_approval("drop", ApprovalPhase.rejected)
    _, notices, _ = step(w, NotifyPolicy(DEFAULT_CHANNEL, task_finished=True))
    assert [n.kind for n in notices] == [NoticeKind.task_failed]
    assert "ApprovalRejected" in notices[0].body


def test_a_pool_with_channels_of_its_own_replaces_the_defaults() -> None:
    defaults = NotifyPolicy(DEFAULT_CHANNEL, remind_every=timedelta(minutes=5))
    assert policy_for("team-a", AgentPoolSpec(), defaults) is defaults
    assert policy_for("team-a", AgentPoolSpec(), None) is None
    pool = AgentPoolSpec.model_validate(
        {"notifications": {"secretName": "pagers", "escalateAfterSeconds": 600}}
    )
    assert policy_for("team-a", pool, defaults) == NotifyPolicy(
        "secret:team-a/pagers", escalate_after=timedelta(minutes=10)
    )
