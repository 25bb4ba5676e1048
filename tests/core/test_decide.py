"""decide(): scheduling, retries, limits, approvals, terminal phases and conditions."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from agent_contract import MAX_PARAMS_BYTES, Usage
from agent_operator.api import (
    MAX_DURATION_SECONDS,
    AgentPoolSpec,
    ApprovalPhase,
    StepPhase,
    TaskPhase,
)
from agent_operator.core.decide import (
    DEADLINE_GRACE_SECONDS,
    UNRECORDED_APPROVER,
    EventKind,
    LaunchStep,
    PlanningResult,
    PlanWithLLM,
    RequestApproval,
    RunState,
    ShellFailure,
    StartStep,
    StepRun,
    StopStep,
    backoff,
)
from agent_operator.core.reasons import Reason

from .sim import REGISTRY, T0, World, make_task

NOOP = {"tool": "noop"}


def world(spec: dict, **kwargs) -> World:  # type: ignore[type-arg, no-untyped-def]
    return World(make_task(spec), **kwargs)


def started(decision) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return [(a.step_id, a.attempt) for a in decision.actions if isinstance(a, StartStep)]


def condition(w: World, kind: str) -> tuple[str, str]:
    c = next(c for c in w.task.status.conditions if c.type == kind)
    return c.status.value, c.reason


def test_a_chain_runs_in_order_and_passes_outputs() -> None:
    w = world(
        {
            "steps": [
                {"id": "a", **NOOP},
                {
                    "id": "b",
                    "tool": "noop",
                    "params": {
                        "outputs": {
                            "doubled": "${steps.a.outputs.n}",
                            "text": "n=${steps.a.outputs.n}",
                        }
                    },
                },
            ]
        }
    )
    assert started(w.step()) == [("a", 1)]
    assert started(w.step()) == []  # a still running: nothing new
    w.finish("a", outputs={"n": 21})
    d = w.step()
    assert d.actions == [
        StartStep("b", 1, "noop", {"outputs": {"doubled": 21, "text": "n=21"}}, 10, False, None)
    ]
    w.finish("b", outputs={"doubled": 21})
    d = w.step()
    assert d.status.phase == TaskPhase.succeeded
    assert d.status.outputs == {"b": {"doubled": 21}}
    assert condition(w, "Ready") == ("True", "Succeeded")
    assert d.status.completion_time == T0


def test_independent_steps_start_together_and_the_join_waits_for_both() -> None:
    w = world(
        {
            "steps": [
                {"id": "a", **NOOP, "dependsOn": []},
                {"id": "b", **NOOP, "dependsOn": []},
                {"id": "c", **NOOP, "dependsOn": ["a", "b"]},
            ]
        }
    )
    assert started(w.step()) == [("a", 1), ("b", 1)]
    w.finish("b")
    assert started(w.step()) == []
    w.finish("a")
    assert started(w.step()) == [("c", 1)]


def test_max_parallel_and_pool_capacity_queue_steps_in_plan_order() -> None:
    steps = [{"id": f"s{i}", **NOOP, "dependsOn": []} for i in range(4)]
    w = world({"steps": steps, "limits": {"maxParallel": 2}})
    d = w.step()
    assert started(d) == [("s0", 1), ("s1", 1)]
    assert d.queued == ["s2", "s3"]
    assert w.phase_of("s2") == "Queued"
    w.finish("s1")
    assert started(w.step()) == [("s2", 1)]

    w = world({"steps": steps}, free_slots=1)
    assert started(w.step()) == [("s0", 1)]
    w.free_slots = 0
    w.finish("s0")
    assert started(w.step()) == []
    w.free_slots = 3
    assert started(w.step()) == [("s1", 1), ("s2", 1), ("s3", 1)]


def test_when_false_skips_and_dependents_still_run() -> None:
    w = world(
        {
            "steps": [
                {"id": "check", **NOOP},
                {"id": "fix", **NOOP, "when": "steps.check.outputs.broken == true"},
                {"id": "report", **NOOP},
            ]
        }
    )
    w.step()
    w.finish("check", outputs={"broken": False})
    d = w.step()
    assert w.phase_of("fix") == "Skipped"
    assert started(d) == [("report", 1)]
    w.finish("report")
    assert w.step().status.phase == TaskPhase.succeeded
    assert "1 skipped" in (w.task.status.message or "")


def test_params_too_large_after_substitution_fail_the_step_instead_of_its_start() -> None:
    w = world(
        {
            "steps": [
                {"id": "a", **NOOP},
                {"id": "b", "tool": "noop", "params": {"x": "${steps.a.outputs.blob}"}},
            ]
        }
    )
    w.step()
    w.finish("a", outputs={"blob": "x" * MAX_PARAMS_BYTES})
    d = w.step()
    assert started(d) == []
    assert d.status.phase == TaskPhase.failed
    b = d.status.steps[1]
    assert (b.phase, b.reason) == (StepPhase.failed, "ParamsTooLarge")
    assert f"at most {MAX_PARAMS_BYTES} bytes" in (b.message or "")


def test_a_missing_output_key_fails_the_step_clearly() -> None:
    w = world(
        {
            "steps": [
                {"id": "a", **NOOP},
                {"id": "b", "tool": "noop", "params": {"x": "${steps.a.outputs.missing}"}},
            ]
        }
    )
    w.step()
    w.finish("a", outputs={"present": 1})
    d = w.step()
    assert d.status.phase == TaskPhase.failed
    b = d.status.steps[1]
    assert (b.phase, b.reason) == (StepPhase.failed, "MissingOutput")
    assert "the outputs of step 'a' has no key 'missing'" in (b.message or "")
    assert "step 'b' failed" in (d.status.message or "")


def test_a_when_that_cannot_be_evaluated_fails_the_step() -> None:
    w = world(
        {"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP, "when": "steps.a.outputs.nope > 1"}]}
    )
    w.step()
    w.finish("a")
    d = w.step()
    assert d.status.steps[1].reason == "WhenError"
    assert d.status.phase == TaskPhase.failed


def test_retries_back_off_exponentially_then_fail() -> None:
    w = world({"steps": [{"id": "a", **NOOP, "retries": 2}], "limits": {"backoffSeconds": 10}})
    w.step()
    w.finish("a", ok=False, message="boom")
    d = w.step()
    assert started(d) == [] and w.phase_of("a") == "Retrying"
    assert d.requeue_at == T0 + timedelta(seconds=10)
    assert [e.kind for e in d.events] == [EventKind.step_retried]
    w.advance(10)
    assert started(w.step()) == [("a", 2)]
    w.finish("a", ok=False, message="boom")
    w.advance(19)
    assert started(w.step()) == []  # second backoff is 20s
    w.advance(1)
    assert started(w.step()) == [("a", 3)]
    w.finish("a", ok=False, message="boom again")
    d = w.step()
    assert d.status.phase == TaskPhase.failed
    assert d.status.reason == "StepFailed"
    assert "failed after 3 attempts: boom again" in (d.status.message or "")
    assert backoff(10, 20) == timedelta(minutes=10)


def test_a_step_the_runtime_did_not_end_is_stopped_after_its_timeout_and_grace() -> None:
    w = world(
        {
            "steps": [{"id": "a", **NOOP, "timeoutSeconds": 30, "retries": 1}],
            "limits": {"backoffSeconds": 0},
        }
    )
    d = w.step()
    deadline = T0 + timedelta(seconds=30 + DEADLINE_GRACE_SECONDS)
    assert d.requeue_at == deadline
    w.advance(30)  # the runtime's own deadline: its report of TimedOut is on its way
    d = w.step()
    assert d.actions == [] and w.phase_of("a") == "Running"
    w.advance(DEADLINE_GRACE_SECONDS - 1)
    assert w.step().actions == []
    w.advance(1)
    d = w.step()
    assert StopStep("a", 1, "TimedOut") in d.actions
    assert started(d) == [("a", 2)]


def test_an_attempt_that_ended_but_lingers_is_stopped_once_and_retried() -> None:
    """A pod whose image never comes ends its attempt in the shell's view, but its Job
    would hold the pool's slot forever: decide() stops it, then retries as for any failure."""
    w = world({"steps": [{"id": "a", **NOOP, "retries": 1}], "limits": {"backoffSeconds": 0}})

    def image_missing(attempt: int) -> None:
        w.runs[("a", attempt)] = replace(
            w.runs[("a", attempt)],
            state=RunState.failed,
            finished_at=w.now,
            reason=Reason.image_unavailable,
            message='ErrImageNeverPull: image "x:1" is not present',
            lingering=True,
        )

    w.step()
    image_missing(1)
    d = w.step()
    assert StopStep("a", 1, Reason.image_unavailable) in d.actions
    assert started(d) == [("a", 2)]
    assert not any(isinstance(a, StopStep) for a in w.step().actions)  # stopped: no more
    image_missing(2)
    d = w.step()
    assert StopStep("a", 2, Reason.image_unavailable) in d.actions
    assert (d.status.phase, d.status.reason) == (TaskPhase.failed, Reason.step_failed)
    assert 'failed after 2 attempts: ErrImageNeverPull: image "x:1"' in (d.status.message or "")


