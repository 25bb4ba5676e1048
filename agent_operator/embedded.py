"""The embedded default: one AgentTask run to the end on this machine, no cluster needed.

The same core as the operator; steps run as local `agent-runtime` processes and
checkpoints go to the store (SQLite unless a DSN is given), so `--resume` picks
up an interrupted run where it stopped.
"""

from __future__ import annotations

import asyncio
import getpass
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TextIO

from agent_contract import ToolRegistry
from agent_operator.api import (
    AgentPool,
    AgentPoolSpec,
    AgentTask,
    AgentTaskStatus,
    ApprovalPhase,
    ObjectMeta,
    PoolModel,
)
from agent_operator.core.decide import (
    ApprovalView,
    Decision,
    Event,
    ExpireApproval,
    Observed,
    PlanWithLLM,
    RequestApproval,
    RunState,
    StartStep,
    StepRun,
    StopStep,
    decide,
)
from agent_operator.core.invocation import step_invocation
from agent_operator.core.naming import job_name
from agent_operator.core.plan import PlanningResult
from agent_operator.core.summary import summarize
from agent_operator.local import LocalExecutor
from agent_operator.planner import api_key_from_env, plan_with_llm
from agent_operator.redact import redact
from agent_operator.store import Store

POLL_SECONDS = 0.2

Approver = Callable[[RequestApproval], tuple[ApprovalPhase, str, str | None]]


def default_pool(namespace: str) -> AgentPool:
    """All registered tools, no model, room for four steps at once."""
    return AgentPool(
        metadata=ObjectMeta(name="default", namespace=namespace), spec=AgentPoolSpec(replicas=4)
    )


