"""`agent-runtime run-step`: the program a step Job runs.

It trusts nothing it is handed (defense in depth: the operator has already checked the same
rules), runs one tool under the step's timeout (the runtime owns it: a tool that runs into it
ends as `TimedOut` with the outputs it has; the operator steps in only after a grace) and
reports a JSON `StepResult` through the pod's termination message, which Kubernetes caps at
4 KiB, and as stdout's last line. A larger result leaves a summary marked `inLog` in the
termination message, and the operator reads the full one from the pod's log; the step holds
no credential for any store. Exit codes: 0 success, 1 the tool failed, 2 the invocation is
invalid (retrying cannot help).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from pydantic import ValidationError

from agent_contract import (
    DEFAULT_TERMINATION_PATH,
    MAX_RESULT_BYTES,
    MESSAGE_LIMIT,
    STEP_ENV,
    TERMINATION_PATH_ENV,
    TIMED_OUT,
    StepInvocation,
    StepResult,
    Usage,
)
from agent_contract.mcp import granted
from agent_runtime.executor import kill_process_groups, run_tool
from agent_runtime.mcp_tool import mcp_tool
from agent_runtime.redaction import redact, referenced_variables, secret_values
from agent_runtime.registry import Tool, Toolbox, ToolContext, ToolFailure, ToolTimeout

__all__ = [
    "InvalidInvocation",
    "check_invocation",
    "execute",
    "fit_message",
    "main",
    "step_toolbox",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
MAX_INLINE_VALUE = 256  # bytes of one output value kept in a summarised message
MAX_SUMMARY_MESSAGE = 1024


class InvalidInvocation(Exception):
    """The step cannot run as given; the message names the field and what is allowed."""


def _log(event: str, **fields: Any) -> None:
    """One JSON line on stderr (pod logs); never params or outputs, which may be large."""
    print(json.dumps({"event": event, **fields}), file=sys.stderr, flush=True)


def load_invocation(step_file: Path | None, env: Mapping[str, str]) -> StepInvocation:
    """The step from `--step-file` (JSON or YAML) or the `AGENT_STEP` variable (JSON)."""
    if step_file is not None:
        try:
            raw = yaml.safe_load(step_file.read_text())
        except OSError as exc:
            raise InvalidInvocation(
                f"cannot read --step-file {step_file}: {exc.strerror}"
            ) from None
        except yaml.YAMLError as exc:
            raise InvalidInvocation(f"--step-file {step_file} is not JSON or YAML: {exc}") from None
    elif env.get(STEP_ENV):
        try:
            raw = json.loads(env[STEP_ENV])
        except ValueError as exc:
            raise InvalidInvocation(f"{STEP_ENV} is not JSON: {exc}") from None
    else:
        raise InvalidInvocation(f"no step given: set {STEP_ENV} or pass --step-file")
    try:
        return StepInvocation.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'step'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise InvalidInvocation(f"invalid step: {problems}") from None


def step_toolbox(invocation: StepInvocation, toolbox: Toolbox) -> Toolbox:
    """The image's tools and the MCP tools the invocation names (the step's own, or those
    its sub-agent may call)."""
    return toolbox.with_tools(mcp_tool(endpoint) for endpoint in invocation.mcp_tools)


def check_invocation(invocation: StepInvocation, toolbox: Toolbox) -> Tool:
    """The operator's rules again, in the pod: tool known and allowed, params, approval."""
    tool = toolbox.get(invocation.tool)
    if tool is None:
        raise InvalidInvocation(
            f"tool: {invocation.tool!r} is not in this image's registry "
            f"(available: {', '.join(toolbox.names())})"
        )
    allowed = invocation.allowed_tools
    if not granted(invocation.tool, allowed):
        listed = "every built-in, no MCP tool" if allowed is None else ", ".join(allowed)
        raise InvalidInvocation(
            f"tool: {invocation.tool!r} is not in allowedTools (allowed: {listed or 'none'})"
        )
    errors = tool.spec.param_errors(invocation.params)
    if errors:
        raise InvalidInvocation("; ".join(errors))
    if invocation.requires_approval and not invocation.approved_by:
        raise InvalidInvocation("approvedBy: the step requires approval and none was recorded")
    return tool