def test_failure_stops_new_work_but_lets_running_steps_finish() -> None:
    w = world(
        {
            "steps": [
                {"id": "a", **NOOP, "dependsOn": []},
                {"id": "b", **NOOP, "dependsOn": []},
                {"id": "c", **NOOP, "dependsOn": ["a"]},
            ]
        }
    )
    w.step()
    w.finish("a", ok=False)
    d = w.step()
    assert d.status.phase == TaskPhase.running and started(d) == []
    w.finish("b")
    assert w.step().status.phase == TaskPhase.failed


def test_deadline_and_budgets_stop_running_steps() -> None:
    w = world(
        {
            "steps": [{"id": "a", **NOOP, "timeoutSeconds": 999}],
            "limits": {"activeDeadlineSeconds": 60},
        }
    )
    d = w.step()
    assert d.requeue_at == T0 + timedelta(seconds=60)
    w.advance(60)
    d = w.step()
    assert (d.status.phase, d.status.reason) == (TaskPhase.failed, "DeadlineExceeded")
    assert StopStep("a", 1, "TaskEnded") in d.actions

    w = world({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP}], "limits": {"maxTokens": 100}})
    w.step()
    w.finish("a", usage=Usage(tokens=150, cost_usd=0.01))
    d = w.step()
    assert (d.status.phase, d.status.reason) == (TaskPhase.failed, "BudgetExceeded")
    assert "used 150 tokens; spec.limits.maxTokens is 100" in (d.status.message or "")

    w = world({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP}], "limits": {"maxCostUSD": 0.5}})
    w.step()
    w.finish("a", usage=Usage(tokens=1, cost_usd=0.75))
    assert w.step().status.reason == "BudgetExceeded"


