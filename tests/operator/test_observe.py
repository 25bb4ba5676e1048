"""Step Jobs, their pods and ApprovalRequests, as the API server returns them, read back."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent_contract import Usage
from agent_operator.api import AgentPool, AgentTask, ApprovalPhase
from agent_operator.core.decide import RunState, StartStep
from agent_operator.core.reasons import Reason
from agent_operator.kube.manifests import ANNOTATION_PREPARED, step_job
from agent_operator.kube.observe import TAIL_CHARS, approval_view, run_from_job

UID = "0b7c5a8e-4f1d-4c3e-9a57-2d1e6f8b9c10"
JOB_UID = "7d3f9a21-55c2-4b8e-a1f0-3c9e8d7b6a54"
CREATED = "2026-11-23T10:00:00Z"
STARTED = "2026-11-23T10:00:01Z"
FINISHED = "2026-11-23T10:00:42Z"
T_STARTED = datetime(2026, 11, 23, 10, 0, 1, tzinfo=UTC)
T_FINISHED = datetime(2026, 11, 23, 10, 0, 42, tzinfo=UTC)

TASK = AgentTask.model_validate(
    {
        "metadata": {"name": "nightly-report", "namespace": "team-a", "uid": UID},
        "spec": {"steps": [{"id": "fetch", "tool": "http_request"}]},
    }
)
POOL = AgentPool.model_validate({"metadata": {"name": "default", "namespace": "team-a"}})
START = StartStep("fetch", 2, "http_request", {"url": "https://example.com"}, 120, False, None)
CREATED_JOB = step_job(TASK, POOL, START)
NAME = CREATED_JOB["metadata"]["name"]


def condition(kind: str, reason: str = "", message: str = "", at: str = FINISHED) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "lastProbeTime": at,
        "lastTransitionTime": at,
        "reason": reason,
        "message": message,
    }


def job(
    *conditions: dict[str, Any], completion: str | None = None, **status: Any
) -> dict[str, Any]:
    """The Job the operator created and let run, as the API server returns it later."""
    body = copy.deepcopy(CREATED_JOB)
    del body["metadata"]["annotations"][ANNOTATION_PREPARED]
    controller = {"batch.kubernetes.io/controller-uid": JOB_UID, "controller-uid": JOB_UID}
    body["metadata"] |= {
        "uid": JOB_UID,
        "resourceVersion": "48213",
        "generation": 1,
        "creationTimestamp": CREATED,
    }
    body["spec"] |= {
        "completions": 1,
        "parallelism": 1,
        "completionMode": "NonIndexed",
        "suspend": False,
        "manualSelector": False,
        "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": JOB_UID}},
    }
    body["spec"]["template"]["metadata"]["labels"] |= controller | {
        "batch.kubernetes.io/job-name": NAME,
        "job-name": NAME,
    }
    body["status"] = {"startTime": STARTED, "uncountedTerminatedPods": {}, **status}
    if conditions:
        body["status"]["conditions"] = list(conditions)
    if completion:
        body["status"]["completionTime"] = completion
    return body


def pod(
    phase: str = "Running", state: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The Job's pod; `state` is the step container's, `extra` goes into status or metadata."""
    deletion = extra.pop("deletionTimestamp", None)
    metadata: dict[str, Any] = {
        "name": f"{NAME}-x7k2p",
        "generateName": f"{NAME}-",
        "namespace": "team-a",
        "uid": "c4a1e2f3-9b8d-4e7f-a6c5-1d2e3f4a5b6c",
        "resourceVersion": "48220",
        "creationTimestamp": CREATED,
        "labels": {
            **CREATED_JOB["spec"]["template"]["metadata"]["labels"],
            "batch.kubernetes.io/job-name": NAME,
            "job-name": NAME,
        },
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": NAME,
                "uid": JOB_UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "finalizers": ["batch.kubernetes.io/job-tracking"],
    }
    if deletion:
        metadata |= {"deletionTimestamp": deletion, "deletionGracePeriodSeconds": 30}
    state = state if state is not None else {"running": {"startedAt": STARTED}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": copy.deepcopy(CREATED_JOB["spec"]["template"]["spec"]) | {"nodeName": "node-1"},
        "status": {
            "phase": phase,
            "hostIP": "10.0.0.4",
            "podIP": "10.244.1.17",
            "startTime": STARTED,
            "qosClass": "BestEffort",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": CREATED}
            ],
            "containerStatuses": [
                {
                    "name": "step",
                    "state": state,
                    "lastState": {},
                    "ready": "running" in state,
                    "restartCount": 0,
                    "image": "docker.io/library/agent-runtime:latest",
                    "imageID": "docker.io/library/agent-runtime@sha256:9f86d081884c7d65",
                    "started": "running" in state,
                }
            ],
            **extra,
        },
    }


