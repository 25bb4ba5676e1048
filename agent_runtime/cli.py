"""`agent-runtime run-step`: the program a step Job runs.

It trusts nothing it is handed (defense in depth: the operator has already checked the same
rules), runs one tool under a hard deadline and reports a JSON `StepResult` through the pod's
termination message, which Kubernetes caps at 4 KiB; a larger result goes to the checkpoint
store and the message carries its reference. Exit codes: 0 success, 1 the tool failed,
2 the invocation is invalid (retrying cannot help).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent_runtime.executor import run_tool
from agent_runtime.redaction import redact, referenced_variables, secret_values
from agent_runtime.registry import (
    StepInvocation,
    StepResult,
    ToolContext,
    ToolFailure,
    ToolRegistry,
    Usage,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
STEP_ENV = "AGENT_STEP"
STORE_DSN_ENV = "AGENT_OPERATOR_DSN"
TERMINATION_PATH_ENV = "TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MESSAGE_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
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


def check_invocation(invocation: StepInvocation, registry: ToolRegistry) -> None:
    """The operator's rules again, in the pod: tool known and allowed, params, approval."""
    tool = registry.get(invocation.tool)
    if tool is None:
        raise InvalidInvocation(
            f"tool: {invocation.tool!r} is not in this image's registry "
            f"(available: {', '.join(registry.names())})"
        )
    allowed = invocation.allowed_tools
    if allowed is not None and invocation.tool not in allowed:
        raise InvalidInvocation(
            f"tool: {invocation.tool!r} is not in allowedTools "
            f"(allowed: {', '.join(allowed) or 'none'})"
        )
    errors = tool.param_errors(invocation.params)
    if errors:
        raise InvalidInvocation("; ".join(errors))
    if invocation.requires_approval and not invocation.approved_by:
        raise InvalidInvocation("approvedBy: the step requires approval and none was recorded")


def execute(
    invocation: StepInvocation, registry: ToolRegistry, env: Mapping[str, str]
) -> StepResult:
    """Run the step's tool under its timeout and say how it went."""
    tool = registry.get(invocation.tool)
    assert tool is not None  # check_invocation ran first
    timeout = invocation.timeout_seconds or tool.timeout_seconds
    ctx = ToolContext(invocation=invocation, registry=registry, env=env)
    try:
        outcome = run_tool(tool, invocation.params, ctx, timeout)
    except ToolFailure as exc:
        return StepResult(ok=False, outputs=exc.outputs, message=exc.message, usage=exc.usage)
    return StepResult(ok=True, outputs=outcome.outputs, usage=outcome.usage)


def _encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _summary(document: dict[str, Any], ref: str) -> dict[str, Any]:
    """A result that fits the termination message: small outputs kept, the rest marked."""
    outputs = {}
    for key, value in document["outputs"].items():
        size = len(_encode(value))
        outputs[key] = value if size <= MAX_INLINE_VALUE else f"<truncated: {size} bytes in {ref}>"
    message = document["message"]
    if len(message) > MAX_SUMMARY_MESSAGE:
        message = message[: MAX_SUMMARY_MESSAGE - 1] + "…"
    small = {**document, "outputs": outputs, "message": message, "ref": ref}
    if len(_encode(small)) > MESSAGE_LIMIT:
        small["outputs"] = {}  # many keys: the reference alone must do
    return small


def fit_message(
    document: dict[str, Any], invocation: StepInvocation, env: Mapping[str, str]
) -> dict[str, Any]:
    """`document` itself when small; else stored in full, and a summary pointing at it."""
    if len(_encode(document)) <= MESSAGE_LIMIT:
        return document
    from agent_operator.store import Store, StoreError

    try:
        with Store.open(env.get(STORE_DSN_ENV) or None) as store:
            ref = store.save_result(
                invocation.task_uid, invocation.step_id, invocation.attempt, document
            )
    except StoreError as exc:
        failed = StepResult(
            ok=False,
            message="the result is too large for the termination message and the checkpoint "
            f"store could not keep it: {exc}",
            usage=Usage.model_validate(document["usage"]),
        )
        return failed.model_dump(mode="json", by_alias=True)
    return _summary(document, ref)


def report(document: dict[str, Any], termination_log: Path) -> None:
    """Write the result where the kubelet reads it, and as stdout's last line."""
    line = _encode(document).decode()
    try:
        termination_log.write_text(line)
    except OSError as exc:
        _log("termination log not written", path=str(termination_log), error=exc.strerror)
    print(line, flush=True)


def run_step(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    secrets: list[str] = secret_values(env, ())
    invocation: StepInvocation | None = None
    try:
        invocation = load_invocation(args.step_file, env)
        secrets = secret_values(env, referenced_variables(invocation))
        registry = ToolRegistry.default()
        check_invocation(invocation, registry)
        _log(
            "step started",
            task=invocation.task,
            step=invocation.step_id,
            attempt=invocation.attempt,
            tool=invocation.tool,
        )
        result = execute(invocation, registry, env)
        code = EXIT_OK if result.ok else EXIT_FAILED
    except InvalidInvocation as exc:
        result = StepResult(ok=False, message=str(exc))
        code = EXIT_INVALID
    except Exception as exc:  # a bug or a broken tool plugin: say so; the traceback goes to logs
        _log("internal error", traceback=redact(traceback.format_exc(), secrets))
        result = StepResult(ok=False, message=f"internal error: {exc!r}")
        code = EXIT_FAILED
    document = redact(result.model_dump(mode="json", by_alias=True), secrets)
    if invocation is not None:
        document = redact(fit_message(document, invocation, env), secrets)
        if not document["ok"] and code == EXIT_OK:  # the store could not keep the result
            code = EXIT_FAILED
    report(document, args.termination_log)
    _log("step finished", ok=document["ok"], exit=code, ref=document.get("ref"))
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


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    args = _parser(env).parse_args(argv)
    return run_step(args, env)