def test_suspend_starts_nothing_new_and_resume_continues() -> None:
    w = world({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP}]})
    w.step()
    w.task.spec.suspend = True
    w.finish("a")
    d = w.step()
    assert started(d) == []
    assert condition(w, "Progressing") == ("False", "Suspended")
    w.task.spec.suspend = False
    assert started(w.step()) == [("b", 1)]


def test_deletion_cancels_and_stops_running_steps() -> None:
    w = world({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP}]})
    w.step()
    w.task.metadata.deletion_timestamp = T0
    d = w.step()
    assert d.status.phase == TaskPhase.cancelled
    assert StopStep("a", 1, "TaskEnded") in d.actions
    assert [e.kind for e in d.events][-1] == EventKind.task_cancelled


def risky(on_reject: str = "fail") -> World:
    return world(
        {
            "steps": [{"id": "boom", "tool": "fail", "params": {}}, {"id": "after", **NOOP}],
            "safety": {
                "requireApprovalFor": ["fail"],
                "onReject": on_reject,
                "approvalTimeoutSeconds": 600,
            },
        }
    )


def test_approval_requested_then_approved_runs_with_the_approver() -> None:
    w = risky()
    d = w.step()
    request = next(a for a in d.actions if isinstance(a, RequestApproval))
    assert request.expires_at == T0 + timedelta(seconds=600)
    assert request.risk.requires_approval
    assert d.status.phase == TaskPhase.waiting_approval
    assert condition(w, "Approved") == ("False", "WaitingForApproval")
    assert not [a for a in w.step().actions if isinstance(a, RequestApproval)]  # asked once
    w.decide_approval("boom", ApprovalPhase.approved, by="alice")
    d = w.step()
    start = next(a for a in d.actions if isinstance(a, StartStep))
    assert (start.requires_approval, start.approved_by) == (True, "alice")
    assert EventKind.approval_decided in [e.kind for e in d.events]
    assert condition(w, "Approved") == ("True", "NoApprovalPending")


