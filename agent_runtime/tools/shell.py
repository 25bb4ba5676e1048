"""`shell`: run one command, a list of arguments or a string for `/bin/sh -c`.

The command gets a minimal environment (PATH, HOME, locale) plus `env` and the variables
named in `inheritEnv`, so it cannot read the step's secrets unless a plan asks by name.
Output goes to temporary files, not pipes: a chatty command can neither fill memory nor
block, and only the head of stdout and the tail of stderr are kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from typing import IO, Any

from agent_contract.builtin import shell as specs
from agent_contract.builtin.shell import DEFAULT_TIMEOUT
from agent_runtime.executor import process_group
from agent_runtime.registry import Tool, ToolContext, ToolFailure, ToolOutcome, ToolTimeout

__all__ = ["SHELL", "TOOLS"]

BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_MAX_OUTPUT = 16 * 1024
STDERR_TAIL_IN_MESSAGE = 500


def _environment(params: dict[str, Any], ctx: ToolContext) -> dict[str, str]:
    names = [*BASE_ENV, *params.get("inheritEnv", [])]
    env = {name: ctx.env[name] for name in names if name in ctx.env}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(params.get("env", {}))
    return env


def _head(stream: IO[bytes], limit: int) -> tuple[str, bool]:
    stream.seek(0)
    data = stream.read(limit + 1)
    return data[:limit].decode(errors="replace"), len(data) > limit


def _tail(stream: IO[bytes], limit: int) -> tuple[str, bool]:
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - limit))
    return stream.read().decode(errors="replace"), size > limit


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the command and all it started (it leads its own session), then reap it."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _run(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    command = params["command"]
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    limit = int(params.get("maxOutputBytes", DEFAULT_MAX_OUTPUT))
    timeout = ctx.budget(float(params.get("timeoutSeconds", DEFAULT_TIMEOUT)))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            process = subprocess.Popen(
                argv,
                cwd=params.get("cwd"),
                env=_environment(params, ctx),
                stdin=subprocess.PIPE if "stdin" in params else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            raise ToolFailure(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        with process_group(process.pid):
            try:
                process.communicate(params.get("stdin", "").encode() or None, timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            else:
                timed_out = False
            finally:
                _kill_group(process)  # also what the command left running in the background
        stdout, stdout_truncated = _head(out, limit)
        stderr, stderr_truncated = _tail(err, limit)
    outputs = {
        "exitCode": process.returncode,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": stdout_truncated or stderr_truncated,
    }
    if timed_out:
        raise ToolTimeout(f"command timed out after {timeout:g}s", outputs)
    if process.returncode != 0:
        if process.returncode < 0:
            reason = f"was killed by {signal.Signals(-process.returncode).name}"
        else:
            reason = f"exited with code {process.returncode}"
        tail = stderr[-STDERR_TAIL_IN_MESSAGE:].strip()
        raise ToolFailure(f"command {reason}" + (f": {tail}" if tail else ""), outputs)
    return ToolOutcome(outputs=outputs)


SHELL = Tool(specs.SHELL, _run)

TOOLS = [SHELL]