def terminated(code: int, message: str | None = None, reason: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "exitCode": code,
        "reason": reason or ("Completed" if code == 0 else "Error"),
        "startedAt": STARTED,
        "finishedAt": FINISHED,
        "containerID": "containerd://5e1f0c9d8b7a",
    }
    if message is not None:
        state["message"] = message
    return {"terminated": state}


def result(ok: bool = True, **fields: Any) -> str:
    return json.dumps({"ok": ok, "outputs": {}, "message": "", **fields}, separators=(",", ":"))


def no_log(namespace: str, name: str) -> str | None:
    raise AssertionError(f"the log of {namespace}/{name} was read")


COMPLETE = (condition("SuccessCriteriaMet", "CompletionsReached"), condition("Complete"))
BACKOFF = condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")


# --- succeeded ------------------------------------------------------------------


def test_a_prepared_job_has_run_nothing_and_one_suspended_by_someone_else_is_not_prepared() -> None:
    prepared = run_from_job(CREATED_JOB, None, no_log)
    assert prepared.state == RunState.prepared and prepared.attempt == 2
    # Suspended by a person after it ran: its attempt runs as far as the operator knows
    # (letting it run again could run the step twice).
    later = job()
    later["spec"]["suspend"] = True
    assert run_from_job(later, None, no_log).state == RunState.running


def test_a_complete_job_reports_the_steps_outputs_and_usage() -> None:
    message = result(
        outputs={"status": 200, "rows": 42},
        message="fetched",
        usage={"tokens": 321, "costUSD": 0.0042},
    )
    run = run_from_job(
        job(*COMPLETE, completion=FINISHED, succeeded=1),
        pod("Succeeded", terminated(0, message)),
        no_log,
    )
    assert run.step_id == "fetch" and run.attempt == 2 and run.job_name == NAME
    assert run.state == RunState.succeeded and run.reason is None
    assert run.outputs == {"status": 200, "rows": 42}
    assert run.message == "fetched"
    assert run.usage == Usage(tokens=321, cost_usd=0.0042)
    assert run.started_at == T_STARTED and run.finished_at == T_FINISHED
    assert run.started_at.tzinfo is UTC and run.finished_at.tzinfo is UTC


def test_success_criteria_met_is_enough_before_complete_is_written() -> None:
    run = run_from_job(job(COMPLETE[0]), pod("Succeeded", terminated(0, result())), None)
    assert run.state == RunState.succeeded
    assert run.finished_at == T_FINISHED  # the condition's time, as no completionTime yet


def test_a_pod_that_ended_decides_while_the_job_controller_lags() -> None:
    ok = run_from_job(
        job(active=1), pod("Succeeded", terminated(0, result(outputs={"n": 1}))), None
    )
    assert (ok.state, ok.outputs, ok.finished_at) == (RunState.succeeded, {"n": 1}, T_FINISHED)
    failed = run_from_job(
        job(active=1), pod("Failed", terminated(1, result(False, message="HTTP 503"))), None
    )
    assert (failed.state, failed.reason, failed.message) == (
        RunState.failed,
        "ExitCode1",
        "HTTP 503",
    )


def test_a_large_result_is_read_from_the_last_line_of_the_pods_log() -> None:
    summary = result(
        outputs={"body": "<truncated: 90002 bytes in the log>"}, usage={"tokens": 7}, inLog=True
    )
    full = result(outputs={"body": "x" * 90000}, usage={"tokens": 7})
    asked: list[tuple[str, str]] = []

    def read_log(namespace: str, name: str) -> str | None:
        asked.append((namespace, name))
        return full + "\n"

    complete = job(*COMPLETE, completion=FINISHED)
    run = run_from_job(complete, pod("Succeeded", terminated(0, summary)), read_log)
    assert asked == [("team-a", f"{NAME}-x7k2p")]
    assert run.state == RunState.succeeded
    assert run.outputs == {"body": "x" * 90000} and run.usage.tokens == 7


