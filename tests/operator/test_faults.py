"""Faults the operator must survive, injected with kmock's reactions and the emulator's
watch streams: 409 on create, 410 Gone on a watch, 500s, dropped watches, a store outage.

Each test still drives a task to its end and checks that no step ran twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import kopf
import pytest
from kmock import Request, action, subresource
from prometheus_client import REGISTRY
from sqlalchemy import make_url

from agent_operator.api import AgentPool, AgentTask
from agent_operator.core.decide import StartStep
from agent_operator.core.naming import job_name
from agent_operator.kube.manifests import step_job
from agent_operator.kube.reconciler import OperatorContext
from agent_operator.kube.settings import OperatorSettings
from agent_operator.store import Store
from tests.support.relay import Relay

from .harness import (
    EXPIRED,
    JOBS,
    NS,
    TASKS,
    Emulated,
    agent_task,
    conditions,
    eventually,
    one_job_per_step,
    pool,
    running_operator,
    step_jobs,
    succeeded,
    task_status,
    wait_job,
    wait_phase,
)

CHAIN = {
    "steps": [
        {"id": "one", "tool": "noop", "params": {"outputs": {"n": 1}}},
        {"id": "two", "tool": "noop", "params": {"outputs": {"m": "${steps.one.outputs.n}"}}},
    ]
}


def context(memo: kopf.Memo) -> OperatorContext:
    ctx: OperatorContext = eventually(lambda: memo.get("ctx"), what="the operator's context")
    return ctx


def run_chain(cluster: Emulated, name: str) -> dict[str, Any]:
    """Play both steps of CHAIN to the end; the final status."""
    cluster.finish_job(wait_job(cluster, "one", task=name), succeeded({"n": 1}))
    cluster.finish_job(wait_job(cluster, "two", task=name), succeeded({"m": 1}))
    return wait_phase(cluster, name, "Succeeded")


def api_errors(operation: str = "kubernetes") -> float:
    value = REGISTRY.get_sample_value("agent_operator_api_errors_total", {"operation": operation})
    return value or 0.0


# --- 409 ----------------------------------------------------------------------------------


def test_a_job_that_already_exists_is_adopted_not_duplicated(
    cluster: Emulated, settings: OperatorSettings
) -> None:
    # The Job the operator is about to create is there already, and the operator's cache
    # has not seen it (a lagging watch, an earlier call that timed out but went through):
    # creating it answers 409 Conflict.
    name = job_name("adopt", "uid-adopt", "one", 1)
    labels = {
        "app.kubernetes.io/managed-by": "agent-operator",
        "agentoperator.io/task": "adopt",
        "agentoperator.io/task-uid": "uid-adopt",
        "agentoperator.io/step": "one",
        "agentoperator.io/attempt": "1",
        "agentoperator.io/pool": "default",
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": labels,
            "annotations": {"test/made-by": "the earlier attempt"},
        },
        "spec": {"template": {"metadata": {"labels": labels}, "spec": {"containers": []}}},
    }
    with running_operator(settings):
        # Once the operator has listed Jobs and its watch follows changes, the Job appears
        # without the watch being told.
        eventually(lambda: cluster.watching(JOBS) >= 1, what="the Job watch")
        cluster.store_silently(JOBS, job)
        cluster.create("agenttasks", agent_task("adopt", CHAIN))
        eventually(lambda: name in cluster.job_creations(), what="the operator to create the Job")
        eventually(
            lambda: task_status(cluster, "adopt").get("steps", [{}])[0].get("phase") == "Running",
            what="step one Running",
        )
        [adopted] = step_jobs(cluster, "one")
        assert adopted["metadata"]["annotations"] == {"test/made-by": "the earlier attempt"}
        final = run_chain(cluster, "adopt")

    assert final["outputs"] == {"two": {"m": 1}}
    assert {j["metadata"]["name"] for j in cluster.jobs()} == {
        name,
        job_name("adopt", "uid-adopt", "two", 1),
    }
    one_job_per_step(cluster)


# --- 410 Gone -----------------------------------------------------------------------------


def test_an_expired_job_watch_is_listed_again_and_the_task_finishes(
    cluster: Emulated, settings: OperatorSettings
) -> None:
    # The first watch of Jobs is refused outright with 410 Gone.
    refused = cluster.emulator[action.WATCH, JOBS][:1] << 410
    with running_operator(settings) as memo:
        ctx = context(memo)
        eventually(lambda: len(refused) == 1, what="the first watch of Jobs refused")
        relists = eventually(lambda: ctx.jobs.relists >= 2 and ctx.jobs.relists, what="a relist")

        cluster.create("agenttasks", agent_task("gone", CHAIN))
        first = wait_job(cluster, "one", task="gone")
        # A watch that is running is told its resourceVersion expired (an ERROR event).
        eventually(lambda: cluster.watching(JOBS) >= 1, what="the Job watch")
        watches = cluster.watches(JOBS)
        cluster.send_watch_event(JOBS, {"type": "ERROR", "object": EXPIRED})
        eventually(lambda: ctx.jobs.relists > relists, what="a relist after the ERROR event")
        eventually(lambda: cluster.watches(JOBS) > watches, what="a new watch")
        cluster.finish_job(first, succeeded({"n": 1}))
        cluster.finish_job(wait_job(cluster, "two", task="gone"), succeeded({"m": 1}))
        wait_phase(cluster, "gone", "Succeeded")
    one_job_per_step(cluster)
    assert len(cluster.jobs_made()) == 2


# --- 500 ----------------------------------------------------------------------------------


def test_server_errors_on_status_patches_and_job_creation_are_retried(
    cluster: Emulated, settings: OperatorSettings
) -> None:
    # kmock answers these after the emulator has made the change: the write went through and
    # its reply was lost. Only the operator's own writes fail (the kubernetes client's, not
    # Kopf's): three status patches, and the first Job creation (made again, it meets 409).
    def by_operator(request: Request) -> bool:
        return "OpenAPI-Generator" in request.headers.get("User-Agent", "")

    emulator = cluster.emulator
    patches = emulator["patch", TASKS, subresource("status")][by_operator][:3] << 500
    creates = emulator[action.CREATE, JOBS][by_operator][:1] << 500
    errors = api_errors()

    with running_operator(settings):
        cluster.create("agenttasks", agent_task("bumpy", CHAIN))
        final = run_chain(cluster, "bumpy")

    assert final["outputs"] == {"two": {"m": 1}}
    # A pass after a failed patch finds the change made already, so it may not patch again.
    assert len(patches) >= 2 and len(creates) == 1
    # Each one counted, none fatal to the task's loop.
    assert api_errors() >= errors + len(patches) + len(creates)
    one_job_per_step(cluster)
    assert len(cluster.jobs()) == 2


def test_writes_the_server_failed_are_made_again(
    cluster: Emulated, settings: OperatorSettings
) -> None:
    # This time nothing is written: the server fails the request before making the change.
    def operator_job(request: Request) -> bool:
        return request.resource == JOBS and request.action == action.CREATE

    def success_patch(request: Request) -> bool:
        body = request.data if isinstance(request.data, dict) else {}
        status = body.get("status") or {}
        return request.resource == TASKS and status.get("phase") == "Succeeded"

    refused_jobs = cluster.refuse(operator_job, 500, times=2)
    refused_patches = cluster.refuse(success_patch, 503, times=2)

    with running_operator(settings):
        cluster.create("agenttasks", agent_task("stubborn", CHAIN))
        final = run_chain(cluster, "stubborn")

    assert final["outputs"] == {"two": {"m": 1}}
    assert len(refused_jobs) == 2 and len(refused_patches) == 2
    assert all(r.subresource == "status" for r in refused_patches)
    one_job_per_step(cluster)
    assert len(cluster.jobs()) == 2


# --- dropped watches ------------------------------------------------------------------------


def test_a_dropped_job_watch_resumes_and_events_still_arrive(
    cluster: Emulated, settings: OperatorSettings
) -> None:
    with running_operator(settings) as memo:
        ctx = context(memo)
        cluster.create("agenttasks", agent_task("cut", CHAIN))
        first = wait_job(cluster, "one", task="cut")
        eventually(lambda: cluster.watching(JOBS) >= 1, what="the Job watch")
        relists, watches = ctx.jobs.relists, cluster.watches(JOBS)

        assert cluster.drop_watches(JOBS) >= 1
        eventually(lambda: cluster.watches(JOBS) > watches, what="a new watch")
        # What happens now reaches the operator through the resumed watch only.
        cluster.finish_job(first, succeeded({"n": 1}))
        cluster.finish_job(wait_job(cluster, "two", task="cut"), succeeded({"m": 1}))
        wait_phase(cluster, "cut", "Succeeded")
        assert ctx.jobs.relists == relists  # resumed from the last version, not listed again
    one_job_per_step(cluster)


# --- store outage ---------------------------------------------------------------------------


def through(relay: Relay, dsn: str) -> str:
    """The store's DSN by way of `relay`, which can cut the connection."""
    relayed = make_url(dsn).set(host="127.0.0.1", port=relay.port)
    return relayed.render_as_string(hide_password=False)


