"""The promises at the edges (issue 9): an attempt whose Job vanished is never started again,
a refused request fails the task once and clearly, a failing pass never ends a task's loop,
pool slots hold when many tasks arrive together, a deletion is recorded once, and the
metrics count what happened once."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import kopf
import pytest
from kmock import action
from kubernetes import client
from prometheus_client import REGISTRY

from agent_operator.core import decide as core
from agent_operator.kube import metrics
from agent_operator.kube.reconciler import OperatorContext, PhaseGauge
from agent_operator.kube.settings import OperatorSettings
from agent_operator.store import Store
from tests.support.openai_server import ScriptedOpenAI, text

from .harness import (
    APPROVALS,
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
    succeeded,
    task_status,
    wait_job,
    wait_phase,
)

ONE_STEP = {"steps": [{"id": "only", "tool": "noop", "params": {"outputs": {"n": 1}}}]}


def context(memo: kopf.Memo) -> OperatorContext:
    ctx: OperatorContext = eventually(lambda: memo.get("ctx"), what="the operator's context")
    return ctx


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def step_of(status: dict[str, Any], step: str) -> dict[str, Any]:
    return next(s for s in status["steps"] if s["id"] == step)


# --- 9.1: an attempt whose Job is gone is lost, never started again -------------------------


def test_a_job_deleted_before_its_outcome_was_recorded_is_not_started_again(
    cluster: Emulated, operator: kopf.Memo, dsn: str
) -> None:
    cluster.create("agenttasks", agent_task("vanish", ONE_STEP))  # retries: 0
    job = wait_job(cluster, "only")
    eventually(lambda: task_status(cluster, "vanish").get("phase") == "Running", what="Running")

    cluster.batch.delete_namespaced_job(job["metadata"]["name"], NS)  # kubectl delete job

    status = wait_phase(cluster, "vanish", "Failed")
    assert (status["reason"], step_of(status, "only")["reason"]) == ("StepFailed", "Lost")
    assert cluster.job_creations() == [job["metadata"]["name"]]  # the attempt ran once
    with Store.open(dsn) as store:
        [attempt] = store.attempts("uid-vanish")
    assert (attempt.phase, attempt.finished_at is not None) == ("Failed", True)


def test_a_lost_attempt_is_retried_as_the_next_attempt(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    spec = {"steps": [{**ONE_STEP["steps"][0], "retries": 1}], "limits": {"backoffSeconds": 0}}
    cluster.create("agenttasks", agent_task("again", spec))
    first = wait_job(cluster, "only")
    cluster.batch.delete_namespaced_job(first["metadata"]["name"], NS)
    second = wait_job(cluster, "only", attempt=2)
    cluster.finish_job(second, succeeded({"n": 1}))
    wait_phase(cluster, "again", "Succeeded")
    assert cluster.job_creations() == [first["metadata"]["name"], second["metadata"]["name"]]


# --- 9.3: a refused request fails the task once, naming the request ---------------------------


def test_a_refused_job_creation_fails_the_task_with_the_servers_message(
    cluster: Emulated, operator: kopf.Memo, dsn: str
) -> None:
    refused = cluster.refuse(
        lambda r: r.resource == JOBS and r.action == action.CREATE, status=422, times=100
    )
    cluster.create("agenttasks", agent_task("refused", ONE_STEP))

    status = wait_phase(cluster, "refused", "Failed")
    assert status["reason"] == "RequestRefused"
    assert "create Job" in status["message"] and "injected" in status["message"]
    assert conditions(status)["Ready"]["reason"] == "RequestRefused"
    assert len(refused) == 1  # not retried: retrying cannot mend a refusal
    with Store.open(dsn) as store:
        task = store.task("uid-refused")
        kinds = [e.kind for e in store.events("uid-refused")]
    assert task is not None and (task.phase, task.reason) == ("Failed", "RequestRefused")
    assert kinds.count("task_finished") == 1


def test_a_job_the_client_refuses_to_send_fails_the_task_naming_the_field(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    # Found by the pool fuzz: the pool's template is free-form where a Pod is not, and the
    # kubernetes client checks a Job before sending it. Before, that was an unexpected error
    # (a traceback in the log) on every pass, and the task never ended.
    cluster.create(
        "agentpools", pool("stringly", template={"securityContext": {"runAsUser": "root"}})
    )
    cluster.create(
        "agenttasks", agent_task("stringly", {**ONE_STEP, "poolRef": {"name": "stringly"}})
    )

    status = wait_phase(cluster, "stringly", "Failed")
    assert status["reason"] == "RequestRefused"
    assert "securityContext.runAsUser: Input should be a valid integer" in status["message"]
    assert cluster.jobs() == [] and cluster.job_creations() == []


# --- 9.2: no pass failure ends a task's loop ---------------------------------------------------


def test_an_unexpected_error_in_a_pass_is_counted_and_the_loop_carries_on(
    cluster: Emulated, settings: OperatorSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, failures = core.decide, []

    def broken_twice(observed: core.Observed) -> core.Decision:
        if len(failures) < 2:
            failures.append(observed.task.metadata.name)
            raise RuntimeError("injected defect")
        return real(observed)

    monkeypatch.setattr("agent_operator.driver.decide", broken_twice)
    before = sample("agent_operator_api_errors_total", {"operation": "unexpected"})
    with running_operator(settings):
        cluster.create("agenttasks", agent_task("sturdy", ONE_STEP))
        cluster.finish_job(wait_job(cluster, "only"), succeeded({"n": 1}))
        wait_phase(cluster, "sturdy", "Succeeded")
    assert failures == ["sturdy", "sturdy"]
    assert sample("agent_operator_api_errors_total", {"operation": "unexpected"}) == before + 2


def test_the_phase_gauge_survives_concurrent_passes() -> None:
    """16 pass threads set phases at once; iterating the shared dict used to raise."""
    gauge, errors = PhaseGauge(), []
    phases = list(core.TaskPhase)

    def hammer(worker: int) -> None:
        try:
            for i in range(400):
                gauge.set(f"task-{worker}-{i % 50}", phases[i % len(phases)])
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    counted = sum(sample("agent_operator_tasks", {"phase": p.value}) for p in phases)
    assert counted == 16 * 50


# --- 9.15: many tasks arriving together never exceed the pool --------------------------------


def test_tasks_arriving_together_never_hold_more_than_the_pools_slots(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    names = [f"crowd-{n}" for n in range(12)]
    threads = [
        threading.Thread(target=cluster.create, args=("agenttasks", agent_task(n, ONE_STEP)))
        for n in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    done: set[str] = set()
    while len(done) < len(names):
        # Every task not done has made its decision: running, or queued for capacity.
        statuses = eventually(
            lambda: (
                all(
                    (s := task_status(cluster, n)).get("steps")
                    and step_of(s, "only")["phase"] in ("Running", "Queued", "Succeeded")
                    for n in names
                )
                and {n: task_status(cluster, n) for n in names}
            ),
            what="every task to have decided",
        )
        active = cluster.active_jobs()
        assert len(active) <= 2, f"{len(active)} step Jobs hold a pool of 2: {active}"
        running = [n for n, s in statuses.items() if step_of(s, "only")["phase"] == "Running"]
        assert len(running) <= 2
        for name in [n for n in names if n not in done]:
            if name in running:
                cluster.finish_job(wait_job(cluster, "only", task=name), succeeded({"n": 1}))
                wait_phase(cluster, name, "Succeeded")
                done.add(name)
    one_job_per_step(cluster)


# --- 9.17: a deletion is recorded once --------------------------------------------------------


def test_deleting_a_task_records_one_cancellation(
    cluster: Emulated, operator: kopf.Memo, dsn: str
) -> None:
    long = {"id": "long", "tool": "sleep", "params": {"seconds": 9}}
    cluster.create("agenttasks", agent_task("once", {"steps": [long]}))
    wait_job(cluster, "long")
    eventually(lambda: task_status(cluster, "once").get("phase") == "Running", what="Running")

    cluster.delete("agenttasks", "once")

    eventually(lambda: not cluster.exists(TASKS, "once"), what="the task to go away")
    with Store.open(dsn) as store:
        kinds = [e.kind for e in store.events("uid-once")]
        [attempt] = store.attempts("uid-once")
    assert kinds.count("task_cancelled") == 1
    assert (attempt.phase, attempt.message) == ("Failed", "stopped by the operator: TaskEnded")


# --- 9.8: metrics count once, gauges follow state ---------------------------------------------


def test_planning_tokens_are_counted_once_and_not_again_after_a_restart(
    cluster: Emulated, settings: OperatorSettings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.api_key = "sk-edges-0123456789"
    plan = {"steps": [{"id": "look", "tool": "noop", "rationale": "see"}]}
    openai_server.reply(text(json.dumps(plan), prompt_tokens=100, completion_tokens=50))
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="llm-key", namespace=NS),
        data={"apiKey": base64.b64encode(b"sk-edges-0123456789").decode()},
    )
    client.CoreV1Api(cluster.api).create_namespaced_secret(NS, secret)
    model = {
        "baseURL": openai_server.base_url,
        "timeoutSeconds": 5,
        "apiKeySecretRef": {"name": "llm-key", "key": "apiKey"},
    }
    cluster.create("agentpools", pool("thinking", model=model))
    before = sample("agent_operator_llm_tokens_total")
    with running_operator(settings):
        cluster.create(
            "agenttasks", agent_task("tokens", {"goal": "look", "poolRef": {"name": "thinking"}})
        )
        wait_job(cluster, "look")
    assert sample("agent_operator_llm_tokens_total") == before + 150
    with running_operator(settings):  # a restart observes the same task again
        cluster.finish_job(wait_job(cluster, "look"), succeeded({}))
        wait_phase(cluster, "tokens", "Succeeded")
    assert sample("agent_operator_llm_tokens_total") == before + 150


def test_approvals_pending_follows_the_requests_through_a_conflict_and_a_restart(
    cluster: Emulated, settings: OperatorSettings
) -> None:
    def gauge() -> float:
        return sample("agent_operator_approvals_pending")

    conflicts = cluster.emulator[action.CREATE, APPROVALS][:1] << 409  # made, reply lost
    spec = {
        "steps": [{"id": "gate", "tool": "noop"}, {"id": "gate2", "tool": "noop", "dependsOn": []}],
        "safety": {"requireApprovalFor": ["noop"]},
    }
    with running_operator(settings):
        cluster.create("agenttasks", agent_task("asks", spec))
        eventually(lambda: len(cluster.objects(APPROVALS)) == 2, what="two requests")
        eventually(lambda: gauge() == 2, what="two pending")
    assert len(conflicts) == 1
    metrics.APPROVALS_PENDING.set(0)  # a new operator process starts from nothing
    with running_operator(settings):
        eventually(lambda: gauge() == 2, what="two pending after a restart")
        first = next(a for a in cluster.objects(APPROVALS) if a["spec"]["stepId"] == "gate")
        cluster.patch(
            "approvalrequests", first["metadata"]["name"], {"spec": {"decision": "Approved"}}
        )
        eventually(lambda: gauge() == 1, what="one pending after a decision")


# --- 12.5: a pool's safety rule that does not compile ---------------------------------------


def test_a_pool_rule_that_does_not_compile_is_its_ready_condition_and_fails_its_tasks(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    bad = {"name": "typo", "condition": "tool ==", "effect": "Deny"}
    cluster.create("agentpools", pool("ruled", rules=[bad]))

    def ready() -> dict[str, Any] | None:
        status = cluster.get("agentpools", "ruled").get("status", {})
        return conditions(status).get("Ready") if status.get("conditions") else None

    said = eventually(ready, what="the pool's Ready condition")
    assert (said["status"], said["reason"]) == ("False", "InvalidRules")
    assert "spec.rules[0] ('typo').condition: does not parse as CEL" in said["message"]
    cluster.create("agenttasks", agent_task("ruled", {**ONE_STEP, "poolRef": {"name": "ruled"}}))
    status = wait_phase(cluster, "ruled", "Failed")
    assert status["reason"] == "InvalidPlan" and "('typo')" in status["message"]
    assert cluster.job_creations() == []

    cluster.patch("agentpools", "ruled", {"spec": {"rules": [{**bad, "condition": "false"}]}})
    fixed = eventually(lambda: (r := ready()) and r["status"] == "True" and r, what="Ready")
    assert fixed["reason"] == "RulesValid"