def test_a_small_result_never_reads_the_log() -> None:
    run = run_from_job(job(*COMPLETE), pod("Succeeded", terminated(0, result())), no_log)
    assert run.state == RunState.succeeded


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (None, "its log is gone"),
        ('{"event": "step finished"}', "the last line of its log is not a result"),
        (result(False), "the last line of its log is not the result the step summarized"),
    ],
)
def test_a_large_result_that_cannot_be_read_fails_the_attempt(line: str | None, why: str) -> None:
    summary = result(inLog=True, usage={"tokens": 11, "costUSD": 0.0})
    run = run_from_job(job(*COMPLETE), pod("Succeeded", terminated(0, summary)), lambda n, p: line)
    assert run.state == RunState.failed and run.reason == "ExitCode0"
    assert why in run.message and "cannot be read" in run.message
    assert run.usage.tokens == 11  # what it spent still counts against the budget


# --- failed ---------------------------------------------------------------------


def test_a_job_past_its_deadline_timed_out() -> None:
    deadline = condition(
        "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
    )
    run = run_from_job(job(deadline, failed=1), None, None)
    assert run.state == RunState.failed and run.reason == "TimedOut"
    assert run.message == "Job was active longer than specified deadline"
    assert run.finished_at == T_FINISHED


def test_a_failed_step_reports_its_message_outputs_and_usage() -> None:
    message = result(
        False,
        outputs={"status": 500},
        message="POST https://example.com returned 500",
        usage={"tokens": 12, "costUSD": 0.001},
    )
    run = run_from_job(job(BACKOFF, failed=1), pod("Failed", terminated(1, message)), no_log)
    assert run.state == RunState.failed and run.reason == "ExitCode1"
    assert run.message == "POST https://example.com returned 500"
    assert run.outputs == {"status": 500} and run.usage.tokens == 12
    assert run.finished_at == T_FINISHED


def test_a_step_the_runtime_timed_out_keeps_its_reason_and_partial_outputs() -> None:
    message = result(
        False, outputs={"stdout": "partial"}, message="shell timed out after 2s", reason="TimedOut"
    )
    run = run_from_job(job(BACKOFF, failed=1), pod("Failed", terminated(1, message)), no_log)
    assert run.state == RunState.failed and run.reason == "TimedOut"
    assert run.outputs == {"stdout": "partial"}


def test_a_failed_job_without_its_pod_keeps_the_conditions_reason() -> None:
    run = run_from_job(job(BACKOFF, failed=1), None, None)
    assert run.state == RunState.failed and run.reason == "BackoffLimitExceeded"
    assert run.message == "Job has reached the specified backoff limit"


def test_an_oom_kill_without_a_report_says_so() -> None:
    run = run_from_job(job(BACKOFF), pod("Failed", terminated(137, reason="OOMKilled")), None)
    assert (run.reason, run.message) == ("ExitCode137", "exited 137 (OOMKilled)")


def test_a_complete_job_without_a_report_fails() -> None:
    run = run_from_job(job(*COMPLETE), pod("Succeeded", terminated(0)), None)
    assert (run.state, run.reason) == (RunState.failed, "ExitCode0")
    assert run.message == "exited 0 without a result"


def test_logs_in_place_of_a_report_fail_with_their_redacted_tail() -> None:
    logs = "x" * 2000 + "\nTraceback (most recent call last):\n  password=hunter2\nKilled\n"
    run = run_from_job(job(BACKOFF), pod("Failed", terminated(1, logs)), no_log)
    assert run.state == RunState.failed and run.reason == "ExitCode1"
    assert run.message.startswith("exited 1 without a result: ")
    assert run.message.endswith("Killed")
    assert "hunter2" not in run.message and "password=***REDACTED***" in run.message
    assert len(run.message) <= len("exited 1 without a result: ") + TAIL_CHARS
    # A secret near the start of the tail is masked before the text is cut.
    near = "x" * 2000 + "\npassword=hunter2 " + "y" * (TAIL_CHARS - 12)
    masked = run_from_job(job(BACKOFF), pod("Failed", terminated(1, near)), None).message
    assert "hunter2" not in masked and "ter2" not in masked
    cut = result(outputs={"a": "b"})[:-5]  # a report cut short is no report either
    broken = run_from_job(job(active=1), pod("Failed", terminated(1, cut)), None)
    assert broken.message == f"exited 1 without a result: {cut}"


def test_an_evicted_pod_fails_the_attempt_as_evicted() -> None:
    evicted = pod(
        "Failed",
        {},
        reason="Evicted",
        message="The node was low on resource: memory. Threshold quantity: 100Mi.",
    )
    run = run_from_job(job(active=1), evicted, None)
    assert run.state == RunState.failed and run.reason == "Evicted"
    assert run.message.startswith("The node was low on resource: memory")
    # Once the Job controller counts it, eviction still beats "BackoffLimitExceeded".
    assert run_from_job(job(BACKOFF), evicted, None).reason == "Evicted"


