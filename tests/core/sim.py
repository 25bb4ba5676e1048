"""A small driver for decide(): applies its actions to an in-memory world, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from agent_contract import ToolRegistry, Usage
from agent_operator.api import AgentPoolSpec, AgentTask, ApprovalPhase
from agent_operator.core.decide import (
    ApprovalView,
    Decision,
    ExpireApproval,
    LaunchStep,
    Observed,
    PlanningResult,
    RequestApproval,
    RunState,
    ShellFailure,
    StartStep,
    StepRun,
    StopStep,
    decide,
)

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
REGISTRY = ToolRegistry.default()


def make_task(spec: dict[str, Any], name: str = "t") -> AgentTask:
    return AgentTask.model_validate(
        {"metadata": {"name": name, "uid": f"uid-{name}", "generation": 1}, "spec": spec}
    )


@dataclass
class World:
    """The task, its runs and approvals, advanced one decision at a time."""

    task: AgentTask
    now: datetime = T0
    pool: AgentPoolSpec = field(default_factory=AgentPoolSpec)
    free_slots: int | None = None
    registry: ToolRegistry = REGISTRY
    runs: dict[tuple[str, int], StepRun] = field(default_factory=dict)  # live: what executes
    recorded: dict[tuple[str, int], StepRun] = field(default_factory=dict)  # the store's
    approvals: dict[str, ApprovalView] = field(default_factory=dict)
    planning: PlanningResult | None = None
    failure: ShellFailure | None = None  # what a shell found, for decide() to end the task
    decisions: list[Decision] = field(default_factory=list)
    started: list[StartStep] = field(default_factory=list)
    stopped: list[StopStep] = field(default_factory=list)

    def step(self) -> Decision:
        decision = decide(
            Observed(
                task=self.task,
                now=self.now,
                pool=self.pool,
                registry=self.registry,
                recorded=list(self.recorded.values()),
                live=list(self.runs.values()),
                approvals=dict(self.approvals),
                free_slots=self.free_slots,
                planning=self.planning,
                failure=self.failure,
            )
        )
        self.decisions.append(decision)
        self.task = self.task.model_copy(update={"status": decision.status})
        for run in decision.finished:  # record, then act, as the shells do
            self.recorded[(run.step_id, run.attempt)] = run
        for action in decision.actions:
            if isinstance(action, StartStep):  # prepared (or adopted), recorded, let run
                key = (action.step_id, action.attempt)
                assert key not in self.recorded, f"{key} started twice"
                found = self.runs.get(key)
                assert found is None or found.state == RunState.prepared, f"{key} ran already"
                self.started.append(action)
                run = StepRun(action.step_id, action.attempt, RunState.running, self.now)
                self.runs[key] = self.recorded[key] = run
            elif isinstance(action, LaunchStep):
                key = (action.step_id, action.attempt)
                assert key in self.recorded and self.runs[key].state == RunState.prepared
                self.runs[key] = replace(self.runs[key], state=RunState.running)
            elif isinstance(action, StopStep):
                self.stopped.append(action)
                key = (action.step_id, action.attempt)
                if self.runs[key].state == RunState.prepared:  # made, never run: removed
                    del self.runs[key]
                    continue
                self.finish(action.step_id, ok=False, attempt=action.attempt, message=action.reason)
                self.runs[key] = replace(self.runs[key], lingering=False)  # its Job is gone
            elif isinstance(action, RequestApproval):
                self.approvals[action.step_id] = ApprovalView(
                    action.step_id,
                    ApprovalPhase.pending,
                    action.expires_at,
                    params_digest=action.digest,
                    requested_at=self.now,
                )
            elif isinstance(action, ExpireApproval):
                view = self.approvals[action.step_id]
                self.approvals[action.step_id] = replace(view, phase=ApprovalPhase.expired)
        return decision

    def running(self) -> list[StepRun]:
        return [r for r in self.runs.values() if r.state == RunState.running]

    def finish(
        self,
        step_id: str,
        ok: bool = True,
        outputs: dict[str, Any] | None = None,
        attempt: int | None = None,
        message: str = "",
        usage: Usage | None = None,
    ) -> None:
        attempt = attempt or max(a for s, a in self.runs if s == step_id)
        run = self.runs[(step_id, attempt)]
        if run.state != RunState.running:
            return
        self.runs[(step_id, attempt)] = replace(
            run,
            state=RunState.succeeded if ok else RunState.failed,
            finished_at=self.now,
            outputs=outputs or {},
            message=message,
            usage=usage or Usage(),
        )

    def decide_approval(self, step_id: str, phase: ApprovalPhase, by: str = "alice") -> None:
        self.approvals[step_id] = replace(self.approvals[step_id], phase=phase, decided_by=by)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def phase_of(self, step_id: str) -> str:
        return next(s.phase.value for s in self.task.status.steps if s.id == step_id)
