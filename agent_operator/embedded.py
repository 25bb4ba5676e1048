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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TextIO

from agent_contract import ToolRegistry
from agent_contract.mcp import MCPEndpoint
from agent_operator.api import (
    AgentPool,
    AgentPoolSpec,
    AgentTask,
    AgentTaskStatus,
    ApprovalPhase,
    MCPServer,
    ObjectMeta,
    PoolModel,
)
from agent_operator.core.decide import (
    ApprovalView,
    Decision,
    Event,
    ExpireApproval,
    RequestApproval,
    StartStep,
    StepRun,
    StopStep,
)
from agent_operator.core.invocation import step_invocation
from agent_operator.core.mcp import pool_registry, step_endpoints
from agent_operator.core.naming import job_name
from agent_operator.core.plan import PlanningResult
from agent_operator.core.summary import summarize
from agent_operator.driver import BackOff, Done, Driver, Key, Recorded
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


class RunnerStopped(Exception):
    """The embedded run cannot go on (the store is unreachable, a defect); `--resume`
    continues it once the cause is mended."""


@dataclass
class EmbeddedRun:
    """Drives one task to a terminal phase through the driver, as the local shell: steps
    are processes, approvals are asked of `approver`, the status lives in memory (and in
    the store's checkpoints)."""

    task: AgentTask
    pool: AgentPool
    store: Store
    executor: LocalExecutor
    approver: Approver
    out: TextIO
    registry: ToolRegistry = field(default_factory=ToolRegistry.default)
    servers: Sequence[MCPServer] = ()  # the file's, their tools listed (`cli.run`)
    approvals: dict[str, ApprovalView] = field(default_factory=dict)
    _acted: bool = False  # the last pass started a step or had an approval answered

    @property
    def uid(self) -> str:
        assert self.task.metadata.uid
        return self.task.metadata.uid

    def run(self) -> AgentTask:
        driver = Driver(self, lambda: self.store, self.registry)
        while True:
            self._acted = False
            outcome = driver.run_pass()
            if isinstance(outcome, Done):
                return self.task
            if isinstance(outcome, BackOff):
                raise RunnerStopped(outcome.error)
            self._wait(outcome.when)

    def _wait(self, until: datetime | None) -> None:
        """Sleep until a step process ends or the time the core asked to look again."""
        if self._acted:
            return
        deadline = until.timestamp() if until else float("inf")
        running = self.executor.running()
        while time.time() < deadline and self.executor.running() == running and running:
            time.sleep(POLL_SECONDS)
        if not running:
            time.sleep(max(0.0, min(deadline - time.time(), 1.0)))

    # --- the driver's Shell --------------------------------------------------------

    def observe_task(self) -> AgentTask:
        return self.task

    def observe_pool(self, task: AgentTask) -> AgentPool:
        return self.pool

    def observe_runs(self, task: AgentTask, ended: Collection[Key]) -> Sequence[StepRun]:
        return self.executor.observe()

    def observe_approvals(self, task: AgentTask) -> Mapping[str, ApprovalView]:
        return dict(self.approvals)

    def free_slots(self, task: AgentTask, pool: AgentPool) -> int | None:
        return max(pool.spec.replicas - self.executor.running(), 0)

    def observe_tools(self, pool: AgentPool) -> ToolRegistry:
        return pool_registry(self.registry, pool.spec, self.servers)

    def plan(self, task: AgentTask, pool: AgentPool, tools: ToolRegistry) -> PlanningResult:
        self._say("planning with the LLM…")
        model = pool.spec.model or PoolModel()
        return asyncio.run(
            plan_with_llm(task.spec, pool.spec, tools, api_key=api_key_from_env(), model=model)
        )

    def prepare(self, task: AgentTask, pool: AgentPool, decision: Decision) -> None:
        """Nothing to prepare: a process cannot be made without running. A runner stopped
        after recording an attempt and before starting its process leaves it lost (only
        this runner knows its processes, so a restarted one cannot tell that from a
        process that ran)."""

    def act(self, task: AgentTask, pool: AgentPool | None, decision: Decision) -> None:
        for action in decision.actions:
            if isinstance(action, StartStep):
                invocation = step_invocation(task, self.pool.spec, action, self._endpoints(action))
                meta = task.metadata
                name = job_name(meta.name, self.uid, action.step_id, action.attempt)
                self.executor.start(invocation, name)
                self._acted = True
            elif isinstance(action, StopStep):
                self.executor.stop(action.step_id, action.attempt, action.reason)
            elif isinstance(action, RequestApproval):
                phase, by, reason = self.approver(action)
                self.approvals[action.step_id] = ApprovalView(
                    action.step_id,
                    phase,
                    action.expires_at,
                    decided_by=by,
                    reason=reason,
                    params_digest=action.digest,
                )
                self._acted = True
            elif isinstance(action, ExpireApproval):
                view = self.approvals[action.step_id]
                self.approvals[action.step_id] = replace(view, phase=ApprovalPhase.expired)

    def _endpoints(self, start: StartStep) -> list[MCPEndpoint]:
        """How the step reaches the MCP tools it calls. The plan was checked against the
        servers' tools, so their servers are the file's."""
        endpoints, _servers = step_endpoints(
            [start.tool, *start.calls], self.servers, self.pool.spec
        )
        return endpoints

    def settle(self, task: AgentTask) -> None:
        """Nothing set aside: one task has the local executor to itself."""

    def write_status(self, task: AgentTask, status: AgentTaskStatus) -> None:
        self.task = task.model_copy(update={"status": status})

    def tell(self, task: AgentTask, recorded: Recorded) -> None:
        for event in recorded.events:
            self._say(_describe(event))

    def _say(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        print(f"{stamp} {self.task.metadata.name}: {text}", file=self.out, flush=True)


def _describe(event: Event) -> str:
    where = f"step {event.step_id}" if event.step_id else "task"
    text = f"{where} {event.reason}"
    return f"{text}: {event.message}" if event.message else text


def resume_state(store: Store, task: AgentTask) -> AgentTask:
    """The task as of its last checkpoint. Its attempts come from the store when the run
    starts; one still recorded as running belonged to the interrupted run and is lost
    (the core's rule): a failed attempt, and the step's retries decide what follows."""
    uid = task.metadata.uid
    assert uid
    checkpoint = store.last_checkpoint(uid)
    status = AgentTaskStatus.model_validate(checkpoint.snapshot) if checkpoint else None
    return task.model_copy(update={"status": status or AgentTaskStatus()})


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