def test_a_drained_pod_fails_the_attempt_as_evicted() -> None:
    drained = pod(
        "Failed",
        terminated(143),
        deletionTimestamp="2026-11-23T10:00:40Z",
        conditions=[
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting",
                "lastTransitionTime": "2026-11-23T10:00:10Z",
            }
        ],
    )
    run = run_from_job(job(BACKOFF), drained, None)
    assert (run.reason, run.message) == ("Evicted", "EvictionByEvictionAPI: Eviction API: evicting")


def test_a_pod_refused_by_its_node_fails_with_the_kubelets_reason() -> None:
    refused = pod(
        "Failed",
        {"waiting": {"reason": "ContainerCreating"}},
        reason="NodeAffinity",
        message="Pod was rejected: Predicate NodeAffinity failed",
    )
    run = run_from_job(job(active=1), refused, None)
    assert (run.state, run.reason) == (RunState.failed, "NodeAffinity")
    assert run.message == "Pod was rejected: Predicate NodeAffinity failed"
    silent = pod("Failed", {})
    assert run_from_job(job(active=1), silent, None).reason == "Failed"


def test_a_pod_deleted_while_the_step_ran_fails_once_it_has_stopped() -> None:
    stopping = pod("Running", deletionTimestamp="2026-11-23T10:01:00Z")
    still = run_from_job(job(active=1), stopping, None)
    assert still.state == RunState.running
    assert still.message == "the pod is being deleted; waiting for the step to stop"
    stopped = pod("Failed", terminated(137), deletionTimestamp="2026-11-23T10:01:00Z")
    run = run_from_job(job(active=1), stopped, None)
    assert (run.state, run.reason) == (RunState.failed, "PodDeleted")
    assert run.message == "the step's pod was deleted while it ran"
    assert run.finished_at == T_FINISHED


# --- running --------------------------------------------------------------------


def test_a_running_job_is_running() -> None:
    run = run_from_job(job(active=1, ready=1), pod(), no_log)
    assert run.state == RunState.running
    assert (run.finished_at, run.reason, run.message, run.outputs) == (None, None, "", {})
    assert run.started_at == T_STARTED
    assert run_from_job(job(active=1), None, None).state == RunState.running  # no pod yet


def test_a_complete_job_waits_for_its_pods_result_to_be_seen() -> None:
    for seen in (None, pod()):
        run = run_from_job(job(*COMPLETE, completion=FINISHED), seen, None)
        assert run.state == RunState.running
        assert run.message == "the Job completed; waiting for its pod's result"


def test_a_pod_that_cannot_start_says_why() -> None:
    pulling = pod(
        "Pending",
        {"waiting": {"reason": "ErrImagePull", "message": 'pull of "x:1" timed out'}},
    )
    run = run_from_job(job(active=1), pulling, None)
    assert (run.state, run.lingering) == (RunState.running, False)  # the kubelet tries again
    assert run.message == 'ErrImagePull: pull of "x:1" timed out'
    creating = pod("Pending", {"waiting": {"reason": "ContainerCreating"}})
    assert run_from_job(job(active=1), creating, None).message == ""
    unschedulable = pod("Pending", {})
    unschedulable["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient memory.",
        }
    ]
    assert run_from_job(job(active=1), unschedulable, None).message == (
        "Unschedulable: 0/3 nodes are available: 3 Insufficient memory."
    )


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ErrImageNeverPull", 'Container image "x:1" is not present with pull policy of Never'),
        ("InvalidImageName", 'Failed to apply default image tag "X::1": invalid reference'),
        ("ImagePullBackOff", 'Back-off pulling image "x:1"'),
    ],
)
def test_a_pod_whose_image_will_not_come_fails_the_attempt_and_lingers(
    reason: str, message: str
) -> None:
    """The Job controller never fails such a Job: the attempt ends here, and the Job,
    which would hold its slot forever, is marked for the operator to stop."""
    stuck = pod("Pending", {"waiting": {"reason": reason, "message": message}})
    run = run_from_job(job(active=1), stuck, None)
    assert (run.state, run.reason, run.lingering) == (
        RunState.failed,
        Reason.image_unavailable,
        True,
    )
    assert run.message == f"{reason}: {message}"
    assert run.finished_at is not None and run.finished_at >= T_STARTED