@contextmanager
def step_one_running(
    cluster: Emulated, relay: Relay, postgres_store_dsn: str, store_retry_seconds: float
) -> Iterator[tuple[str, dict[str, Any]]]:
    """An operator whose store is reached through `relay`, and the CHAIN task "outage" with
    its first step running: the store's DSN and that step's Job."""
    dsn = through(relay, postgres_store_dsn)
    settings = OperatorSettings(
        dsn=dsn, metrics_port=0, store_retry_seconds=store_retry_seconds, api_retry_seconds=0.5
    )
    with running_operator(settings):
        cluster.create("agenttasks", agent_task("outage", CHAIN))
        first = wait_job(cluster, "one", task="outage")
        eventually(
            lambda: task_status(cluster, "outage").get("steps", [{}])[0].get("phase") == "Running",
            what="step one Running",
        )
        yield dsn, first


@pytest.mark.store
def test_a_store_outage_holds_the_task_then_it_resumes_without_rerunning(
    cluster: Emulated, relay: Relay, postgres_store_dsn: str
) -> None:
    with step_one_running(cluster, relay, postgres_store_dsn, 0.5) as (dsn, first):
        relay.cut()
        before = api_errors("store")
        cluster.finish_job(first, succeeded({"n": 1}))
        down = eventually(
            lambda: (s := task_status(cluster, "outage")).get("reason") == "StoreUnavailable" and s,
            what="the task to report the store down",
        )
        assert down["phase"] == "Running"
        assert conditions(down)["Ready"]["reason"] == "StoreUnavailable"
        assert "checkpoint store" in down["message"]
        # Several looks while the store is down, and still no second step: at most its Job
        # prepared (made suspended before the record that fails), never let run.
        eventually(lambda: api_errors("store") >= before + 3, what="retries while down")
        assert all(j["spec"]["suspend"] for j in step_jobs(cluster, "two"))

        relay.restore()
        second = wait_job(cluster, "two", task="outage")
        # Written down before the next step's Job was made: the checkpoint after step one.
        with Store.open(dsn) as store:
            resumed = store.last_checkpoint("uid-outage")
        assert resumed is not None and resumed.step_id == "one"
        assert resumed.snapshot["steps"][0]["phase"] == "Succeeded"
        cluster.finish_job(second, succeeded({"m": 1}))
        final = wait_phase(cluster, "outage", "Succeeded")

    assert final["reason"] == "Succeeded"
    one_job_per_step(cluster)
    assert set(cluster.jobs_made()) == {first["metadata"]["name"], second["metadata"]["name"]}
    with Store.open(dsn) as store:
        checkpoint = store.last_checkpoint("uid-outage")
        attempts = sorted((a.step_id, a.attempt, a.phase) for a in store.attempts("uid-outage"))
        steps_done = [c for c in store.events("uid-outage") if c.kind == "step_finished"]
    assert attempts == [("one", 1, "Succeeded"), ("two", 1, "Succeeded")]
    assert checkpoint is not None and checkpoint.snapshot["phase"] == "Succeeded"
    assert [e.step_id for e in steps_done] == ["one", "two"]


