"""`agent-runtime run-step` end to end, as the step Job's container runs it: a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_contract import MESSAGE_LIMIT
from tests.support.openai_server import ScriptedOpenAI

BIN = Path(sys.executable).parent
STEP = {"task": "demo", "taskUID": "uid-1", "stepId": "s1", "tool": "noop"}


@dataclass
class Run:
    code: int
    result: dict[str, Any]  # what the termination log holds
    raw: str
    stdout: str
    stderr: str


def run_step(
    tmp_path: Path,
    step: dict[str, Any] | None,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    command: list[str] | None = None,
) -> Run:
    log = tmp_path / "termination-log"
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        **(env or {}),
    }
    if step is not None:
        environment["AGENT_STEP"] = json.dumps(step)
    done = subprocess.run(
        [
            *(command or [str(BIN / "agent-runtime")]),
            "run-step",
            "--termination-log",
            str(log),
            *(args or []),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    raw = log.read_text() if log.is_file() else ""
    assert "Traceback" not in done.stderr, done.stderr
    if raw:
        assert done.stdout.splitlines()[-1] == raw
    return Run(done.returncode, json.loads(raw) if raw else {}, raw, done.stdout, done.stderr)


def test_success_reports_outputs(tmp_path: Path) -> None:
    run = run_step(tmp_path, {**STEP, "params": {"outputs": {"answer": 42}}})
    assert run.code == 0
    assert run.result == {
        "ok": True,
        "outputs": {"answer": 42},
        "message": "",
        "reason": None,
        "usage": {"tokens": 0, "costUSD": 0.0},
        "inLog": False,
    }
    events = [json.loads(line)["event"] for line in run.stderr.splitlines()]
    assert events == ["step started", "step finished"]


def test_step_file_in_yaml_via_python_module(tmp_path: Path) -> None:
    step_file = tmp_path / "step.yaml"
    step_file.write_text(
        "task: demo\ntaskUID: uid-1\nstepId: s1\ntool: shell\nparams:\n  command: [echo, hi]\n"
    )
    run = run_step(
        tmp_path,
        None,
        args=["--step-file", str(step_file)],
        command=[sys.executable, "-m", "agent_runtime"],
    )
    assert run.code == 0
    assert run.result["outputs"]["stdout"] == "hi\n"


def test_tool_failure_exits_1_with_its_message(tmp_path: Path) -> None:
    run = run_step(
        tmp_path, {**STEP, "tool": "shell", "params": {"command": "echo no >&2; exit 4"}}
    )
    assert run.code == 1
    assert run.result["ok"] is False
    assert run.result["message"] == "command exited with code 4: no"
    assert run.result["outputs"]["exitCode"] == 4


def test_fail_with_attempts_fails_those_attempts_and_succeeds_on_a_later_one(
    tmp_path: Path,
) -> None:
    fails_twice = {**STEP, "tool": "fail", "params": {"attempts": 2}}
    codes = [run_step(tmp_path, {**fails_twice, "attempt": n}).code for n in (1, 2, 3)]
    assert codes == [1, 1, 0]
    assert run_step(tmp_path, {**fails_twice, "attempt": 3}).result["outputs"] == {"attempt": 3}


def test_a_tool_past_the_steps_timeout_reports_timed_out_with_its_partial_outputs(
    tmp_path: Path,
) -> None:
    params = {"command": "echo partial; sleep 30"}
    run = run_step(tmp_path, {**STEP, "tool": "shell", "params": params, "timeoutSeconds": 1})
    assert run.code == 1
    assert run.result["reason"] == "TimedOut"
    assert run.result["message"] == "shell timed out after 1s"
    assert run.result["outputs"]["stdout"] == "partial\n"


def test_invalid_params_exit_2_naming_field_and_allowed_values(tmp_path: Path) -> None:
    params = {"url": "http://a/", "method": "FETCH"}
    run = run_step(tmp_path, {**STEP, "tool": "http_request", "params": params})
    assert run.code == 2
    assert run.result["ok"] is False
    assert run.result["message"].startswith("params.method: 'FETCH' is not one of ['GET', 'HEAD'")


def test_unparseable_step_exits_2(tmp_path: Path) -> None:
    run = run_step(tmp_path, None, env={"AGENT_STEP": "{not json"})
    assert run.code == 2
    assert run.result["message"].startswith("AGENT_STEP is not JSON")


def test_missing_approval_is_refused(tmp_path: Path) -> None:
    params = {"command": "touch ran", "cwd": str(tmp_path)}
    step = {**STEP, "tool": "shell", "params": params, "requiresApproval": True}
    refused = run_step(tmp_path, step)
    assert refused.code == 2
    assert refused.result["message"] == (
        "approvedBy: the step requires approval and none was recorded"
    )
    assert not (tmp_path / "ran").exists()
    approved = run_step(tmp_path, {**step, "approvedBy": "alice"})
    assert approved.code == 0
    assert (tmp_path / "ran").exists()


def test_tool_outside_allowed_tools_is_refused(tmp_path: Path) -> None:
    step = {**STEP, "tool": "shell", "params": {"command": "true"}, "allowedTools": ["noop"]}
    run = run_step(tmp_path, step)
    assert run.code == 2
    assert run.result["message"] == "tool: 'shell' is not in allowedTools (allowed: noop)"


def test_timeout_gives_up_at_the_deadline(tmp_path: Path) -> None:
    step = {**STEP, "tool": "sleep", "params": {"seconds": 60}, "timeoutSeconds": 0.5}
    run = run_step(tmp_path, step)
    assert run.code == 1
    assert run.result["message"] == "sleep timed out after 0.5s"


def test_large_result_is_summarized_and_whole_in_the_log_without_the_operator(
    tmp_path: Path,
) -> None:
    """A step never opens the operator's store: here `agent_operator` cannot even be imported."""
    shadow = tmp_path / "shadow" / "agent_operator"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('a step must not import me')\n")
    outputs = {"blob": "x" * 10_000, "count": 3}
    step = {**STEP, "attempt": 2, "params": {"outputs": outputs}}
    log = tmp_path / "pod.log"
    with log.open("wb") as out:  # stdout and stderr in one stream, as in a pod's log
        done = subprocess.run(
            [str(BIN / "agent-runtime"), "run-step", "--termination-log", str(tmp_path / "t")],
            env={
                "PATH": os.environ["PATH"],
                "PYTHONPATH": str(shadow.parent),
                "AGENT_STEP": json.dumps(step),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0
    raw = (tmp_path / "t").read_text()
    summary = json.loads(raw)
    assert len(raw.encode()) <= MESSAGE_LIMIT
    assert summary["inLog"] is True
    assert summary["outputs"] == {"count": 3, "blob": "<truncated: 10002 bytes in the log>"}
    full = json.loads(log.read_text().splitlines()[-1])
    assert full["outputs"] == outputs and full["ok"] is True and not full["inLog"]


def test_secrets_echoed_back_are_masked(tmp_path: Path) -> None:
    key = "sk-wrong-key-0123456789"
    with ScriptedOpenAI(api_key="sk-right") as server:
        step = {
            **STEP,
            "tool": "llm_complete",
            "params": {"prompt": "hi"},
            "model": {"baseURL": server.base_url, "model": "scripted"},
        }
        run = run_step(tmp_path, step, env={"OPENAI_API_KEY": key})
    assert run.code == 1
    assert "HTTP 401: Incorrect API key provided: ***" in run.result["message"]
    assert key not in run.raw + run.stdout + run.stderr


def test_termination_path_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "from-env"
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AGENT_STEP": json.dumps(STEP),
        "TERMINATION_MESSAGE_PATH": str(path),
    }
    done = subprocess.run(
        [str(BIN / "agent-runtime"), "run-step"], env=environment, capture_output=True, timeout=60
    )
    assert done.returncode == 0
    assert json.loads(path.read_text())["ok"] is True
