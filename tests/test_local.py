"""The local executor: step attempts as `agent-runtime run-step` processes on this machine."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent_contract import StepInvocation
from agent_operator.core.decide import RunState
from agent_operator.local import LocalExecutor


def _gone(pgid: int, within: float) -> bool:
    """Whether no process of group `pgid` is left, waiting at most `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_stopping_a_shell_step_leaves_nothing_of_it_running(tmp_path: Path) -> None:
    marker = tmp_path / "shell-pgid"
    # The command leads its own process group (the shell tool's) and starts three children;
    # its parent is the runtime, which leads the step's group.
    command = (
        f"sleep 30 & sleep 30 & sleep 30 & echo $$ $PPID > {marker}.tmp; mv {marker}.tmp {marker}"
    )
    step = StepInvocation(
        task="t",
        task_uid="uid-1",
        step_id="s",
        tool="shell",
        params={"command": command + "; wait"},
    )
    executor = LocalExecutor(tmp_path / "runs")
    executor.start(step, "t-s-1")
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the shell step never started its children"
    shell_group, runtime_group = map(int, marker.read_text().split())

    executor.stop("s", 1, "TaskEnded")

    assert _gone(runtime_group, within=10)
    assert _gone(shell_group, within=10)
    [run] = executor.observe()
    assert (run.state, run.reason) == (RunState.failed, "TaskEnded")