@pytest.mark.store
def test_tasks_backing_off_from_a_store_outage_do_not_wake_each_other(
    cluster: Emulated, relay: Relay, postgres_store_dsn: str
) -> None:
    """A failed pass gives back the task's pool slot, which wakes the tasks queued for it;
    those fail and give theirs back too. Backing off means waiting out the delay: at most
    one look per task per delay (0.5 s doubling), not a ring of wakes between them."""
    dsn = through(relay, postgres_store_dsn)
    settings = OperatorSettings(
        dsn=dsn, metrics_port=0, store_retry_seconds=0.5, api_retry_seconds=0.5
    )
    tasks = [f"queued-{i}" for i in range(6)]
    with running_operator(settings) as memo:
        ledger = context(memo).ledger
        for name in tasks:
            cluster.create("agenttasks", agent_task(name, CHAIN))
        eventually(lambda: len(cluster.job_creations()) == 2, what="the pool's two slots taken")
        eventually(lambda: ledger.usage((NS, "default"))[1] == 4, what="four tasks in line")
        running = cluster.objects(JOBS)
        relay.cut()
        before = api_errors("store")
        for job in running:
            cluster.finish_job(job, succeeded({"n": 1}))
        eventually(lambda: api_errors("store") >= before + len(tasks), what="looks while down")
        looked = api_errors("store")
        time.sleep(3)  # with 0.5 s doubling: a look at 0.5, 1.5 and 3.5 s at most, each
        assert api_errors("store") - looked <= 3 * len(tasks)
        relay.restore()


