"""The shell tool running real processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent_contract.builtin.shell import SHELL
from agent_runtime.registry import ToolFailure, ToolTimeout
from tests.runtime.helpers import call


def test_argument_list_runs_without_a_shell() -> None:
    outcome = call("shell", {"command": ["echo", "$HOME", "a b"]})
    assert outcome.outputs == {
        "exitCode": 0,
        "stdout": "$HOME a b\n",
        "stderr": "",
        "truncated": False,
    }


def test_string_runs_through_sh() -> None:
    outcome = call("shell", {"command": "echo out; echo err >&2; echo $((6 * 7))"})
    assert outcome.outputs["stdout"] == "out\n42\n"
    assert outcome.outputs["stderr"] == "err\n"


def test_non_zero_exit_fails_with_the_tail_of_stderr() -> None:
    with pytest.raises(ToolFailure) as failure:
        call("shell", {"command": "echo partial; echo 'disk full' >&2; exit 3"})
    assert failure.value.message == "command exited with code 3: disk full"
    assert failure.value.outputs["exitCode"] == 3
    assert failure.value.outputs["stdout"] == "partial\n"


def test_death_by_signal_is_named() -> None:
    with pytest.raises(ToolFailure, match="command was killed by SIGTERM"):
        call("shell", {"command": "kill -TERM $$"})


def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    command = f"sleep 60 & echo $! > {pidfile}; wait"
    with pytest.raises(ToolTimeout):
        call("shell", {"command": command, "timeoutSeconds": 0.5})
    child = int(pidfile.read_text())
    for _ in range(100):  # SIGKILL is delivered asynchronously; wait for it, not for a time
        if not _running(child):
            break
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_environment_is_minimal_unless_asked() -> None:
    env = {"PATH": os.environ["PATH"], "DB_PASSWORD": "hunter22", "HOME": "/home/agent"}
    plain = call("shell", {"command": ["env"]}, env=env)
    assert "DB_PASSWORD" not in plain.outputs["stdout"]
    assert "HOME=/home/agent\n" in plain.outputs["stdout"]
    asked = call(
        "shell",
        {"command": ["env"], "inheritEnv": ["DB_PASSWORD"], "env": {"MODE": "test"}},
        env=env,
    )
    assert "DB_PASSWORD=hunter22\n" in asked.outputs["stdout"]
    assert "MODE=test\n" in asked.outputs["stdout"]


def test_cwd_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "greeting").write_text("hello")
    outcome = call("shell", {"command": "cat greeting; cat", "cwd": str(tmp_path), "stdin": "!"})
    assert outcome.outputs["stdout"] == "hello!"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"command": ["no-such-program-here"]}, "cannot run 'no-such-program-here'"),
        ({"command": ["true"], "cwd": "/no/such/dir"}, "cannot run 'true'"),
    ],
)
def test_commands_that_cannot_start_fail_clearly(params: dict[str, object], message: str) -> None:
    with pytest.raises(ToolFailure, match=message):
        call("shell", params)


def test_output_is_truncated_head_of_stdout_tail_of_stderr() -> None:
    command = "printf 'abcdefghij%.0s' 1 2 3; printf '0123456789' >&2"
    outcome = call("shell", {"command": command, "maxOutputBytes": 4})
    assert outcome.outputs["stdout"] == "abcd"
    assert outcome.outputs["stderr"] == "6789"
    assert outcome.outputs["truncated"] is True


@pytest.mark.parametrize(
    "params",
    [
        {"command": ""},
        {"command": []},
        {"command": ["ls", 1]},
        {"command": "ls", "shell": True},
        {},
    ],
)
def test_invalid_params_are_refused(params: dict[str, object]) -> None:
    assert SHELL.param_errors(params)
