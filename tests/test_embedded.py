"""The embedded default: `agent-operator run -f` as a user runs it, with real step processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agent_operator.store import Store
from tests.support.openai_server import ScriptedOpenAI, text

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CLI = [sys.executable, "-m", "agent_operator.cli"]
DSN_ENV = "AGENT_OPERATOR_DSN"


def agent_operator(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "run", *args, "--dsn", dsn(tmp_path), "--workdir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def dsn(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def write_task(tmp_path: Path, *documents: dict[str, Any]) -> str:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def task_doc(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "agentoperator.io/v1alpha1",
        "kind": "AgentTask",
        "metadata": {"name": name},
        "spec": spec,
    }


def only_task(store: Store) -> str:
    from sqlalchemy import text as sql

    with store._engine.connect() as connection:  # the test reads what a user would query
        return str(connection.execute(sql("select uid from tasks")).scalar_one())


def test_the_dag_example_runs_to_success_and_checkpoints_in_the_store(tmp_path: Path) -> None:
    result = agent_operator(tmp_path, "-f", str(EXAMPLES / "agenttask-dag.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "task Succeeded: 4 steps succeeded, 1 skipped" in result.stdout
    assert "summary: checkout runs checkout:1.4.2 with 3 replicas; 0 alerts firing" in result.stdout
    with Store.open(dsn(tmp_path)) as store:
        uid = only_task(store)
        task = store.task(uid)
        assert task is not None and task.phase == "Succeeded"
        attempts = {(a.step_id, a.attempt): a.phase for a in store.attempts(uid)}
        assert attempts == {
            ("read-config", 1): "Succeeded",
            ("read-alerts", 1): "Succeeded",
            ("settle", 1): "Succeeded",
            ("report", 1): "Succeeded",
        }
        checkpoint = store.last_checkpoint(uid)
        assert checkpoint is not None and checkpoint.snapshot["phase"] == "Succeeded"
        kinds = [e.kind.value for e in store.events(uid)]
        assert kinds[0] == "planned" and kinds[-1] == "task_finished"
        assert kinds.count("step_started") == 4


def test_a_large_result_comes_back_whole_from_the_steps_log_without_the_dsn(
    tmp_path: Path,
) -> None:
    blob = "0123456789abcdef" * 1024  # 16 KiB: four times what a termination message keeps
    steps = [
        {"id": "big", "tool": "noop", "params": {"outputs": {"blob": blob}}},
        {"id": "env", "tool": "shell", "params": {"command": "env", "inheritEnv": [DSN_ENV]}},
    ]
    path = write_task(tmp_path, task_doc("big", {"steps": steps}))
    result = agent_operator(tmp_path, "-f", path, "--approve-all", env={DSN_ENV: dsn(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    with Store.open(dsn(tmp_path)) as store:
        outputs = {a.step_id: a.outputs for a in store.attempts(only_task(store))}
    assert outputs["big"] == {"blob": blob}
    assert DSN_ENV not in outputs["env"]["stdout"]  # the step process never had it


def test_approval_example_runs_the_risky_step_with_approve_all(tmp_path: Path) -> None:
    result = agent_operator(
        tmp_path, "-f", str(EXAMPLES / "agenttask-approval.yaml"), "--approve-all"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rotated old logs" in result.stdout
    assert "step rotate ApprovalRequested" in result.stdout


def test_without_a_terminal_an_approval_is_refused_and_on_reject_applies(tmp_path: Path) -> None:
    result = agent_operator(tmp_path, "-f", str(EXAMPLES / "agenttask-approval.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr  # onReject: skip
    assert "rotated old logs" not in result.stdout
    assert "rotate               Skipped" in result.stdout
    assert "no terminal is attached" in result.stdout


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    result = agent_operator(tmp_path, "-f", str(EXAMPLES / "agenttask-approval.yaml"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert (
        "rotate" in result.stdout and "high" in result.stdout and "needs approval" in result.stdout
    )
    assert not (tmp_path / "runs").exists()


def test_the_goal_example_is_planned_by_the_llm_and_runs(tmp_path: Path) -> None:
    documents = list(yaml.safe_load_all((EXAMPLES / "agenttask-goal.yaml").read_text()))
    with ScriptedOpenAI(api_key="sk-test") as server:
        documents[0]["spec"]["model"]["baseURL"] = server.base_url
        plan = {
            "steps": [
                {"id": "look", "tool": "noop", "params": {"outputs": {"status": "green"}}},
                {
                    "id": "say",
                    "tool": "noop",
                    "params": {"outputs": {"text": "all ${steps.look.outputs.status}"}},
                },
            ]
        }
        server.reply(text(json.dumps(plan), prompt_tokens=100, completion_tokens=50))
        result = agent_operator(
            tmp_path, "-f", write_task(tmp_path, *documents), env={"OPENAI_API_KEY": "sk-test"}
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "text: all green" in result.stdout
    assert "usage: 150 tokens" in result.stdout
    assert "sk-test" not in result.stdout + result.stderr


def test_a_failing_step_is_retried_then_fails_the_run_with_exit_1(tmp_path: Path) -> None:
    spec = {
        "steps": [
            {"id": "flaky", "tool": "fail", "params": {"message": "disk full"}, "retries": 1}
        ],
        "limits": {"backoffSeconds": 0},
    }
    result = agent_operator(tmp_path, "-f", write_task(tmp_path, task_doc("flaky", spec)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Failed (StepFailed)" in result.stdout
    assert "failed after 2 attempts: disk full" in result.stdout


def test_a_step_that_spends_over_max_cost_fails_the_task_at_the_pools_prices(
    tmp_path: Path,
) -> None:
    spec = {
        "steps": [{"id": "ask", "tool": "llm_complete", "params": {"prompt": "hi"}}],
        "limits": {"maxCostUSD": 0.5},
    }
    key = {"OPENAI_API_KEY": "sk-test"}
    with ScriptedOpenAI(api_key="sk-test") as server:
        model = {"baseURL": server.base_url, "model": "local-llm"}  # not in the price table
        for prices, outcome in [
            (None, "Succeeded"),
            ({"inputPerMillion": 1000, "outputPerMillion": 1000}, "BudgetExceeded"),
        ]:
            server.reply(text("hello", prompt_tokens=1000, completion_tokens=200))
            pool = {
                "apiVersion": "agentoperator.io/v1alpha1",
                "kind": "AgentPool",
                "metadata": {"name": "default"},
                "spec": {"model": {**model, **({"prices": prices} if prices else {})}},
            }
            path = write_task(tmp_path, task_doc(f"spend-{outcome.lower()}", spec), pool)
            result = agent_operator(tmp_path, "-f", path, env=key)
            assert outcome in result.stdout, result.stdout + result.stderr
    assert result.returncode == 1
    assert "spent $1.2000; spec.limits.maxCostUSD is 0.5" in result.stdout


def test_a_step_whose_tool_overruns_ends_as_timed_out_with_its_partial_outputs(
    tmp_path: Path,
) -> None:
    step = {"id": "slow", "tool": "shell", "params": {"command": "echo partial; sleep 30"}}
    spec = {"steps": [{**step, "timeoutSeconds": 2}], "safety": {"level": "permissive"}}
    result = agent_operator(tmp_path, "-f", write_task(tmp_path, task_doc("overrun", spec)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "step slow TimedOut: failed after 1 attempt: shell timed out after 2s" in result.stdout
    with Store.open(dsn(tmp_path)) as store:
        [attempt] = store.attempts(only_task(store))
    assert attempt.phase == "Failed"
    assert attempt.outputs is not None and attempt.outputs["stdout"] == "partial\n"


def test_bad_input_names_the_field_and_exits_2(tmp_path: Path) -> None:
    spec = {"steps": [{"id": "a", "tool": "noop", "retries": "many"}], "bogus": True}
    result = agent_operator(tmp_path, "-f", write_task(tmp_path, task_doc("bad", spec)))
    assert result.returncode == 2
    assert "spec.steps[0].retries: Input should be a valid integer" in result.stderr
    assert "spec.bogus: unknown field; allowed here: goal, inputs, limits" in result.stderr
    assert "Traceback" not in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [\n")
    result = agent_operator(tmp_path, "-f", str(broken))
    assert result.returncode == 2 and "is not valid YAML" in result.stderr
    spec = {"steps": [{"id": "a", "tool": "rm-rf"}]}
    result = agent_operator(tmp_path, "-f", write_task(tmp_path, task_doc("bad", spec)))
    assert result.returncode == 2 and "unknown tool 'rm-rf'" in result.stderr


def test_a_safety_policy_the_core_cannot_use_is_bad_input_not_a_traceback(
    tmp_path: Path,
) -> None:
    shell = {"id": "a", "tool": "shell", "params": {"command": "true"}}
    refused = {
        "criticalWindow.days: List should have at least 1 item": {
            "criticalWindow": {"start": "09:00", "end": "10:00", "days": []}
        },
        "criticalWindow: start and end are both 09:00; the window never opens": {
            "criticalWindow": {"start": "09:00", "end": "09:00"}
        },
        "approvalTimeoutSeconds: Input should be less than or equal to 31622400": {
            "approvalTimeoutSeconds": 10**12
        },
    }
    for message, safety in refused.items():
        spec = {"steps": [shell], "safety": safety}
        path = write_task(tmp_path, task_doc("unsafe", spec))
        result = agent_operator(tmp_path, "-f", path, "--approve-all")
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"spec.safety.{message}" in result.stderr
        assert "Traceback" not in result.stderr
    doc = {**task_doc("odd", {"goal": "g"}), "metadata": "odd"}
    result = agent_operator(tmp_path, "-f", write_task(tmp_path, doc))
    assert result.returncode == 2 and "metadata" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_continues_after_the_runner_was_killed_without_rerunning_done_steps(
    tmp_path: Path,
) -> None:
    started, marker = tmp_path / "started", tmp_path / "go"
    wait_for_marker = f"touch {started}; test -f {marker} || sleep 60"
    spec = {
        "steps": [
            {"id": "first", "tool": "noop", "params": {"outputs": {"n": 1}}},
            {"id": "slow", "tool": "shell", "params": {"command": wait_for_marker}, "retries": 1},
            {"id": "last", "tool": "noop"},
        ],
        "safety": {"level": "permissive"},
        "limits": {"backoffSeconds": 0},
    }
    path = write_task(tmp_path, task_doc("resumable", spec))
    runner = subprocess.Popen(
        [*CLI, "run", "-f", path, "--dsn", dsn(tmp_path), "--workdir", str(tmp_path / "runs")],
        stdout=subprocess.DEVNULL,
        cwd=REPO,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), "the slow step never started"
    runner.kill()
    runner.wait()
    marker.touch()
    result = agent_operator(tmp_path, "-f", path, "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    with Store.open(dsn(tmp_path)) as store:
        attempts = [(a.step_id, a.attempt, a.phase) for a in store.attempts(only_task(store))]
    assert attempts == [
        ("first", 1, "Succeeded"),
        ("last", 1, "Succeeded"),
        ("slow", 1, "Failed"),
        ("slow", 2, "Succeeded"),
    ]


def test_resume_with_nothing_to_resume_says_so(tmp_path: Path) -> None:
    result = agent_operator(tmp_path, "-f", str(EXAMPLES / "agenttask-dag.yaml"), "--resume")
    assert result.returncode == 2
    assert "no earlier run of 'release-readiness'" in result.stderr


def test_the_terminal_prompt_shows_the_step_and_approves_only_on_yes() -> None:
    from datetime import UTC, datetime

    from agent_operator.api import ApprovalPhase, RiskAssessment
    from agent_operator.core.decide import RequestApproval
    from agent_operator.embedded import terminal_approver

    request = RequestApproval(
        "rotate",
        "shell",
        {"command": "logrotate", "password": "hunter2"},
        RiskAssessment(level="high", requires_approval=True, risks=["runs commands"]),
        datetime(2026, 11, 23, tzinfo=UTC),
        "digest",
    )
    prompts: list[str] = []
    for answer, phase in [("y", ApprovalPhase.approved), ("", ApprovalPhase.rejected)]:
        approve = terminal_approver(lambda text, a=answer: prompts.append(text) or a, user="ann")
        assert approve(request)[:2] == (phase, "ann")
    assert "step 'rotate' wants to run shell (high risk)" in prompts[0]
    assert "runs commands" in prompts[0]
    assert "hunter2" not in prompts[0]


def test_a_run_deletes_the_history_of_tasks_that_ended_before_the_retention(
    tmp_path: Path,
) -> None:
    spec = {"steps": [{"id": "a", "tool": "noop"}]}
    first = agent_operator(tmp_path, "-f", write_task(tmp_path, task_doc("first", spec)))
    assert first.returncode == 0, first.stdout + first.stderr
    with Store.open(dsn(tmp_path)) as store:
        ended = only_task(store)
    # A retention of a millisecond: the first task, which ended just now, is already past it.
    second = agent_operator(
        tmp_path, "-f", write_task(tmp_path, task_doc("second", spec)), "--retention-days=1e-8"
    )
    assert second.returncode == 0, second.stdout + second.stderr
    with Store.open(dsn(tmp_path)) as store:
        assert store.task(ended) is None and store.events(ended) == []
        assert store.latest_task("default", "second") is not None