@pytest.mark.store
def test_a_task_backing_off_from_a_store_outage_looks_again_once_the_store_is_back(
    cluster: Emulated, relay: Relay, postgres_store_dsn: str
) -> None:
    """A loop waits out its back-off, which doubles while the outage lasts, so it could
    wait nearly as long again once the store is back (the fault bench saw 25 s after an
    API server restart). A probe finds the store back and rouses it: here its delay is
    the longest there is (30 s) and the task goes on well before that."""
    with step_one_running(cluster, relay, postgres_store_dsn, 600) as (_, first):
        before = api_errors("store")  # a pass in flight may be the one that fails
        relay.cut()
        cluster.finish_job(first, succeeded({"n": 1}))
        eventually(lambda: api_errors("store") > before, what="a pass to fail and back off")
        relay.restore()
        # Roused within a probe or two; waiting out the delay (30 s at most) would take
        # more than twice as long as this allows.
        eventually(
            lambda: [j for j in step_jobs(cluster, "two", "outage") if not j["spec"]["suspend"]],
            timeout=12,
            what="step two let run",
        )
        assert api_errors("store") == before + 1  # one failed pass: no looks while down


# --- the operator stops between two writes -----------------------------------------------
#
# A step's Job is made suspended (prepared) before its attempt is recorded, and let run
# after. An operator stopped at any point of that (as when it is killed) leaves a state the
# next one finishes: nothing made, a prepared Job never recorded, or a recorded attempt
# whose Job is still prepared. Never a recorded attempt with no Job, which a restart could
# not tell from one that ran and vanished (lost).


def stopped_while_refusing(
    cluster: Emulated, settings: OperatorSettings, match: Callable[[Request], bool], name: str
) -> None:
    """An operator starts the CHAIN task `name` and stops once a request that `match`es
    has failed (each one fails while it runs)."""
    refusing = threading.Event()
    refusing.set()
    refused = cluster.refuse(lambda r: refusing.is_set() and match(r), 500, times=1000)
    with running_operator(settings):
        cluster.create("agenttasks", agent_task(name, CHAIN))
        eventually(lambda: len(refused) >= 1, what="a request to fail")
    refusing.clear()