def execute(
    invocation: StepInvocation, tool: Tool, toolbox: Toolbox, env: Mapping[str, str]
) -> StepResult:
    """Run the step's tool under its timeout and say how it went."""
    timeout = invocation.timeout_seconds or tool.spec.timeout_seconds
    ctx = ToolContext(invocation=invocation, toolbox=toolbox, env=env)
    try:
        outcome = run_tool(tool, invocation.params, ctx, timeout)
    except ToolFailure as exc:
        return StepResult(
            ok=False,
            outputs=exc.outputs,
            message=exc.message,
            reason=TIMED_OUT if isinstance(exc, ToolTimeout) else None,
            usage=exc.usage,
        )
    return StepResult(ok=True, outputs=outcome.outputs, usage=outcome.usage)


def _encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _summary(document: dict[str, Any]) -> dict[str, Any]:
    """A result that fits the termination message: small outputs kept, the rest marked."""
    outputs = {}
    for key, value in document["outputs"].items():
        size = len(_encode(value))
        outputs[key] = (
            value if size <= MAX_INLINE_VALUE else f"<truncated: {size} bytes in the log>"
        )
    message = document["message"]
    if len(message) > MAX_SUMMARY_MESSAGE:
        message = message[: MAX_SUMMARY_MESSAGE - 1] + "…"
    small = {**document, "outputs": outputs, "message": message, "inLog": True}
    if len(_encode(small)) > MESSAGE_LIMIT:
        small["outputs"] = {}  # many keys: the log alone must do
    return small


def fit_message(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The termination message and stdout's last line for the result `document`.

    A small result is both; a larger one leaves a summary in the message (the operator reads
    the full one from the log); one over `MAX_RESULT_BYTES` fails the step instead.
    """
    size = len(_encode(document))
    if size <= MESSAGE_LIMIT:
        return document, document
    if size > MAX_RESULT_BYTES:
        largest = sorted(document["outputs"], key=lambda k: -len(_encode(document["outputs"][k])))
        failed = StepResult(
            ok=False,
            message=f"the result takes {size} bytes as JSON; a step may report at most "
            f"{MAX_RESULT_BYTES} (largest outputs: {', '.join(largest[:3]) or 'none'}); "
            "keep large data where the tool put it and return a reference",
            usage=Usage.model_validate(document["usage"]),
        ).model_dump(mode="json", by_alias=True)
        return failed, failed
    return _summary(document), document


def report(message: dict[str, Any], full: dict[str, Any], termination_log: Path) -> None:
    """Write the message where the kubelet reads it, and the full result as stdout's last line.

    Nothing may follow that line: the operator reads a large result as the log's last line.
    """
    try:
        termination_log.write_text(_encode(message).decode())
    except OSError as exc:
        _log("termination log not written", path=str(termination_log), error=exc.strerror)
    print(_encode(full).decode(), flush=True)


def run_step(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    secrets: list[str] = secret_values(env, ())
    try:
        invocation = load_invocation(args.step_file, env)
        secrets = secret_values(env, referenced_variables(invocation))
        toolbox = step_toolbox(invocation, Toolbox.default())
        tool = check_invocation(invocation, toolbox)
        _log(
            "step started",
            task=invocation.task,
            step=invocation.step_id,
            attempt=invocation.attempt,
            tool=invocation.tool,
        )
        result = execute(invocation, tool, toolbox, env)
        code = EXIT_OK if result.ok else EXIT_FAILED
    except InvalidInvocation as exc:
        result = StepResult(ok=False, message=str(exc))
        code = EXIT_INVALID
    except Exception as exc:  # a bug or a broken tool plugin: say so; the traceback goes to logs
        _log("internal error", traceback=redact(traceback.format_exc(), secrets))
        result = StepResult(ok=False, message=f"internal error: {exc!r}")
        code = EXIT_FAILED
    message, full = fit_message(redact(result.model_dump(mode="json", by_alias=True), secrets))
    if not full["ok"] and code == EXIT_OK:  # too large to report
        code = EXIT_FAILED
    _log("step finished", ok=full["ok"], exit=code, inLog=message.get("inLog", False))
    report(message, full, args.termination_log)
    return code


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent-runtime", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run-step", help="run one step and report its result")
    run.add_argument(
        "--step-file", type=Path, help=f"the step as JSON or YAML (default: ${STEP_ENV})"
    )
    run.add_argument(
        "--termination-log",
        type=Path,
        default=Path(env.get(TERMINATION_PATH_ENV) or DEFAULT_TERMINATION_PATH),
        help=f"where to write the result (default: ${TERMINATION_PATH_ENV} or "
        f"{DEFAULT_TERMINATION_PATH})",
    )
    return parser


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (the pod deleted, the local runner stopping the step): nothing left behind."""
    kill_process_groups()
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    args = _parser(env).parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return run_step(args, env)
    finally:
        kill_process_groups()  # a tool abandoned at its deadline may still have some