def test_a_node_that_fails_a_pod_for_its_image_fails_the_attempt_as_image_unavailable() -> None:
    message = 'image "x:1" is not present'
    failed = pod("Failed", {"waiting": {"reason": "ErrImageNeverPull", "message": message}})
    failed["status"] |= {"reason": "ErrImageNeverPull", "message": message}
    run = run_from_job(job(active=1), failed, None)
    assert (run.state, run.reason, run.lingering) == (
        RunState.failed,
        Reason.image_unavailable,
        False,  # the pod has ended: the Job controller ends the Job
    )
    assert run.message == f"ErrImageNeverPull: {message}"


def test_start_time_is_utc() -> None:
    started = job()
    started["status"]["startTime"] = "2026-11-23T12:00:00+02:00"
    run = run_from_job(started, None, None)
    assert run.started_at == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert run.started_at.utcoffset() == timedelta(0)


def test_a_job_let_run_long_after_it_was_made_starts_when_let_run() -> None:
    # Prepared before a store outage, let run after it: the Job controller has not set its
    # startTime yet. Its creation, a minute back, is not when the attempt started (the
    # fault run's Postgres outage timed such attempts out before they ran).
    launched = job()
    del launched["status"]["startTime"]
    launched["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    before = datetime.now(UTC)
    assert before <= run_from_job(launched, None, no_log).started_at <= datetime.now(UTC)


def test_an_emulated_job_without_times_starts_now() -> None:
    bare = copy.deepcopy(CREATED_JOB)  # what an emulator without timestamps hands back
    del bare["metadata"]["annotations"][ANNOTATION_PREPARED]  # let run
    before = datetime.now(UTC)
    run = run_from_job(bare, None, None)
    assert before <= run.started_at <= datetime.now(UTC)
    assert run.state == RunState.running


# --- approvals ------------------------------------------------------------------


def approval(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "agentoperator.io/v1alpha1",
        "kind": "ApprovalRequest",
        "metadata": {
            "name": "nightly-report-publish-1a2b3c4d",
            "namespace": "team-a",
            "uid": "e5f6a7b8-1111-4222-8333-944455556666",
            "resourceVersion": "50001",
            "generation": 1,
            "creationTimestamp": CREATED,
        },
        "spec": {
            "taskRef": {"name": "nightly-report", "uid": UID},
            "stepId": "publish",
            "tool": "http_request",
            "params": {"url": "https://example.com", "method": "POST"},
            "risk": {"level": "high", "requiresApproval": True, "risks": [], "mitigations": []},
            "expiresAt": "2026-11-23T11:00:00Z",
            **spec,
        },
    }
    if status is not None:
        body["status"] = status
    return body


EXPIRES = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [None, {"phase": "Pending"}])
def test_an_undecided_request_is_pending(status: dict[str, Any] | None) -> None:
    view = approval_view(approval(status))
    assert (view.step_id, view.phase, view.expires_at) == (
        "publish",
        ApprovalPhase.pending,
        EXPIRES,
    )
    assert view.decided_by is None and view.reason is None


def test_a_decision_counts_before_the_operator_mirrors_it() -> None:
    view = approval_view(approval(decision="Approved", reason="looks right"))
    assert (view.phase, view.reason, view.decided_by) == (
        ApprovalPhase.approved,
        "looks right",
        None,
    )
    recorded = approval(
        {
            "phase": "Approved",
            "decidedBy": "alice@example.com",
            "decidedAt": "2026-11-23T10:20:00Z",
        },
        decision="Approved",
    )
    assert approval_view(recorded).decided_by == "alice@example.com"


def test_a_rejection_carries_the_reason_and_who() -> None:
    view = approval_view(
        approval({"phase": "Rejected", "decidedBy": "bob"}, decision="Rejected", reason="not today")
    )
    assert (view.phase, view.reason, view.decided_by) == (
        ApprovalPhase.rejected,
        "not today",
        "bob",
    )


def test_who_decided_falls_back_to_the_spec() -> None:
    view = approval_view(approval(decision="Approved", decidedBy="carol"))
    assert view.decided_by == "carol"


def test_expiry_wins_over_a_late_decision() -> None:
    assert approval_view(approval({"phase": "Expired"})).phase == ApprovalPhase.expired
    late = approval({"phase": "Expired"}, decision="Approved", reason="sorry, was away")
    assert approval_view(late).phase == ApprovalPhase.expired