def job_creation(request: Request) -> bool:
    return request.resource == JOBS and request.action == action.CREATE


def job_launch(request: Request) -> bool:
    return request.resource == JOBS and str(request.method.value).upper() == "PATCH"


def attempts_of(dsn: str, uid: str) -> list[tuple[str, int, str]]:
    with Store.open(dsn) as store:
        return sorted((a.step_id, a.attempt, a.phase) for a in store.attempts(uid))


def runs_once_after_a_restart(
    cluster: Emulated, settings: OperatorSettings, dsn: str, name: str
) -> None:
    """A new operator runs the CHAIN task `name` to its end, each step once."""
    with running_operator(settings):
        final = run_chain(cluster, name)
    assert final["outputs"] == {"two": {"m": 1}}
    one_job_per_step(cluster)
    assert attempts_of(dsn, f"uid-{name}") == [("one", 1, "Succeeded"), ("two", 1, "Succeeded")]


def test_an_operator_stopped_before_making_a_job_makes_it_once_after(
    cluster: Emulated, settings: OperatorSettings, dsn: str
) -> None:
    # Every Job creation fails until the operator is gone. Before the Job was prepared
    # first, the attempt was recorded by then, and the next operator took it for lost.
    stopped_while_refusing(cluster, settings, job_creation, "interrupted")
    assert cluster.jobs() == [] and attempts_of(dsn, "uid-interrupted") == []
    runs_once_after_a_restart(cluster, settings, dsn, "interrupted")


def test_an_operator_stopped_before_letting_a_recorded_job_run_lets_it_run_after(
    cluster: Emulated, settings: OperatorSettings, dsn: str
) -> None:
    stopped_while_refusing(cluster, settings, job_launch, "held")
    [prepared] = cluster.jobs()
    assert prepared["spec"]["suspend"] is True
    assert attempts_of(dsn, "uid-held") == [("one", 1, "Running")]
    runs_once_after_a_restart(cluster, settings, dsn, "held")


def test_a_prepared_job_never_recorded_is_adopted_in_the_slot_it_holds(
    cluster: Emulated, settings: OperatorSettings, dsn: str
) -> None:
    # The last operator made step one's Job and was killed before recording it; the pool
    # has one slot, which that Job holds. The start adopts it: not removed and made again.
    cluster.create("agentpools", pool("single", replicas=1))
    task = agent_task("orphan", {**CHAIN, "poolRef": {"name": "single"}})
    job = step_job(
        AgentTask.model_validate(task),
        AgentPool.model_validate(pool("single", replicas=1)),
        StartStep("one", 1, "noop", {"outputs": {"n": 1}}, 600, False, None),
    )
    cluster.store_silently(JOBS, job)
    with running_operator(settings):
        cluster.create("agenttasks", task)
        final = run_chain(cluster, "orphan")

    assert final["outputs"] == {"two": {"m": 1}}
    one_job_per_step(cluster)  # made once: the creation that met it was answered 409
    assert cluster.job_creations().count(job["metadata"]["name"]) == 1
    assert attempts_of(dsn, "uid-orphan") == [("one", 1, "Succeeded"), ("two", 1, "Succeeded")]


def test_a_job_creation_that_failed_gives_its_pool_slot_back(
    cluster: Emulated, settings: OperatorSettings
) -> None:
    # With one slot, a slot kept by a creation that failed (and recorded nothing) would
    # leave the task, and every other task of the pool, waiting for capacity for good.
    cluster.create("agentpools", pool("single", replicas=1))
    refused = cluster.refuse(job_creation, 500, times=1)
    task = agent_task("retried", {**CHAIN, "poolRef": {"name": "single"}})
    with running_operator(settings):
        cluster.create("agenttasks", task)
        final = run_chain(cluster, "retried")
    assert len(refused) == 1 and final["outputs"] == {"two": {"m": 1}}
    one_job_per_step(cluster)
