"""Delivering the outbox through Apprise to a real HTTP receiver (Apprise's JSON webhook):
once, retried with backoff, recorded, never again after a restart, no secret told."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent_operator.core.notify import DEFAULT_CHANNEL, Notice, NoticeKind
from agent_operator.notifier import Deliverer, DeliveryFailed
from agent_operator.store import NoticeState, Store
from tests.support.webhook import Webhook

UID = "uid-1"
SECRET = "hunter2-notify-secret"
NOTICE = Notice(
    "requested/drop",
    NoticeKind.approval_requested,
    DEFAULT_CHANNEL,
    False,
    "Approval needed (high risk): team-a/t step drop",
    "Approve: kubectl agent approve t drop -n team-a",
)


@pytest.fixture
def outbox(store: Store) -> Store:
    store.upsert_task(UID, namespace="team-a", name="t", phase="WaitingApproval")
    assert store.enqueue_notice(UID, NOTICE)
    assert not store.enqueue_notice(UID, NOTICE)  # made again by a retried pass: one row
    return store


def deliverer(store: Store, urls: dict[bool, str], **kwargs: float) -> Deliverer:
    def resolve(channel: str, escalation: bool) -> str:
        assert channel == DEFAULT_CHANNEL
        return urls[escalation]

    return Deliverer(lambda: store, resolve, **kwargs)  # type: ignore[arg-type]


def test_a_notice_is_delivered_once_and_never_again_after_a_restart(
    outbox: Store, webhook: Webhook
) -> None:
    assert deliverer(outbox, {False: webhook.url()}).deliver_due() is None
    [posted] = webhook.wait_for(1)
    assert posted["title"] == NOTICE.title
    assert posted["message"] == NOTICE.body
    assert posted["path"] == "/hook"
    [row] = outbox.notices(UID)
    assert (row.state, row.attempts, row.last_error) == (NoticeState.delivered, 1, None)
    assert row.delivered_at is not None
    deliverer(outbox, {False: webhook.url()}).deliver_due()  # a restarted operator's
    assert len(webhook.received) == 1


def test_a_refused_delivery_is_retried_with_backoff_and_recorded(
    outbox: Store, webhook: Webhook
) -> None:
    webhook.fail_next(2)
    sender = deliverer(outbox, {False: webhook.url()}, retry_seconds=30)
    before = datetime.now(UTC)
    next_at = sender.deliver_due()
    [row] = outbox.notices(UID)
    assert (row.state, row.attempts) == (NoticeState.pending, 1)
    assert row.last_error is not None and "error=500" in row.last_error
    assert next_at is not None and before + timedelta(seconds=29) <= next_at
    assert next_at <= datetime.now(UTC) + timedelta(seconds=30)
    assert sender.deliver_due() == next_at  # not due yet: nothing sent
    assert webhook.refused == 1


def test_a_delivery_is_made_again_until_the_service_takes_it(
    outbox: Store, webhook: Webhook
) -> None:
    webhook.fail_next(2)
    sender = deliverer(outbox, {False: webhook.url()}, retry_seconds=0)  # due again at once
    sender.deliver_due()
    assert outbox.notices(UID)[0].attempts == 1
    sender.deliver_due()
    sender.deliver_due()
    webhook.wait_for(1)
    [row] = outbox.notices(UID)
    assert (row.state, row.attempts, row.last_error) == (NoticeState.delivered, 3, None)
    assert webhook.refused == 2


def test_after_the_last_attempt_it_fails_for_good_with_the_reason_and_no_secret(
    outbox: Store, webhook: Webhook
) -> None:
    webhook.fail_next(10)
    url = webhook.url(userinfo=f"bot:{SECRET}")
    sender = deliverer(outbox, {False: url}, retry_seconds=0, max_attempts=3)
    for _ in range(5):
        sender.deliver_due()
    [row] = outbox.notices(UID)
    assert (row.state, row.attempts, row.next_attempt_at) == (NoticeState.failed, 3, None)
    assert webhook.refused == 3
    assert row.last_error and SECRET not in row.last_error
    assert outbox.next_notice_at() is None


def test_an_unknown_url_is_a_clear_error_and_nothing_is_sent(
    outbox: Store, webhook: Webhook
) -> None:
    sender = deliverer(outbox, {False: f"{webhook.url()} nosuchscheme://{SECRET}@x"})
    sender.deliver_due()
    [row] = outbox.notices(UID)
    assert row.state == NoticeState.pending
    assert row.last_error and "not one Apprise knows" in row.last_error
    assert SECRET not in row.last_error
    assert webhook.received == []


def test_an_escalation_goes_to_the_escalation_urls(store: Store, webhook: Webhook) -> None:
    store.upsert_task(UID, namespace="team-a", name="t", phase="WaitingApproval")
    escalated = Notice(
        "escalated/drop", NoticeKind.approval_escalated, DEFAULT_CHANNEL, True, "up", "body"
    )
    store.enqueue_notice(UID, escalated)
    deliverer(store, {False: webhook.url("approvers"), True: webhook.url("oncall")}).deliver_due()
    assert [p["path"] for p in webhook.wait_for(1)] == ["/oncall"]


def test_a_channel_that_cannot_be_resolved_is_recorded_and_retried(outbox: Store) -> None:
    def missing(channel: str, escalation: bool) -> str:
        raise DeliveryFailed("Secret team-a/pagers or its key 'urls' does not exist")

    Deliverer(lambda: outbox, missing, retry_seconds=1).deliver_due()
    [row] = outbox.notices(UID)
    assert row.state == NoticeState.pending and row.next_attempt_at is not None
    assert row.last_error == "Secret team-a/pagers or its key 'urls' does not exist"


def test_two_deliverers_never_both_take_a_notice(outbox: Store) -> None:
    [due] = outbox.due_notices(datetime.now(UTC))
    lease = datetime.now(UTC) + timedelta(minutes=2)
    assert outbox.claim_notice(due, lease)
    assert not outbox.claim_notice(due, lease)
    assert outbox.due_notices(datetime.now(UTC)) == []  # held until the lease ends
    assert outbox.due_notices(lease + timedelta(seconds=1))[0].attempts == 1
