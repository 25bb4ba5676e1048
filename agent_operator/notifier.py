"""Deliver the outbox's notices through Apprise, with retries, recorded in the store.

The driver writes a notice in the same transaction as the decision that made it
(`core/notify.py`); a `Deliverer` takes each due notice (a claim: one attempt counted,
the notice held a lease ahead, so two operator replicas never send it both), resolves
its channel to Apprise URLs at that moment (the URLs are secrets and never stored), and
records the outcome: delivered, or failed with the error and a retry time (doubling up
to `MAX_RETRY_DELAY`), or failed for good after `max_attempts`. A delivered notice is
never sent again, whatever restarts; a deliverer killed in the middle of a send sends it
again once the lease has passed (at least once, as any outbox). A channel of several
URLs is one delivery: if one of them fails, the retry goes to all of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import apprise

from agent_operator.redact import redact_text
from agent_operator.store import NoticeRecord, Store, StoreError

__all__ = [
    "MAX_RETRY_DELAY",
    "Deliverer",
    "DeliveryFailed",
    "Resolve",
    "Send",
    "apprise_send",
]

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = timedelta(minutes=10)


class DeliveryFailed(Exception):
    """A notice could not be delivered now; the message says why, without a secret."""


# The Apprise URLs of a channel (`core/notify.NotifyPolicy.channel`), its escalation URLs
# when the flag is set; raises DeliveryFailed when they cannot be had.
Resolve = Callable[[str, bool], str]
# Send a title and body to the URLs; raises DeliveryFailed.
Send = Callable[[str, str, str], None]


def apprise_send(urls: str, title: str, body: str) -> None:
    """One delivery to every URL; the services' own words when any of them fails."""
    sender = apprise.Apprise()
    if not sender.add(urls) or not len(sender):
        raise DeliveryFailed(
            "a notification URL is not one Apprise knows: check its scheme and form "
            "(https://github.com/caronc/apprise/wiki)"
        )
    result = sender.notify(body=body, title=title)
    if not result:
        said = [
            entry.asdict()["message"]
            for entry in result.logs()
            if entry.asdict().get("level") in ("WARNING", "ERROR")
        ]
        raise DeliveryFailed(redact_text("; ".join(said) or "the service did not accept it"))


@dataclass
class Deliverer:
    """Delivers due notices from the store, one round at a time or in a loop."""

    store: Callable[[], Store]
    resolve: Resolve
    send: Send = apprise_send
    max_attempts: int = 8
    retry_seconds: float = 5.0
    lease_seconds: float = 120.0
    idle_seconds: float = 60.0
    delivered: Callable[[NoticeRecord, bool], None] | None = None  # counts outcomes
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def deliver_due(self) -> datetime | None:
        """Deliver every notice due now; when the next one falls due (None: none)."""
        store = self.store()
        now = datetime.now(UTC)
        for notice in store.due_notices(now):
            if store.claim_notice(notice, now + timedelta(seconds=self.lease_seconds)):
                self._deliver(store, notice)
        return store.next_notice_at()

    def _deliver(self, store: Store, notice: NoticeRecord) -> None:
        attempt = notice.attempts + 1
        try:
            urls = self.resolve(notice.channel, notice.escalation)
            self.send(urls, notice.title, notice.body)
        except DeliveryFailed as error:
            retry_at = None
            if attempt < self.max_attempts:
                delay = timedelta(seconds=self.retry_seconds * 2 ** (attempt - 1))
                retry_at = datetime.now(UTC) + min(delay, MAX_RETRY_DELAY)
            store.notice_failed(notice, str(error), retry_at)
            log.warning(
                "notice %s of task %s, attempt %d, not delivered%s: %s",
                notice.key,
                notice.task_uid,
                attempt,
                "" if retry_at else "; giving up",
                error,
            )
            if self.delivered is not None:
                self.delivered(notice, False)
            return
        store.notice_delivered(notice)
        log.info("notice %s of task %s delivered", notice.key, notice.task_uid)
        if self.delivered is not None:
            self.delivered(notice, True)

    def start(self) -> None:
        """Deliver in a thread of its own until `stop()`."""
        self._thread = threading.Thread(target=self._loop, name="notices", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A notice was just put in the outbox: look now."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                next_at = self.deliver_due()
            except StoreError as error:  # unreachable: look again later
                log.warning("notices not delivered now: %s", error)
                next_at = datetime.now(UTC) + timedelta(seconds=self.retry_seconds)
            except Exception:  # a defect: logged whole, and delivery carries on
                log.exception("delivering notices failed")
                next_at = datetime.now(UTC) + timedelta(seconds=self.retry_seconds)
            wait = self.idle_seconds
            if next_at is not None:
                wait = min(max((next_at - datetime.now(UTC)).total_seconds(), 0.0), wait)
            if wait > 0:
                self._wake.wait(wait)
