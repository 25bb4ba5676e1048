"""The local executor: each step attempt runs as an `agent-runtime run-step` process.

Used by the embedded default (`agent-operator run -f`) and the tests: the same
StepInvocation a Job would get, handed over through the environment, and the
same JSON result read back from the termination-message file (and, for a large
result, from the last line of the step's log file, as a Job's is from its pod's log).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from agent_contract import MAX_RESULT_BYTES, STEP_ENV, StepInvocation, StepResult, full_result
from agent_operator.core.decide import RunState, StepRun
from agent_operator.core.reasons import exit_code

__all__ = ["LocalExecutor", "read_result"]

STOP_GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL when a step is stopped


@dataclass
class _Process:
    invocation: StepInvocation
    job_name: str
    popen: subprocess.Popen[bytes]
    result_path: Path
    log: IO[bytes]
    started_at: datetime
    stopped: str | None = None
    outcome: StepRun | None = None  # fixed once the process has ended

    def as_running(self) -> StepRun:
        return StepRun(
            step_id=self.invocation.step_id,
            attempt=self.invocation.attempt,
            state=RunState.running,
            started_at=self.started_at,
            job_name=self.job_name,
        )


@dataclass
class LocalExecutor:
    """Starts, stops and observes step processes in `workdir`."""

    workdir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _processes: dict[tuple[str, int], _Process] = field(default_factory=dict)

    def start(self, invocation: StepInvocation, job_name: str) -> None:
        key = (invocation.step_id, invocation.attempt)
        if key in self._processes:
            return  # already started: starting is idempotent, like creating a named Job
        self.workdir.mkdir(parents=True, exist_ok=True)
        result_path = self.workdir / f"{job_name}.result.json"
        result_path.unlink(missing_ok=True)
        log = (self.workdir / f"{job_name}.log").open("wb")
        env = {**self.env, STEP_ENV: invocation.model_dump_json(by_alias=True)}
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent_runtime",
                "run-step",
                "--termination-log",
                str(result_path),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._processes[key] = _Process(
            invocation, job_name, popen, result_path, log, datetime.now(UTC)
        )

    def stop(self, step_id: str, attempt: int, reason: str) -> None:
        """Stop the attempt as the kubelet stops a pod: SIGTERM (the runtime then kills the
        process groups its tools started), SIGKILL after a grace, to the whole group."""
        process = self._processes.get((step_id, attempt))
        if process is not None and process.popen.poll() is None:
            process.stopped = reason
            _signal_group(process.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(STOP_GRACE_SECONDS)
            _signal_group(process.popen.pid, signal.SIGKILL)  # what is left of its group
            process.popen.wait()

    def stop_all(self, reason: str) -> None:
        for step_id, attempt in list(self._processes):
            self.stop(step_id, attempt, reason)

    def running(self) -> int:
        return sum(1 for p in self._processes.values() if p.popen.poll() is None)

    def observe(self) -> list[StepRun]:
        """The state of every attempt started by this executor."""
        return [self._observe(p) for p in self._processes.values()]

    def _observe(self, process: _Process) -> StepRun:
        if process.outcome is None and process.popen.poll() is not None:
            process.log.close()
            process.outcome = self._outcome(process, process.popen.returncode)
        return process.outcome or process.as_running()

    def _outcome(self, process: _Process, code: int) -> StepRun:
        base = process.as_running()
        finished = datetime.now(UTC)
        if process.stopped:
            return replace(
                base,
                state=RunState.failed,
                finished_at=finished,
                message=process.stopped,
                reason=process.stopped,
            )
        result = read_result(process.result_path, code, self.workdir / f"{process.job_name}.log")
        ok = code == 0 and result.ok
        return replace(
            base,
            state=RunState.succeeded if ok else RunState.failed,
            finished_at=finished,
            outputs=result.outputs,
            message=result.message,
            reason=None if ok else result.reason or exit_code(code),
            usage=result.usage,
        )


def _signal_group(pgid: int, signum: int) -> None:
    """Signal every process of a step (each leads its own session, so its group is its pid)."""
    with contextlib.suppress(ProcessLookupError):  # the group has ended
        os.killpg(pgid, signum)


def read_result(path: Path, exit_code: int, log_path: Path) -> StepResult:
    """The step's reported result; a missing or garbled report becomes a clear failure."""
    try:
        result = StepResult.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError):
        tail = log_path.read_text(errors="replace")[-500:] if log_path.exists() else ""
        return StepResult(ok=False, message=f"exited {exit_code} without a result: {tail.strip()}")
    return full_result(result, _last_line(log_path)) if result.in_log else result


def _last_line(log_path: Path) -> str | None:
    """The log's last line, read from its end and bounded like a pod log read."""
    try:
        with log_path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - MAX_RESULT_BYTES - 2))
            tail = log.read()
    except OSError:
        return None
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    if len(lines) == 1 and size > len(tail):  # no line start within the bound: too long
        return tail.decode(errors="replace")
    return lines[-1].decode(errors="replace")