def test_approval_without_a_recorded_approver_still_runs_the_step() -> None:
    """Without the chart's admission policy nobody names the approver; Approved still counts."""
    w = risky()
    w.step()
    w.approvals["boom"] = replace(w.approvals["boom"], phase=ApprovalPhase.approved)
    assert w.approvals["boom"].decided_by is None
    start = next(a for a in w.step().actions if isinstance(a, StartStep))
    assert (start.requires_approval, start.approved_by) == (True, UNRECORDED_APPROVER)


def test_rejection_fails_or_skips_by_on_reject() -> None:
    w = risky("fail")
    w.step()
    w.decide_approval("boom", ApprovalPhase.rejected)
    d = w.step()
    assert (d.status.phase, d.status.reason) == (TaskPhase.failed, "ApprovalRejected")

    w = risky("skip")
    w.step()
    w.decide_approval("boom", ApprovalPhase.rejected)
    d = w.step()
    assert w.phase_of("boom") == "Skipped"
    assert started(d) == [("after", 1)]


def test_an_approval_that_expires_fails_the_task() -> None:
    w = risky()
    d = w.step()
    assert d.requeue_at == T0 + timedelta(seconds=600)
    w.advance(600)
    d = w.step()
    assert (d.status.phase, d.status.reason) == (TaskPhase.failed, "ApprovalExpired")
    assert w.approvals["boom"].phase == ApprovalPhase.expired


def test_a_critical_step_waits_for_its_change_window() -> None:
    from .test_plan import RISKY

    spec = {
        "steps": [{"id": "drop", "tool": "t-critical"}],
        "safety": {"level": "permissive", "criticalWindow": {"start": "22:00", "end": "23:00"}},
    }
    w = world(spec, registry=RISKY)
    w.step()
    w.decide_approval("drop", ApprovalPhase.approved)
    d = w.step()
    assert started(d) == [] and w.task.status.steps[0].reason == "OutsideChangeWindow"
    assert d.requeue_at == T0.replace(hour=22)
    w.now = T0.replace(hour=22)
    assert started(w.step()) == [("drop", 1)]


def test_the_longest_durations_the_schema_allows_still_decide() -> None:
    from .test_plan import RISKY

    longest = {"approvalTimeoutSeconds": MAX_DURATION_SECONDS}
    w = world(
        {
            "steps": [{"id": "a", "tool": "t-critical"}],
            "safety": {**longest, "criticalWindow": {"start": "23:59", "end": "00:00"}},
            "limits": {"activeDeadlineSeconds": MAX_DURATION_SECONDS},
        },
        registry=RISKY,
    )
    assert w.step().requeue_at == T0 + timedelta(seconds=MAX_DURATION_SECONDS)
    w.decide_approval("a", ApprovalPhase.approved)
    assert w.step().requeue_at == T0.replace(hour=23, minute=59)


