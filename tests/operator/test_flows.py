"""Whole flows through the running operator: approvals, retries, cancellation, restarts,
pool capacity and LLM planning, each against kmock's Kubernetes emulator.

The emulator runs no controllers: the tests play the Job controller and the kubelet
(`finish_job`) and the person who approves (a patch of `spec.decision`).
"""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime
from typing import Any

import kopf
from kmock import name, subresource
from kubernetes import client

from agent_operator.core.naming import job_name
from agent_operator.kube.settings import OperatorSettings
from agent_operator.redact import REDACTED
from agent_operator.store import Store
from tests.support.openai_server import ScriptedOpenAI, text

from .harness import (
    APPROVALS,
    JOBS,
    NS,
    PODS,
    TASKS,
    Emulated,
    agent_task,
    conditions,
    eventually,
    failed,
    one_job_per_step,
    pool,
    running_operator,
    step_jobs,
    succeeded,
    task_status,
    wait_job,
    wait_phase,
)

API_KEY = "sk-test-flows-0123456789"


def approvals(cluster: Emulated) -> list[dict[str, Any]]:
    return cluster.objects(APPROVALS)


def approval_of(cluster: Emulated, step: str) -> dict[str, Any]:
    found: dict[str, Any] = eventually(
        lambda: next(a for a in approvals(cluster) if a["spec"]["stepId"] == step),
        what=f"the ApprovalRequest of {step}",
    )
    return found


def decide(cluster: Emulated, approval: dict[str, Any], decision: str, reason: str) -> None:
    """A person's decision, as `kubectl patch approvalrequest` makes it."""
    name = approval["metadata"]["name"]
    cluster.patch("approvalrequests", name, {"spec": {"decision": decision, "reason": reason}})


def gated(name: str, *steps: dict[str, Any], **safety: Any) -> dict[str, Any]:
    """A task whose `noop` steps need approval."""
    return agent_task(
        name, {"steps": list(steps), "safety": {"requireApprovalFor": ["noop"], **safety}}
    )


# --- approvals ------------------------------------------------------------------------------


