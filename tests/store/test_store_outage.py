"""A database that is down or silent gives `StoreUnavailable` quickly; the store recovers."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import make_url

from agent_operator.store import Store, StoreUnavailable
from tests.support.relay import Relay

PASSWORD = "hunter2-s3cr3t"
UID = "6f1c2d3e-0000-4000-8000-000000000002"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.timeout(60)
def test_a_refused_connection_is_unavailable_without_the_password() -> None:
    dsn = f"postgresql://agent:{PASSWORD}@127.0.0.1:{closed_port()}/agents"
    with pytest.raises(StoreUnavailable) as raised:
        Store.open(dsn)
    assert PASSWORD not in str(raised.value)
    assert "unavailable" in str(raised.value)


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_times_out() -> None:
    # The kernel completes the TCP handshake for the backlog; nobody ever replies.
    with socket.create_server(("127.0.0.1", 0), backlog=4) as silent:
        port = silent.getsockname()[1]
        with pytest.raises(StoreUnavailable, match="timeout"):
            Store.open(f"postgresql://agent:{PASSWORD}@127.0.0.1:{port}/agents", connect_timeout=2)


@pytest.mark.store
@pytest.mark.timeout(120)
def test_an_outage_is_unavailable_then_the_same_store_carries_on(
    relay: Relay, postgres_store_dsn: str
) -> None:
    dsn = make_url(postgres_store_dsn).set(host="127.0.0.1", port=relay.port)
    with Store.open(dsn.render_as_string(hide_password=False)) as store:
        store.upsert_task(UID, namespace="ns", name="demo", phase="Running")
        store.record_attempt(UID, "a", 1, phase="Running")

        relay.cut()
        with pytest.raises(StoreUnavailable):
            store.record_attempt(UID, "a", 1, phase="Succeeded")
        with pytest.raises(StoreUnavailable):
            store.attempts(UID)

        relay.restore()
        assert store.record_attempt(UID, "a", 1, phase="Succeeded")
        assert [a.phase for a in store.attempts(UID)] == ["Succeeded"]
