"""The Argo CD health checks (charts/agent-operator/argocd/health-<Kind>.lua) run against
sample objects in Lua 5.1, the dialect of Argo CD's gopher-lua, the way Argo CD runs them:
the object as the global `obj`, the script's returned table as the health."""

from __future__ import annotations

from typing import Any

import pytest
from lupa import lua51

from tests.chart.helm import CHART

Obj = dict[str, Any]


def to_lua(lua: Any, value: Any) -> Any:
    """JSON-like Python values as Lua values (arrays 1-based, as Argo CD converts them)."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def health(kind: str, obj: Obj) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = to_lua(lua, obj)
    script = (CHART / "argocd" / f"health-{kind}.lua").read_text()
    result = lua.execute(script)
    status = result["status"]
    assert status in ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
    return status, result["message"] or ""


def task(status: Obj | None = None, generation: int = 1, **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "agentoperator.io/v1alpha1",
        "kind": "AgentTask",
        "metadata": {"name": "t", "generation": generation},
        "spec": {"steps": [{"id": "a", "tool": "noop"}], **spec},
    }
    if status is not None:
        body["status"] = status
    return body


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        (task(), "Progressing", "Waiting for the operator"),
        (task(suspend=True), "Suspended", "spec.suspend"),
        (task({"phase": "Pending", "observedGeneration": 1}), "Progressing", "Pending"),
        (task({"phase": "Planning"}), "Progressing", "Planning"),
        (
            task({"phase": "Running", "currentStep": "fetch", "observedGeneration": 1}),
            "Progressing",
            "Running: fetch",
        ),
        (
            task({"phase": "Running", "currentStep": "fetch", "observedGeneration": 1}, 2),
            "Progressing",
            "latest spec",
        ),
        (task({"phase": "Running"}, suspend=True), "Suspended", "nothing new starts"),
        (
            task({"phase": "WaitingApproval", "currentStep": "publish"}),
            "Suspended",
            "Waiting for approval of step publish",
        ),
        (
            task({"phase": "Succeeded", "message": "3 steps succeeded"}),
            "Healthy",
            "Succeeded: 3 steps succeeded",
        ),
        (
            task({"phase": "Failed", "reason": "StepFailed", "message": "step a failed"}),
            "Degraded",
            "Failed (StepFailed): step a failed",
        ),
        (task({"phase": "Failed"}), "Degraded", "Failed (no reason)"),
        (task({"phase": "Cancelled", "reason": "Cancelled"}), "Degraded", "Cancelled"),
    ],
)
def test_agenttask_health(obj: Obj, status: str, message: str) -> None:
    got = health("AgentTask", obj)
    assert got[0] == status and message in got[1], got


def approval(status: Obj | None = None, **spec: Any) -> Obj:
    body: Obj = {
        "kind": "ApprovalRequest",
        "metadata": {"name": "r"},
        "spec": {
            "taskRef": {"name": "t"},
            "stepId": "publish",
            "tool": "http_request",
            "risk": {"level": "high", "requiresApproval": True},
            "expiresAt": "2026-11-23T13:00:00Z",
            **spec,
        },
    }
    if status is not None:
        body["status"] = status
    return body


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        (
            approval(),
            "Suspended",
            "Waiting for a decision on step publish (http_request, risk high)",
        ),
        (approval({"phase": "Pending"}), "Suspended", "Waiting for a decision"),
        (
            approval({"phase": "Pending"}, decision="Approved", decidedBy="bob"),
            "Progressing",
            "Approved by bob; waiting for the operator",
        ),
        (
            approval({"phase": "Approved", "decidedBy": "bob"}, decision="Approved", reason="ok"),
            "Healthy",
            "Step publish approved by bob: ok",
        ),
        (
            approval({"phase": "Rejected", "decidedBy": "carol"}, decision="Rejected"),
            "Degraded",
            "Step publish rejected by carol",
        ),
        (approval({"phase": "Expired"}), "Degraded", "no decision before 2026-11-23T13:00:00Z"),
    ],
)
def test_approvalrequest_health(obj: Obj, status: str, message: str) -> None:
    got = health("ApprovalRequest", obj)
    assert got[0] == status and message in got[1], got


def pool(status: Obj | None = None, generation: int = 1) -> Obj:
    body: Obj = {"kind": "AgentPool", "metadata": {"name": "default", "generation": generation}}
    if status is not None:
        body["status"] = status
    return body


READY_FALSE = {
    "type": "Ready",
    "status": "False",
    "reason": "ImageMissing",
    "message": "agent-runtime:9 cannot be pulled",
}


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        (pool(), "Progressing", "Waiting for the operator"),
        (pool({"replicas": 4, "observedGeneration": 1}, generation=2), "Progressing", "latest"),
        (
            pool({"replicas": 4, "running": 4, "queued": 3, "observedGeneration": 2}, 2),
            "Healthy",
            "4 running, 3 queued, capacity 4",
        ),
        (pool({"replicas": 2}), "Healthy", "0 running, 0 queued, capacity 2"),
        (pool({"replicas": 2, "conditions": [READY_FALSE]}), "Degraded", "cannot be pulled"),
        (
            pool({"replicas": 2, "conditions": [{**READY_FALSE, "status": "True"}]}),
            "Healthy",
            "capacity 2",
        ),
    ],
)
def test_agentpool_health(obj: Obj, status: str, message: str) -> None:
    got = health("AgentPool", obj)
    assert got[0] == status and message in got[1], got


def test_scripts_run_in_lua_5_1() -> None:
    assert lua51.LuaRuntime().eval("_VERSION") == "Lua 5.1"