def test_llm_planning_is_asked_for_then_applied_or_fails_with_planned_false() -> None:
    w = world({"goal": "restart the broken pods"})
    d = w.step()
    assert d.actions == [PlanWithLLM()] and d.status.phase == TaskPhase.planning
    assert condition(w, "Planned") == ("Unknown", "Planning")
    w.planning = PlanningResult(
        plan=None, usage=Usage(tokens=30), reason="InvalidPlan", message="step 'x' ..."
    )
    d = w.step()
    assert (d.status.phase, d.status.reason) == (TaskPhase.failed, "InvalidPlan")
    assert condition(w, "Planned") == ("False", "InvalidPlan")
    assert d.status.usage.tokens == 30

    from agent_operator.core.plan import build_plan

    w = world({"goal": "do it"})
    w.step()
    spec = make_task({"steps": [{"id": "only", **NOOP}]}).spec
    assert spec.steps
    plan = build_plan(spec.steps, spec, AgentPoolSpec(), REGISTRY)
    w.planning = PlanningResult(plan=plan, usage=Usage(tokens=40, cost_usd=0.001))
    d = w.step()
    assert started(d) == [("only", 1)]
    w.finish("only", usage=Usage(tokens=2))
    assert w.step().status.usage.tokens == 42


def test_an_invalid_static_plan_fails_without_starting_anything() -> None:
    w = world({"steps": [{"id": "a", "tool": "nope"}]})
    d = w.step()
    assert d.actions == [] and (d.status.phase, d.status.reason) == (
        TaskPhase.failed,
        "InvalidPlan",
    )
    assert "unknown tool 'nope'" in (d.status.message or "")


def test_a_terminal_task_is_left_alone() -> None:
    w = world({"steps": [{"id": "a", **NOOP}]})
    w.step()
    w.finish("a")
    done = w.step().status
    d = w.step()
    assert d.status == done and d.actions == [] and d.events == []


def test_checkpoints_after_planning_and_each_finished_step() -> None:
    w = world({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP}]})
    first = w.step().status.checkpoint
    assert first is not None and (first.id, first.step) == (1, None)
    assert w.step().status.checkpoint == first  # nothing finished: same checkpoint
    w.finish("a")
    second = w.step().status.checkpoint
    assert second is not None and (second.id, second.step) == (2, "a")


def test_conditions_keep_transition_time_and_carry_generation() -> None:
    w = world({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP}]})
    w.step()
    w.advance(5)
    w.step()
    planned = next(c for c in w.task.status.conditions if c.type == "Planned")
    assert planned.last_transition_time == T0 and planned.observed_generation == 1
    assert w.task.status.observed_generation == 1


def test_a_restart_reobserving_the_same_runs_starts_nothing_twice() -> None:
    w = world({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP}]})
    w.step()
    w.finish("a")
    w.step()
    fresh = make_task({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP}]})
    restarted = World(fresh, runs=dict(w.runs))  # status lost: only the runs are observed
    assert started(restarted.step()) == []


def test_a_started_attempt_whose_job_is_gone_is_lost_and_counts_as_a_failed_attempt() -> None:
    """Issue 9.1: the store says attempt 1 started; its Job vanished before its outcome was
    recorded. It must not start again under the same attempt number."""
    w = world({"steps": [{"id": "a", **NOOP}]})  # retries: 0
    assert started(w.step()) == [("a", 1)]
    del w.runs[("a", 1)]  # the Job is gone (TTL during a store outage, kubectl delete job)
    d = w.step()
    assert started(d) == []
    assert [(r.step_id, r.attempt, r.reason) for r in d.finished] == [("a", 1, "Lost")]
    assert (d.status.phase, d.status.reason) == (TaskPhase.failed, "StepFailed")
    assert "gone" in (d.status.message or "")


def prepare(w: World, step_id: str, attempt: int = 1) -> None:
    """The executor holds the attempt made but not let run (a suspended Job)."""
    w.runs[(step_id, attempt)] = StepRun(step_id, attempt, RunState.prepared, w.now)


