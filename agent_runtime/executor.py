"""Run one tool call under a hard deadline.

Python cannot kill a thread, so the tool runs in a daemon thread and the caller stops waiting
at the deadline. Tools also receive the deadline (`ToolContext.budget`) and pass it down as
socket, statement and process timeouts, so they normally end on their own just before it;
the short grace lets them report that themselves and clean up (kill a process group).

Tools that start processes put them in process groups of their own and mark them with
`process_group`, so that a step stopped from outside (SIGTERM, see `kill_process_groups`)
leaves nothing running behind it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from agent_runtime.registry import Tool, ToolContext, ToolOutcome, ToolTimeout

__all__ = ["kill_process_groups", "process_group", "run_tool"]

GRACE_SECONDS = 1.0
_GROUPS: set[int] = set()  # process groups that tools of this step started and still run


@contextlib.contextmanager
def process_group(pgid: int) -> Iterator[None]:
    """While the block runs, the group `pgid` is killed with the step (`kill_process_groups`)."""
    _GROUPS.add(pgid)
    try:
        yield
    finally:
        _GROUPS.discard(pgid)


def kill_process_groups() -> None:
    """Kill every process group a tool of this step started and has not yet reaped."""
    for pgid in list(_GROUPS):
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(pgid, signal.SIGKILL)


def run_tool(tool: Tool, params: dict[str, Any], ctx: ToolContext, timeout: float) -> ToolOutcome:
    """Run `tool`, raising `ToolTimeout` ("… timed out after Ns") once `timeout` has passed.

    A deadline already set in `ctx` (a sub-agent's own) also bounds the call.
    """
    deadline = time.monotonic() + timeout
    if ctx.deadline is not None and ctx.deadline < deadline:
        deadline = ctx.deadline
        timeout = max(0.0, deadline - time.monotonic())
    call_ctx = replace(ctx, deadline=deadline)
    outcome: list[ToolOutcome] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(tool.run(params, call_ctx))
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            failure.append(exc)

    worker = threading.Thread(target=target, name=f"tool-{tool.spec.name}", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()) + GRACE_SECONDS)
    message = f"{tool.spec.name} timed out after {timeout:g}s"
    if worker.is_alive():
        raise ToolTimeout(message)
    if failure:
        exc = failure[0]
        if isinstance(exc, ToolTimeout):
            raise ToolTimeout(message, exc.outputs, exc.usage) from exc
        raise exc
    return outcome[0]