def test_an_approved_step_runs_and_the_task_succeeds(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    params = {"outputs": {"greeting": "hi"}, "password": "hunter2-s3cr3t"}
    cluster.create("agenttasks", gated("ask", {"id": "deploy", "tool": "noop", "params": params}))

    request = approval_of(cluster, "deploy")
    meta, spec = request["metadata"], request["spec"]
    assert meta["ownerReferences"][0]["uid"] == "uid-ask"
    assert meta["ownerReferences"][0]["kind"] == "AgentTask"
    assert meta["labels"]["agentoperator.io/task-uid"] == "uid-ask"
    assert meta["labels"]["agentoperator.io/step"] == "deploy"
    assert spec["taskRef"] == {"name": "ask", "uid": "uid-ask"}
    assert (spec["stepId"], spec["tool"]) == ("deploy", "noop")
    assert spec["params"]["outputs"] == {"greeting": "hi"}
    assert spec["params"]["password"] == REDACTED
    assert "hunter2" not in json.dumps(request)
    assert spec["risk"]["requiresApproval"] is True and spec["risk"]["level"] == "safe"
    assert datetime.fromisoformat(spec["expiresAt"]) > datetime.now(UTC)  # default: an hour

    waiting = eventually(
        lambda: (s := task_status(cluster, "ask")).get("phase") == "WaitingApproval" and s,
        what="WaitingApproval",
    )
    assert conditions(waiting)["Approved"]["status"] == "False"
    assert conditions(waiting)["Approved"]["reason"] == "WaitingForApproval"
    assert cluster.jobs() == []  # nothing runs before a person says so

    decide(cluster, request, "Approved", "looks right")
    decided = eventually(
        lambda: (
            (a := approval_of(cluster, "deploy")).get("status", {}).get("phase") == "Approved" and a
        ),
        what="the request's status to say Approved",
    )
    assert decided["status"]["decidedAt"]
    job = wait_job(cluster, "deploy")
    cluster.finish_job(job, succeeded({"greeting": "hi"}))
    final = wait_phase(cluster, "ask", "Succeeded")
    assert conditions(final)["Approved"]["status"] == "True"
    assert len(cluster.jobs()) == 1


def test_more_waiting_tasks_than_threads_all_progress_and_decisions_are_heard(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    """A task waiting (for a person, a Job or a pool slot) holds no thread: more of them than
    Kopf has threads for its handlers (at most 32) all get their ApprovalRequests, and a
    decision on the last one is still heard and runs its step."""
    count = 40
    for i in range(count):
        cluster.create("agenttasks", gated(f"wait-{i}", {"id": f"gate-{i}", "tool": "noop"}))
    eventually(lambda: len(approvals(cluster)) == count, what=f"{count} ApprovalRequests")
    last = f"gate-{count - 1}"
    decide(cluster, approval_of(cluster, last), "Approved", "go")
    cluster.finish_job(wait_job(cluster, last), succeeded({}))
    wait_phase(cluster, f"wait-{count - 1}", "Succeeded")
    assert len(cluster.jobs()) == 1  # the others still wait for their decisions


def test_a_rejected_step_fails_the_task_without_running(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    cluster.create("agenttasks", gated("nope", {"id": "drop", "tool": "noop"}, onReject="fail"))
    decide(cluster, approval_of(cluster, "drop"), "Rejected", "not today")

    final = wait_phase(cluster, "nope", "Failed")
    assert final["reason"] == "ApprovalRejected"
    assert "not today" in final["message"]
    assert conditions(final)["Approved"]["status"] == "False"
    assert cluster.jobs() == [] and cluster.job_creations() == []
    assert approval_of(cluster, "drop")["status"]["phase"] == "Rejected"


def made_by_hand(cluster: Emulated) -> dict[str, Any]:
    return next(a for a in approvals(cluster) if a["metadata"]["name"] == "forged-deploy")


def test_an_approval_request_made_by_someone_else_decides_nothing(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    # Someone allowed to create ApprovalRequests (the chart lets only the operator) makes
    # one for the waiting step, approved already. Only the request the operator made for
    # the step decides it.
    cluster.create("agenttasks", gated("forged", {"id": "deploy", "tool": "noop"}))
    request = approval_of(cluster, "deploy")
    forged = {
        "apiVersion": request["apiVersion"],
        "kind": "ApprovalRequest",
        "metadata": {
            "name": "forged-deploy",
            "namespace": request["metadata"]["namespace"],
            "labels": request["metadata"]["labels"],
        },
        "spec": {**request["spec"], "decision": "Approved", "decidedBy": "mallory"},
    }
    cluster.create("approvalrequests", forged)
    eventually(  # Kopf has handled it: the operator has seen it and woken the task
        lambda: (
            "kopf.zalando.org/last-handled-configuration"
            in made_by_hand(cluster).get("metadata", {}).get("annotations", {})
        ),
        what="the forged request handled",
    )
    decide(cluster, request, "Rejected", "not this one")

    final = wait_phase(cluster, "forged", "Failed")
    assert final["reason"] == "ApprovalRejected" and "not this one" in final["message"]
    assert cluster.job_creations() == []
    # Nothing of it told: not mirrored into its status, no Event of an approval.
    assert "phase" not in made_by_hand(cluster).get("status", {})
    assert not [e for e in cluster.posted_events() if "mallory" in e.get("message", "")]


def test_a_rejected_step_is_skipped_and_the_next_one_runs(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    cluster.create(
        "agenttasks",
        gated(
            "skipper",
            {"id": "risky", "tool": "noop"},
            {"id": "after", "tool": "sleep", "params": {"seconds": 0}},
            onReject="skip",
        ),
    )
    decide(cluster, approval_of(cluster, "risky"), "Rejected", "too risky")

    job = wait_job(cluster, "after")
    risky = eventually(
        lambda: (s := task_status(cluster, "skipper")["steps"][0])["phase"] == "Skipped" and s,
        what="the rejected step Skipped",
    )
    assert risky["reason"] == "ApprovalRejected" and "too risky" in risky["message"]
    assert step_jobs(cluster, "risky") == []
    cluster.finish_job(job, succeeded({}))
    final = wait_phase(cluster, "skipper", "Succeeded")
    assert "1 skipped" in final["message"]


def test_an_approval_nobody_answers_expires_and_fails_the_task(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    cluster.create(
        "agenttasks", gated("late", {"id": "wait", "tool": "noop"}, approvalTimeoutSeconds=1)
    )
    approval_of(cluster, "wait")

    final = wait_phase(cluster, "late", "Failed")
    assert final["reason"] == "ApprovalExpired"
    expired = eventually(
        lambda: (
            (a := approval_of(cluster, "wait")).get("status", {}).get("phase") == "Expired" and a
        ),
        what="the request's status to say Expired",
    )
    assert "decision" not in expired["spec"]
    assert cluster.jobs() == []


# --- retries --------------------------------------------------------------------------------


def test_a_failing_step_is_retried_as_a_new_job_then_fails_the_task(
    cluster: Emulated, operator: kopf.Memo, dsn: str
) -> None:
    cluster.create(
        "agenttasks",
        agent_task(
            "flaky",
            {
                "steps": [{"id": "call", "tool": "noop", "retries": 1}],
                "limits": {"backoffSeconds": 0},
            },
        ),
    )
    first = wait_job(cluster, "call", 1)
    cluster.finish_job(first, failed("upstream said 503"), exit_code=1)

    second = wait_job(cluster, "call", 2)
    names = [first["metadata"]["name"], second["metadata"]["name"]]
    assert names == [job_name("flaky", "uid-flaky", "call", n) for n in (1, 2)]
    assert names[0] != names[1]
    cluster.finish_job(second, failed("upstream said 503 again"), exit_code=1)

    final = wait_phase(cluster, "flaky", "Failed")
    assert final["reason"] == "StepFailed"
    assert "upstream said 503 again" in final["message"]
    assert "2 attempts" in final["message"]
    assert cluster.jobs_made() == {names[0]: 1, names[1]: 1}  # one Job per attempt, no third
    assert set(cluster.job_creations()) == set(names)
    with Store.open(dsn) as store:
        attempts = {(a.attempt, a.phase, a.message) for a in store.attempts("uid-flaky")}
    assert attempts == {
        (1, "Failed", "upstream said 503"),
        (2, "Failed", "upstream said 503 again"),
    }


def test_a_result_over_4_kib_is_read_from_the_pods_log_and_kept_in_the_store(
    cluster: Emulated, operator: kopf.Memo, dsn: str
) -> None:
    blob = "x" * 20_000
    cluster.create(
        "agenttasks",
        agent_task(
            "big", {"steps": [{"id": "fetch", "tool": "noop"}, {"id": "next", "tool": "noop"}]}
        ),
    )
    job = wait_job(cluster, "fetch")
    pod = f"{job['metadata']['name']}-pod"
    full = json.dumps(succeeded({"blob": blob, "n": 1}))
    # The kubelet's log endpoint: the runtime's full result is the log's last line.
    reads = cluster.emulator["get", PODS, subresource("log"), name(pod)] << f"{full}\n".encode()
    cluster.finish_job(job, {**succeeded({"blob": "<truncated>", "n": 1}), "inLog": True})
    cluster.finish_job(wait_job(cluster, "next"), succeeded({}))
    wait_phase(cluster, "big", "Succeeded")
    with Store.open(dsn) as store:
        outputs = {a.step_id: a.outputs for a in store.attempts("uid-big")}
    assert outputs["fetch"] == {"blob": blob, "n": 1}
    assert len(reads) == 1  # read once: the store keeps it from then on
    assert reads[0].params == {"container": "step", "tailLines": "1", "limitBytes": "1048578"}


# --- cancellation ---------------------------------------------------------------------------


def test_deleting_a_running_task_stops_its_job_and_records_the_cancellation(
    cluster: Emulated, operator: kopf.Memo, dsn: str
) -> None:
    long = {"id": "long", "tool": "sleep", "params": {"seconds": 9}}
    cluster.create("agenttasks", agent_task("doomed", {"steps": [long]}))
    job = wait_job(cluster, "long")
    eventually(lambda: task_status(cluster, "doomed").get("phase") == "Running", what="Running")

    cluster.delete("agenttasks", "doomed")

    eventually(lambda: not cluster.exists(JOBS, job["metadata"]["name"]), what="the Job deleted")
    eventually(lambda: not cluster.exists(TASKS, "doomed"), what="the task to go away")
    with Store.open(dsn) as store:
        kinds = [e.kind for e in store.events("uid-doomed")]
        task = store.task("uid-doomed")
    assert "task_cancelled" in kinds
    assert task is not None and task.phase == "Cancelled"
    assert set(cluster.job_creations()) == {job["metadata"]["name"]}  # nothing started after
    assert cluster.jobs_made() == {job["metadata"]["name"]: 1}


# --- restart --------------------------------------------------------------------------------


def test_a_restarted_operator_resumes_where_the_last_one_stopped(
    cluster: Emulated, settings: OperatorSettings, dsn: str
) -> None:
    chain = {
        "steps": [
            {"id": "one", "tool": "noop", "timeoutSeconds": 3600},  # no look due for an hour
            {"id": "two", "tool": "noop", "params": {"outputs": {"x": "${steps.one.outputs.n}"}}},
        ]
    }
    with running_operator(settings) as memo:
        cluster.create("agenttasks", agent_task("phoenix", chain))
        first = wait_job(cluster, "one")
        eventually(
            lambda: task_status(cluster, "phoenix").get("steps", [{}])[0].get("phase") == "Running",
            what="step one Running in the status",
        )
        # Stopped while the task's loop sleeps: the loop ends too (running_operator checks).
        eventually(lambda: memo["ctx"].wakers.asleep() == 1, what="the task's loop asleep")
    # The operator is gone: the step finishes with nobody watching.
    cluster.finish_job(first, succeeded({"n": 7}))
    assert step_jobs(cluster, "two") == []

    with running_operator(settings):
        second = wait_job(cluster, "two")
        env = second["spec"]["template"]["spec"]["containers"][0]["env"]
        assert '"x":7' in next(e["value"] for e in env if e["name"] == "AGENT_STEP").replace(
            " ", ""
        )
        cluster.finish_job(second, succeeded({"x": 7}))
        final = wait_phase(cluster, "phoenix", "Succeeded")

    one_job_per_step(cluster)  # from the request log and each Job's history
    assert set(cluster.jobs_made()) == {first["metadata"]["name"], second["metadata"]["name"]}
    assert final["outputs"] == {"two": {"x": 7}}
    with Store.open(dsn) as store:
        attempts = sorted((a.step_id, a.attempt, a.phase) for a in store.attempts("uid-phoenix"))
    assert attempts == [("one", 1, "Succeeded"), ("two", 1, "Succeeded")]


# --- pool capacity --------------------------------------------------------------------------


class ActiveJobs:
    """Samples the emulator's active step Jobs in the background: the most seen at once."""

    def __init__(self, cluster: Emulated) -> None:
        self.cluster = cluster
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.most = max(self.most, len(self.cluster.active_jobs()))

    def __enter__(self) -> ActiveJobs:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def independent(name: str, *ids: str) -> dict[str, Any]:
    steps = [{"id": i, "tool": "noop", "dependsOn": []} for i in ids]
    return agent_task(name, {"poolRef": {"name": "narrow"}, "steps": steps})


def test_a_pool_of_one_runs_one_step_at_a_time_in_order_until_scaled(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    cluster.create("agentpools", pool("narrow", replicas=1))
    with ActiveJobs(cluster) as active:
        cluster.create("agenttasks", independent("first", "a1", "a2", "a3", "a4"))
        a1 = wait_job(cluster, "a1")
        eventually(
            lambda: (
                [s["phase"] for s in task_status(cluster, "first").get("steps", [])]
                == ["Running", "Queued", "Queued", "Queued"]
            ),
            what="a2, a3 and a4 queued behind a1",
        )
        cluster.create("agenttasks", independent("second", "b1"))
        eventually(
            lambda: (
                task_status(cluster, "second").get("steps", [{}])[0].get("reason")
                == "WaitingForCapacity"
            ),
            what="b1 queued",
        )
        assert cluster.active_jobs() == [a1["metadata"]["name"]]

        # Each finished Job frees the one slot for the next in line: the task that queued
        # first keeps its place until all its queued steps have run.
        running = a1
        for step in ("a2", "a3"):
            cluster.finish_job(running, succeeded({}))
            running = wait_job(cluster, step)
            assert cluster.active_jobs() == [running["metadata"]["name"]]
        assert step_jobs(cluster, "a4") == [] and step_jobs(cluster, "b1") == []

        status = eventually(
            lambda: (
                (s := cluster.get("agentpools", "narrow").get("status", {})).get("queued") == 2
                and s.get("running") == 1
                and s
            ),
            what="the pool's status to count 1 running and 2 queued",
        )
        assert status["replicas"] == 1
        assert "agentoperator.io/pool=narrow" in status["selector"]
        assert "app.kubernetes.io/managed-by=agent-operator" in status["selector"]
        assert active.most == 1

    cluster.patch("agentpools", "narrow", {"spec": {"replicas": 3}})
    a4, b1 = wait_job(cluster, "a4"), wait_job(cluster, "b1")
    assert len(cluster.active_jobs()) == 3
    for job in (running, a4, b1):
        cluster.finish_job(job, succeeded({}))
    wait_phase(cluster, "first", "Succeeded")
    wait_phase(cluster, "second", "Succeeded")
    one_job_per_step(cluster)
    assert len(cluster.jobs_made()) == 5


# --- LLM planning ---------------------------------------------------------------------------


def planned_pool(server: ScriptedOpenAI) -> dict[str, Any]:
    model = {
        "baseURL": server.base_url,
        "model": "gpt-4o-mini",
        "timeoutSeconds": 5,
        "apiKeySecretRef": {"name": "llm-key", "key": "apiKey"},
    }
    return pool("thinking", model=model)


def test_a_goal_is_planned_by_the_llm_with_the_pools_key(
    cluster: Emulated, operator: kopf.Memo, openai_server: ScriptedOpenAI
) -> None:
    openai_server.api_key = API_KEY  # any other key gets a 401
    plan = {
        "steps": [
            {"id": "look", "tool": "noop", "params": {"outputs": {"n": 1}}, "rationale": "see"},
            {"id": "act", "tool": "noop", "dependsOn": ["look"], "rationale": "do"},
        ]
    }
    openai_server.reply(text(json.dumps(plan), prompt_tokens=100, completion_tokens=50))
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="llm-key", namespace=NS),
        data={"apiKey": base64.b64encode(API_KEY.encode()).decode()},
    )
    client.CoreV1Api(cluster.api).create_namespaced_secret(NS, secret)
    cluster.create("agentpools", planned_pool(openai_server))
    cluster.create(
        "agenttasks",
        agent_task("planned", {"goal": "look, then act", "poolRef": {"name": "thinking"}}),
    )

    job = wait_job(cluster, "look")
    status = eventually(
        lambda: (s := task_status(cluster, "planned")).get("currentStep") == "look" and s,
        what="the planned task to run its first step",
    )
    assert [(s["id"], s["tool"], s["dependsOn"]) for s in status["plan"]] == [
        ("look", "noop", []),
        ("act", "noop", ["look"]),
    ]
    assert status["usage"]["tokens"] == 150
    assert conditions(status)["Planned"]["status"] == "True"
    assert len(openai_server.requests) == 1
    assert "look, then act" in json.dumps(openai_server.requests[0]["messages"])
    cluster.finish_job(job, succeeded({"n": 1}))
    cluster.finish_job(wait_job(cluster, "act"), succeeded({}))
    wait_phase(cluster, "planned", "Succeeded")


def test_a_pool_key_secret_that_does_not_exist_fails_planning_clearly(
    cluster: Emulated, operator: kopf.Memo, openai_server: ScriptedOpenAI
) -> None:
    cluster.create("agentpools", planned_pool(openai_server))
    cluster.create(
        "agenttasks", agent_task("keyless", {"goal": "anything", "poolRef": {"name": "thinking"}})
    )

    final = wait_phase(cluster, "keyless", "Failed")
    assert final["reason"] == "MissingAPIKey"
    assert "llm-key" in final["message"]
    assert conditions(final)["Planned"]["status"] == "False"
    assert openai_server.requests == []
    assert cluster.jobs() == []