def test_a_recorded_attempt_still_prepared_is_let_run_not_lost() -> None:
    # Killed after recording attempt 1 and before letting its Job run.
    w = world({"steps": [{"id": "a", **NOOP}]})
    w.step()
    prepare(w, "a")
    d = w.step()
    assert d.actions == [LaunchStep("a", 1)] and d.finished == []
    assert w.phase_of("a") == "Running"
    w.finish("a")
    assert w.step().status.phase == TaskPhase.succeeded


def test_an_unrecorded_prepared_attempt_is_adopted_by_the_start_that_made_it() -> None:
    # Killed after making attempt 1's Job and before recording it: the next decision
    # starts the same attempt, and the start adopts that Job.
    w = world({"steps": [{"id": "a", **NOOP}]})
    prepare(w, "a")
    d = w.step()
    assert started(d) == [("a", 1)]
    assert [a for a in d.actions if not isinstance(a, StartStep)] == []


def test_an_unrecorded_prepared_attempt_takes_the_slot_it_holds() -> None:
    # The executor counts the prepared Job's slot as taken (free_slots 0): its own start
    # fills that slot, rather than removing the Job and making it again.
    w = world({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP, "dependsOn": []}]}, free_slots=0)
    prepare(w, "a")
    d = w.step()
    assert started(d) == [("a", 1)] and d.queued == ["b"]


def test_a_prepared_attempt_the_decision_does_not_start_or_let_run_is_removed() -> None:
    orphan = world({"steps": [{"id": "a", **NOOP}]})
    prepare(orphan, "a")  # not recorded
    orphan.failure = ShellFailure(Reason.pool_not_found, "no pool")
    d = orphan.step()
    assert d.actions == [StopStep("a", 1, Reason.unrecorded)] and d.finished == []
    assert orphan.runs == {}

    recorded = world({"steps": [{"id": "a", **NOOP}]})
    recorded.step()
    prepare(recorded, "a")  # recorded: it would be let run, but the task fails first
    recorded.failure = ShellFailure(Reason.pool_not_found, "no pool")
    d = recorded.step()
    assert d.actions == [StopStep("a", 1, Reason.task_failed)]
    assert [(r.step_id, r.reason) for r in d.finished] == [("a", Reason.task_failed)]


def test_a_recorded_prepared_attempt_does_not_time_out_before_it_runs() -> None:
    # The operator was away longer than the step's timeout after recording the attempt:
    # its timeout counts from when it is let run, not from the record.
    w = world({"steps": [{"id": "a", **NOOP, "timeoutSeconds": 60}]})
    w.step()
    prepare(w, "a")
    w.advance(120 + DEADLINE_GRACE_SECONDS)
    d = w.step()
    assert d.actions == [LaunchStep("a", 1)] and d.finished == []


def test_a_lost_attempt_is_retried_as_the_next_attempt_when_retries_allow() -> None:
    w = world({"steps": [{"id": "a", **NOOP, "retries": 1}], "limits": {"backoffSeconds": 0}})
    w.step()
    del w.runs[("a", 1)]
    d = w.step()
    assert started(d) == [("a", 2)]
    assert w.recorded[("a", 1)].reason == "Lost"


def test_a_recorded_end_is_final_and_recorded_once() -> None:
    w = world({"steps": [{"id": "a", **NOOP}, {"id": "b", **NOOP}]})
    w.step()
    w.finish("a", outputs={"n": 1})
    d = w.step()
    assert [(r.step_id, r.state.value) for r in d.finished] == [("a", "Succeeded")]
    w.runs[("a", 1)] = replace(w.runs[("a", 1)], outputs={"n": 2})  # a late, different word
    d = w.step()
    assert d.finished == []
    assert w.recorded[("a", 1)].outputs == {"n": 1}


def test_a_stopped_attempt_is_recorded_with_the_reason_it_was_stopped() -> None:
    w = world({"steps": [{"id": "a", **NOOP, "timeoutSeconds": 30}]})
    w.step()
    w.advance(30 + DEADLINE_GRACE_SECONDS)
    d = w.step()
    assert [(r.step_id, r.attempt, r.reason) for r in d.finished] == [("a", 1, "TimedOut")]


