"""`kubectl agent`'s views, from task and approval objects as the API server returns them
(the plugin against a real API server and the chart's policies: tests/e2e/test_chart.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_operator.api import AgentTaskStatus
from agent_operator.kubectl_agent import (
    describe_request,
    main,
    paint,
    plan_rows,
    step_rows,
    table,
    task_row,
)

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def planned(
    step_id: str, *after: str, level: str = "safe", approval: bool = False
) -> dict[str, Any]:
    return {
        "id": step_id,
        "tool": "noop",
        "params": {},
        "dependsOn": list(after),
        "timeoutSeconds": 60,
        "rationale": f"why {step_id}",
        "risk": {"level": level, "requiresApproval": approval},
    }


def task(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "report", "namespace": "team-a", "uid": "u1",
                     "creationTimestamp": "2026-12-04T11:57:30Z"},
        "status": status,
    }  # fmt: skip


DAG = {
    "phase": "WaitingApproval",
    "currentStep": "b,c",
    "plan": [
        planned("a"),
        planned("b", "a", level="high", approval=True),
        planned("c", "a"),
        planned("d", "b", "c"),
    ],
    "steps": [
        {"id": "a", "phase": "Succeeded", "attempt": 1, "startedAt": "2026-12-04T11:58:00Z",
         "finishedAt": "2026-12-04T11:58:07Z", "message": '{"n": 1}'},
        {"id": "b", "phase": "WaitingApproval"},
        {"id": "c", "phase": "Running", "attempt": 2, "startedAt": "2026-12-04T11:59:00Z"},
    ],
}  # fmt: skip


def test_a_task_row_counts_the_steps_done_and_names_those_running_or_waiting() -> None:
    assert task_row(task(DAG), NOW) == [
        "report",
        "WaitingApproval",
        "1/4",
        "b (WaitingApproval), c (Running)",
        "2m",
    ]
    assert task_row(task({}), NOW)[1:4] == ["Pending", "-", "-"]
    assert task_row(task({"phase": 7}), NOW)[1] == "Pending"  # unreadable: shown, not a crash


def test_a_plan_is_drawn_as_a_tree_under_each_steps_first_dependency() -> None:
    request = {"spec": {"stepId": "b"}, "status": {"phase": "Pending"}}
    rows = step_rows(task(DAG), [request], NOW)
    assert [row[0] for row in rows] == ["a", "├─ b", "│  └─ d (after c)", "└─ c"]
    a, b, d, c = rows
    assert a[1:] == ["Succeeded", "1", "7s", "safe", "-", '{"n": 1}']
    assert b[1:6] == ["WaitingApproval", "-", "-", "high", "Pending"]
    assert c[1:4] == ["Running", "2", "1m"]  # still running: until now
    assert d[1] == "Pending"
    decided = {"spec": {"stepId": "b"}, "status": {"phase": "Approved", "decidedBy": "bob"}}
    assert step_rows(task(DAG), [decided], NOW)[1][5] == "Approved by bob"


def test_a_table_pads_like_kubectl() -> None:
    assert table(["NAME", "AGE"], [["a-long-name", "5s"], ["b", "10m"]]) == (
        "NAME          AGE\na-long-name   5s\nb             10m"
    )


def test_an_approver_reads_the_tool_params_risks_mitigations_and_rationale() -> None:
    request = {
        "metadata": {"name": "report-b-1a2b3c4d"},
        "spec": {
            "taskRef": {"name": "report"},
            "stepId": "b",
            "tool": "shell",
            "params": {"command": "rm -rf /tmp/cache", "token": "***"},
            "risk": {
                "level": "high",
                "risks": ["runs commands", "deletes files"],
                "mitigations": ["stopped after 60s"],
            },
            "expiresAt": "2026-12-04T13:00:00Z",
        },
    }
    assert describe_request(request, "Frees the disk.", NOW).splitlines() == [
        "ApprovalRequest report-b-1a2b3c4d: step b of task report",
        "  tool:        shell",
        '  params:      {"command": "rm -rf /tmp/cache", "token": "***"}',
        "  risk:        high",
        "  risks:       runs commands",
        "               deletes files",
        "  mitigations: stopped after 60s",
        "  rationale:   Frees the disk.",
        "  expires:     2026-12-04T13:00:00Z (in 1h)",
    ]


def test_the_plan_view_says_what_asks_for_a_person_and_why() -> None:
    gated = planned("b", "a", level="high", approval=True)
    gated["risk"] |= {
        "risks": ["runs commands"],
        "mitigations": [
            "stopped after 60s",
            "a person approves it first: high risk needs approval under the moderate policy",
        ],
    }
    free = planned("a") | {"risk": {"level": "low", "requiresApproval": False,
                                    "risks": ["sends data to an LLM"]}}  # fmt: skip
    status = AgentTaskStatus.model_validate({"plan": [free, gated]})
    assert plan_rows(status) == [
        ["a", "noop", "-", "low", "runs unattended", "sends data to an LLM"],
        ["b", "noop", "a", "high", "needs approval",
         "high risk needs approval under the moderate policy"],
    ]  # fmt: skip


def test_colours_mark_phases_and_risks_only() -> None:
    assert paint("Failed   ") == "\033[31mFailed   \033[0m"
    assert paint("needs approval") == "\033[33mneeds approval\033[0m"
    assert paint("report") == "report"
    coloured = table(["NAME", "PHASE"], [["x", "Succeeded"]], paint)
    assert coloured.splitlines() == ["NAME   PHASE", "x      \033[32mSucceeded\033[0m"]


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u",
                                                       "namespace": "team-a"}}],
                "current-context": "x",
            }
        )
    )  # fmt: skip
    return path


def test_an_unreachable_api_server_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["get", "--kubeconfig", str(kubeconfig(tmp_path, "http://127.0.0.1:9"))])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: list AgentTasks in team-a: cannot reach the API server: ")
    assert err.count("\n") == 1


def test_plan_refuses_a_namespace_other_than_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = tmp_path / "task.yaml"
    task.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "agentoperator.io/v1alpha1",
                "kind": "AgentTask",
                "metadata": {"name": "t", "namespace": "team-b"},
                "spec": {"steps": [{"id": "a", "tool": "noop"}]},
            }
        )
    )
    config = str(kubeconfig(tmp_path, "http://127.0.0.1:9"))
    assert main(["plan", "-f", str(task), "-n", "team-a", "--kubeconfig", config]) == 1
    assert capsys.readouterr().err == (
        "error: the file's namespace 'team-b' is not the namespace 'team-a' given with -n\n"
    )
