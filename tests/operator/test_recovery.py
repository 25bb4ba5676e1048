"""Recovery: loops backing off for an outage are roused once a probe finds it over."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from agent_operator.kube.reconciler import Recovery, Wakers
from tests.operator.harness import eventually


class Roused:
    """Stands in for the Wakers: records whom Recovery rouses."""

    def __init__(self) -> None:
        self.uids: list[str] = []
        self.lock = threading.Lock()

    def rouse(self, uid: str) -> None:
        with self.lock:
            self.uids.append(uid)


class Outage:
    """A probe that fails while `down` is set."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.probes = 0

    def __call__(self) -> None:
        self.probes += 1
        if self.down.is_set():
            raise ConnectionError("refused")


def probing(recovery: Recovery) -> bool:
    """Whether a probe thread of `recovery` runs (named probe-<cause>-<its id>)."""
    mine = f"-{id(recovery):x}"
    return any(t.name.endswith(mine) and t.is_alive() for t in threading.enumerate())


@pytest.fixture
def outage() -> Outage:
    return Outage()


@pytest.fixture
def roused() -> Roused:
    return Roused()


@pytest.fixture
def recovery(outage: Outage, roused: Roused) -> Iterator[Recovery]:
    made = Recovery({"store": outage}, roused, interval=0.01)  # type: ignore[arg-type]
    yield made
    made.stop()


def test_the_loops_backing_off_are_roused_once_the_probe_succeeds(
    recovery: Recovery, outage: Outage, roused: Roused
) -> None:
    outage.down.set()
    recovery.backing_off("a", "store")
    recovery.backing_off("b", "store")
    eventually(lambda: outage.probes >= 3, what="probes while down")
    assert roused.uids == []
    outage.down.clear()
    eventually(lambda: sorted(roused.uids) == ["a", "b"], what="both roused")


def test_a_loop_is_roused_once_until_a_pass_of_it_goes_through(
    recovery: Recovery, outage: Outage, roused: Roused
) -> None:
    """The probe succeeds but the pass keeps failing (for its own reason): the loop waits
    its doubling delay out, instead of a pass per probe."""
    recovery.backing_off("a", "store")
    eventually(lambda: roused.uids == ["a"], what="roused")
    recovery.backing_off("a", "store")  # failed again: no probe for it, nothing to rouse
    eventually(lambda: not probing(recovery), what="no probe running")
    assert roused.uids == ["a"]
    recovery.forget("a")  # a pass went through; the next outage rouses it again
    recovery.backing_off("a", "store")
    eventually(lambda: roused.uids == ["a", "a"], what="roused again")


def test_a_loop_whose_pass_went_through_meanwhile_is_not_roused(
    recovery: Recovery, outage: Outage, roused: Roused
) -> None:
    outage.down.set()
    recovery.backing_off("a", "store")
    recovery.backing_off("b", "store")
    recovery.forget("a")  # its delay ran out and its next pass went through (or it ended)
    outage.down.clear()
    eventually(lambda: roused.uids == ["b"], what="b roused")
    assert "a" not in roused.uids


def test_a_cause_with_no_probe_rouses_nobody(recovery: Recovery, roused: Roused) -> None:
    recovery.backing_off("a", "unexpected")  # a defect: the loop waits its delay out
    recovery.backing_off("b", "store")
    eventually(lambda: roused.uids == ["b"], what="b roused")
    assert "a" not in roused.uids


def test_a_back_off_ends_when_roused_and_not_when_woken() -> None:
    """Wakes (a freed pool slot, a changed Job) do not cut a back-off short; a rouse does."""

    async def backing_off() -> None:
        wakers = Wakers()
        wakers.register("a")
        sleeping = asyncio.create_task(wakers.sleep("a", 30))
        await asyncio.sleep(0.05)
        wakers.wake("a")
        await asyncio.sleep(0.05)
        assert not sleeping.done()
        wakers.rouse("a")
        await asyncio.wait_for(sleeping, 5)

    asyncio.run(backing_off())


def test_the_probe_stops_once_nobody_waits(
    recovery: Recovery, outage: Outage, roused: Roused
) -> None:
    """A probe that never succeeds (a server that forbids it, say) does not run on for good
    once the loops that waited went through or ended."""
    outage.down.set()
    recovery.backing_off("a", "store")
    eventually(lambda: outage.probes >= 2, what="probes while down")
    recovery.forget("a")
    eventually(lambda: not probing(recovery), what="the probe to stop")
    assert roused.uids == []
    recovery.backing_off("b", "store")  # a new back-off probes again
    outage.down.clear()
    eventually(lambda: roused.uids == ["b"], what="b roused")