@dataclass
class EmbeddedRun:
    """Drives one task: observe, decide, act, checkpoint, until a terminal phase."""

    task: AgentTask
    pool: AgentPool
    store: Store
    executor: LocalExecutor
    approver: Approver
    out: TextIO
    registry: ToolRegistry = field(default_factory=ToolRegistry.default)
    approvals: dict[str, ApprovalView] = field(default_factory=dict)
    planning: PlanningResult | None = None
    previous_runs: list[StepRun] = field(default_factory=list)  # from the run --resume continues
    _recorded: set[tuple[str, int]] = field(default_factory=set)

    @property
    def uid(self) -> str:
        assert self.task.metadata.uid
        return self.task.metadata.uid

    def run(self) -> AgentTask:
        self._save_task()
        while True:
            decision = decide(self._observe())
            self._apply(decision)
            self._record(decision)
            if decision.status.phase.terminal:
                return self.task
            if not any(
                isinstance(a, (StartStep, PlanWithLLM, RequestApproval)) for a in decision.actions
            ):
                self._wait(decision)

    def _observe(self) -> Observed:
        runs = self.previous_runs + self.executor.observe()
        return Observed(
            task=self.task,
            now=datetime.now(UTC),
            pool=self.pool.spec,
            registry=self.registry,
            runs=runs,
            approvals=dict(self.approvals),
            free_slots=max(self.pool.spec.replicas - self.executor.running(), 0),
            planning=self.planning,
        )

    def _wait(self, decision: Decision) -> None:
        """Sleep until a step process ends or the core asked to be woken."""
        until = decision.requeue_at.timestamp() if decision.requeue_at else float("inf")
        running = self.executor.running()
        while time.time() < until and self.executor.running() == running and running:
            time.sleep(POLL_SECONDS)
        if not running:
            time.sleep(max(0.0, min(until - time.time(), 1.0)))

    def _apply(self, decision: Decision) -> None:
        for action in decision.actions:
            if isinstance(action, PlanWithLLM):
                self.planning = self._plan()
            elif isinstance(action, StartStep):
                self._start(action)
            elif isinstance(action, StopStep):
                self.executor.stop(action.step_id, action.attempt, action.reason)
            elif isinstance(action, RequestApproval):
                phase, by, reason = self.approver(action)
                self.approvals[action.step_id] = ApprovalView(
                    action.step_id, phase, action.expires_at, decided_by=by, reason=reason
                )
            elif isinstance(action, ExpireApproval):
                view = self.approvals[action.step_id]
                self.approvals[action.step_id] = ApprovalView(
                    view.step_id, ApprovalPhase.expired, view.expires_at
                )

    def _plan(self) -> PlanningResult:
        self._say("planning with the LLM…")
        model = self.pool.spec.model or PoolModel()
        outcome = asyncio.run(
            plan_with_llm(
                self.task.spec,
                self.pool.spec,
                self.registry,
                api_key=api_key_from_env(),
                model=model,
            )
        )
        return PlanningResult(outcome.plan, outcome.usage, outcome.reason, outcome.message)

    def _start(self, action: StartStep) -> None:
        meta = self.task.metadata
        invocation = step_invocation(self.task, self.pool.spec, action)
        name = job_name(meta.name, self.uid, action.step_id, action.attempt)
        self.store.record_attempt(
            self.uid,
            action.step_id,
            action.attempt,
            phase=RunState.running.value,
            job_name=name,
            started_at=datetime.now(UTC),
        )
        self.executor.start(invocation, name)

    def _record(self, decision: Decision) -> None:
        """Write what changed: finished attempts, the task row, events, the checkpoint."""
        before = self.task.status
        for run in self.executor.observe():
            if run.state != RunState.running and (run.step_id, run.attempt) not in self._recorded:
                self._recorded.add((run.step_id, run.attempt))
                self.store.record_run(self.uid, run)
        status = decision.status
        self.task = self.task.model_copy(update={"status": status})
        self._save_task()
        for event in decision.events:
            self.store.append_event(
                self.uid,
                event.kind,
                step_id=event.step_id,
                attempt=event.attempt,
                message=event.message,
                dedupe_key=event.key,
            )
            self._say(_describe(event))
        if decision.checkpointed(before) and status.checkpoint:
            self.store.record_checkpoint(
                self.uid,
                status.checkpoint.id,
                status.checkpoint.step,
                status.checkpoint.time,
                status.wire(),
            )

    def _save_task(self) -> None:
        status, meta = self.task.status, self.task.metadata
        self.store.upsert_task(
            self.uid,
            namespace=meta.namespace,
            name=meta.name,
            phase=status.phase.value,
            goal=self.task.spec.goal,
            reason=status.reason,
            message=status.message,
            plan=[p.wire() for p in status.plan] if status.plan else None,
            tokens=status.usage.tokens,
            cost_usd=status.usage.cost_usd,
        )

    def _say(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        print(f"{stamp} {self.task.metadata.name}: {text}", file=self.out, flush=True)


def _describe(event: Event) -> str:
    where = f"step {event.step_id}" if event.step_id else "task"
    text = f"{where} {event.reason}"
    return f"{text}: {event.message}" if event.message else text


def resume_state(store: Store, task: AgentTask) -> tuple[AgentTask, list[StepRun]]:
    """The task as of its last checkpoint, and its recorded attempts.

    An attempt still recorded as running belonged to the interrupted run and can
    no longer be watched: it is recorded as failed ("Interrupted") and the step's
    retries decide what happens next.
    """
    uid = task.metadata.uid
    assert uid
    checkpoint = store.last_checkpoint(uid)
    status = AgentTaskStatus.model_validate(checkpoint.snapshot) if checkpoint else None
    runs = []
    for run in store.runs(uid):
        if run.finished_at is None:
            run = replace(
                run,
                state=RunState.failed,
                finished_at=datetime.now(UTC),
                reason="Interrupted",
                message="interrupted: the runner stopped while the step ran",
            )
            store.record_run(uid, run)
        runs.append(run)
    return task.model_copy(update={"status": status or AgentTaskStatus()}), runs


def new_uid() -> str:
    return str(uuid.uuid4())


def terminal_approver(ask: Callable[[str], str], user: str | None = None) -> Approver:
    """Ask at the terminal; anything but y/yes rejects."""

    def approve(request: RequestApproval) -> tuple[ApprovalPhase, str, str | None]:
        risk = request.risk
        answer = ask(
            f"\nstep {request.step_id!r} wants to run {request.tool} ({risk.level} risk)\n"
            f"  params: {summarize(redact(request.params), 400)}\n"
            f"  risks: {'; '.join(risk.risks) or 'none listed'}\n"
            "approve? [y/N] "
        )
        approved = answer.strip().lower() in ("y", "yes")
        phase = ApprovalPhase.approved if approved else ApprovalPhase.rejected
        return (
            phase,
            user or f"local:{getpass.getuser()}",
            None if approved else "rejected at the terminal",
        )

    return approve


def approve_all(request: RequestApproval) -> tuple[ApprovalPhase, str, str | None]:
    return ApprovalPhase.approved, "local:--approve-all", "approved by --approve-all"


def refuse_unattended(request: RequestApproval) -> tuple[ApprovalPhase, str, str | None]:
    return (
        ApprovalPhase.rejected,
        "local:no-terminal",
        "needs approval but no terminal is attached; rerun in a terminal or with --approve-all",
    )