def test_the_approval_decision_is_audited_with_who_decided_and_why() -> None:
    """Issue 9.9: the approval_decided event said `Starting`, with no approver and no reason."""
    w = risky()
    w.step()
    w.approvals["boom"] = replace(
        w.approvals["boom"], phase=ApprovalPhase.approved, decided_by="alice", reason="fine"
    )
    d = w.step()
    decided = [e for e in d.events if e.kind == EventKind.approval_decided]
    assert [(e.reason, e.message) for e in decided] == [("StepApproved", "approved by alice: fine")]


def test_a_failure_found_by_the_shell_ends_the_task_through_the_core() -> None:
    """Issue 9.9: failures decided in a shell go through decide(), so they are recorded,
    get events and conditions, and stop what still runs."""
    w = world({"steps": [{"id": "a", **NOOP}]})
    w.step()
    w.failure = ShellFailure("InvalidPoolTemplate", "the template is unsafe")
    d = w.step()
    assert (d.status.phase, d.status.reason) == (TaskPhase.failed, "InvalidPoolTemplate")
    assert StopStep("a", 1, "TaskFailed") in d.actions
    assert [(r.step_id, r.reason) for r in d.finished] == [("a", "TaskFailed")]
    assert [e.kind for e in d.events][-1] == EventKind.task_finished
    ready = next(c for c in d.status.conditions if c.type == "Ready")
    assert (ready.status.value, ready.reason) == ("False", "InvalidPoolTemplate")


def test_a_suspended_task_asks_no_approval_and_tells_of_none() -> None:
    """Issue 9.18: a suspended task emitted ApprovalRequested without creating a request."""
    w = risky()
    w.task.spec.suspend = True
    d = w.step()
    assert not [a for a in d.actions if isinstance(a, RequestApproval)]
    assert EventKind.approval_requested not in [e.kind for e in d.events]
    assert w.phase_of("boom") == "Pending"
    w.task.spec.suspend = False
    d = w.step()
    assert [a.step_id for a in d.actions if isinstance(a, RequestApproval)] == ["boom"]
    assert EventKind.approval_requested in [e.kind for e in d.events]


def test_a_static_plans_params_stay_in_the_spec_and_out_of_the_status() -> None:
    """Issue 9.12: status.plan copied every step's params, so a task with large params
    could never write its status (etcd's request limit)."""
    big = "x" * 100_000
    w = world({"steps": [{"id": "a", "tool": "noop", "params": {"outputs": {"blob": big}}}]})
    d = w.step()
    assert [a.params for a in d.actions if isinstance(a, StartStep)] == [{"outputs": {"blob": big}}]
    assert len(json.dumps(d.status.wire())) < 2_000
    restarted = World(make_task(w.task.spec.wire()), runs=dict(w.runs))
    restarted.task = restarted.task.model_copy(update={"status": d.status})
    w.finish("a", outputs={"blob": "small"})
    restarted.runs = dict(w.runs)
    assert restarted.step().status.phase == TaskPhase.succeeded


def test_every_reason_the_core_reports_is_one_of_the_documented_reasons() -> None:
    """Issue 9.18: reasons were bare strings matched in several places; now one enum."""
    w = world(
        {
            "steps": [
                {"id": "a", **NOOP, "retries": 1},
                {"id": "b", **NOOP, "when": "steps.a.outputs.n > 5"},
                {"id": "c", "tool": "fail", "params": {}},
            ],
            "limits": {"backoffSeconds": 0},
            "safety": {"requireApprovalFor": ["fail"]},
        }
    )
    seen = set()
    for _ in range(6):
        d = w.step()
        seen |= {s.reason for s in d.status.steps if s.reason} | {d.status.reason}
        for run in w.running():
            w.finish(run.step_id, ok=run.attempt > 1, outputs={"n": 1})
        for step_id, view in w.approvals.items():
            if view.phase == ApprovalPhase.pending:
                w.decide_approval(step_id, ApprovalPhase.rejected)
    assert seen and seen <= {r.value for r in Reason}, seen - {r.value for r in Reason}
