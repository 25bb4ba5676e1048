"""The operator on a real cluster: CRDs, the API server's validation, and tasks run end to end.

The operator runs as a local process (`python -m agent_operator`, the `operator` fixture) with
the cluster's admin kubeconfig and a fresh PostgreSQL database; step Jobs run as pods of the
local kubelet from the runtime image that `make images` built.
Everything is done as a user does it: kubectl and the Kubernetes API. On another cluster
(KUBECONFIG_E2E) the runtime image must be loadable there: see docs/e2e.md.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from agent_operator.store import resolve_url
from localcluster.controlplane import eventually
from localcluster.kubelet import LocalKubelet
from tests.e2e.conftest import REPO, Kubectl, OperatorProcess
from tests.mcp_server import ToolServer
from tests.support.openai_server import ScriptedOpenAI, text, tool_calls

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# `make images` builds it for the local kubelet; another cluster needs it loaded.
RUNTIME_IMAGE = os.environ.get("E2E_RUNTIME_IMAGE", "agent-runtime:e2e")
API_VERSION = "agentoperator.io/v1alpha1"
TASK_UID = "agentoperator.io/task-uid"
STEP = "agentoperator.io/step"
ATTEMPT = "agentoperator.io/attempt"
TASK_SECONDS = 120  # the longest any task here may take to finish
TERMINAL = ("Succeeded", "Failed", "Cancelled")


# --- manifests and helpers ----------------------------------------------------------------


def pool(name: str, replicas: int = 4, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "template": {"image": RUNTIME_IMAGE}, **spec},
    }


def task(name: str, steps: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"poolRef": {"name": "default"}, **spec}
    if steps is not None:
        body["steps"] = steps
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentTask",
        "metadata": {"name": name},
        "spec": body,
    }


def example(name: str, namespace: str) -> list[dict[str, Any]]:
    """The documents of examples/<name>, moved into `namespace`."""
    documents = [d for d in yaml.safe_load_all((REPO / "examples" / name).read_text()) if d]
    for document in documents:
        document["metadata"]["namespace"] = namespace
    return documents


def get(kubectl: Kubectl, kind: str, name: str, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = kubectl.json("get", kind, name, "-n", namespace)
    return found


def finished(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    """The task once it has reached a terminal phase."""

    def done() -> dict[str, Any] | None:
        found = get(kubectl, "agenttask", name, namespace)
        return found if found.get("status", {}).get("phase") in TERMINAL else None

    return eventually(done, TASK_SECONDS, f"agenttask/{name} to finish", every=1.0)


def expect_phase(found: dict[str, Any], phase: str) -> dict[str, Any]:
    status: dict[str, Any] = found.get("status", {})
    assert status.get("phase") == phase, json.dumps(status, indent=1)
    return status


def steps_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status.get("steps", [])}


def jobs_of(kubectl: Kubectl, namespace: str, uid: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json(
        "get", "jobs", "-n", namespace, "-l", f"{TASK_UID}={uid}"
    )["items"]
    return items


def pods_of(kubectl: Kubectl, namespace: str, uid: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json(
        "get", "pods", "-n", namespace, "-l", f"{TASK_UID}={uid}"
    )["items"]
    return items


def label(obj: dict[str, Any], key: str) -> str:
    return str(obj["metadata"].get("labels", {}).get(key, ""))


def job_done(job: dict[str, Any]) -> bool:
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in job.get("status", {}).get("conditions", [])
    )


def timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def uid_of(kubectl: Kubectl, namespace: str, name: str) -> str:
    found = get(kubectl, "agenttask", name, namespace)
    return str(found["metadata"]["uid"])


def wait_running_pod(kubectl: Kubectl, namespace: str, uid: str, step: str) -> dict[str, Any]:
    """The pod of a step's attempt once its container has started (it may have ended since)."""
    selector = f"{TASK_UID}={uid},{STEP}={step}"

    def started() -> dict[str, Any] | None:
        pods = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
        phases = ("Running", "Succeeded", "Failed")
        return next((p for p in pods if p.get("status", {}).get("phase") in phases), None)

    found: dict[str, Any] = eventually(started, 60, f"a started pod of step {step}")
    return found


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from the operator's own database, read as a person debugging it would."""
    url = resolve_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as connection:
        return connection.execute(sql, params).fetchall()


def apply_yaml(kubectl: Kubectl, namespace: str, *documents: dict[str, Any]) -> None:
    """`kubectl apply -f -` of YAML documents, as a user applies a file."""
    kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(documents, sort_keys=False)
    )


# --- the CRDs and the API server's validation ----------------------------------------------


def test_crds_install_with_short_names(crds: list[str], kubectl: Kubectl, namespace: str) -> None:
    assert crds == [
        "agentpools.agentoperator.io",
        "agenttasks.agentoperator.io",
        "approvalrequests.agentoperator.io",
        "mcpservers.agentoperator.io",
    ]
    resources = kubectl("api-resources", "--api-group=agentoperator.io", "-o", "wide").stdout
    shorts = (("agenttasks", "at"), ("approvalrequests", "apr"), ("agentpools", "ap"))
    for plural, short in (*shorts, ("mcpservers", "mcps")):
        line = next(row for row in resources.splitlines() if row.startswith(plural + " "))
        assert f" {short} " in line, line
    # Discovery has them all: each short name answers (empty lists in a fresh namespace).
    for short in ("at", "apr", "ap", "mcps"):
        listed = kubectl("get", short, "-n", namespace, "-o", "json")
        assert json.loads(listed.stdout)["items"] == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted(crds: list[str], kubectl: Kubectl, path: Path) -> None:
    result = kubectl("apply", "--dry-run=server", "-f", str(path))
    kinds = [d["kind"].lower() for d in yaml.safe_load_all(path.read_text()) if d]
    lines = result.stdout.splitlines()
    assert len(lines) == len(kinds), result.stdout
    for kind, line in zip(kinds, lines, strict=True):
        assert line.startswith(f"{kind}.agentoperator.io/"), line
        assert line.endswith("(server dry run)"), line


INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], list[str], list[str]]] = {
    # name: (change to a valid task, kubectl flags, what the error must say)
    "wrong-type": (
        lambda t: t["spec"]["steps"][0].update(retries="x"),
        [],
        ["spec.steps[0].retries", 'Invalid value: "string"', "must be of type integer"],
    ),
    "unknown-field": (
        lambda t: t["spec"].update(bogus=True),
        ["--validate=strict"],
        ['unknown field "spec.bogus"'],
    ),
    "no-goal-no-steps": (
        lambda t: t["spec"].pop("steps"),
        [],
        ["spec needs a goal or at least one step"],
    ),
    "empty-steps": (
        lambda t: t["spec"].update(steps=[]),
        [],
        ["spec needs a goal or at least one step"],
    ),
    "bad-step-id": (
        lambda t: t["spec"]["steps"][0].update(id="Not_A_Label"),
        [],
        ["spec.steps[0].id", "should match"],
    ),
    "bad-safety-level": (
        lambda t: t["spec"].update(safety={"level": "reckless"}),
        [],
        ["spec.safety.level", 'Unsupported value: "reckless"', '"strict"'],
    ),
    "window-without-days": (
        lambda t: t["spec"].update(
            safety={"criticalWindow": {"start": "09:00", "end": "10:00", "days": []}}
        ),
        [],
        ["spec.safety.criticalWindow.days", "should have at least 1 items"],
    ),
    "approval-timeout-beyond-a-year": (
        lambda t: t["spec"].update(safety={"approvalTimeoutSeconds": 10**12}),
        [],
        ["spec.safety.approvalTimeoutSeconds", "should be less than or equal to 31622400"],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_task_is_refused_with_the_schema_message(
    crds: list[str], kubectl: Kubectl, namespace: str, case: str
) -> None:
    change, flags, expected = INVALID[case]
    manifest = task("invalid", [{"id": "only", "tool": "noop"}])
    change(manifest)
    refused = kubectl(
        "create", "-n", namespace, *flags, "-f", "-", input=json.dumps(manifest), check=False
    )
    assert refused.returncode != 0, refused.stdout
    for fragment in expected:
        assert fragment in refused.stderr, refused.stderr
    assert kubectl("get", "at", "-n", namespace, "-o", "name").stdout == ""


def test_steps_cannot_change_after_creation(
    crds: list[str], kubectl: Kubectl, namespace: str
) -> None:
    # Suspended and without a pool: nothing runs, whether an operator watches or not.
    manifest = task("fixed", [{"id": "first", "tool": "noop"}], suspend=True)
    kubectl.apply(manifest, namespace=namespace)
    changed = {"spec": {"steps": [{"id": "first", "tool": "sleep", "params": {"seconds": 1}}]}}
    refused = kubectl(
        "patch", "at", "fixed", "-n", namespace, "--type=merge", "-p", json.dumps(changed),
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "spec.steps: Invalid value" in refused.stderr  # the field, not all of spec
    assert "the plan cannot be changed once the task is created" in refused.stderr
    added = {"spec": {"steps": [{"id": "first", "tool": "noop"}, {"id": "more", "tool": "noop"}]}}
    refused = kubectl(
        "patch", "at", "fixed", "-n", namespace, "--type=merge", "-p", json.dumps(added),
        check=False,
    )  # fmt: skip
    assert "the plan cannot be changed once the task is created" in refused.stderr
    # What is not the plan may change.
    kubectl("label", "at", "fixed", "-n", namespace, "team=e2e")
    steps = get(kubectl, "at", "fixed", namespace)["spec"]["steps"]
    assert [s["tool"] for s in steps] == ["noop"]


def test_explain_shows_the_descriptions(crds: list[str], kubectl: Kubectl) -> None:
    def explained() -> str | None:
        # The OpenAPI document catches up with a new CRD a moment after it is Established.
        result = kubectl("explain", "agenttask.spec.steps", check=False)
        return result.stdout if result.returncode == 0 else None

    out = eventually(explained, 60, "kubectl explain agenttask.spec.steps")
    assert "Explicit plan; with a goal too, the steps are the plan" in out
    for field, words in (
        ("id", "Unique step name"),
        ("tool", "Name of a tool the pool grants"),
        ("dependsOn", "Steps that must finish first"),
        ("retries", "Extra attempts after a failure"),
    ):
        assert field in out and words in out, out
    pool_out = kubectl("explain", "agentpool.spec.replicas").stdout
    assert "Most step Jobs of this pool at once" in pool_out


# --- tasks run by the operator ----------------------------------------------------------


def test_static_dag_runs_to_success(
    operator: OperatorProcess, kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    apply_yaml(kubectl, namespace, pool("default"), *example("agenttask-dag.yaml", namespace))
    kubectl(
        "wait", "--for=condition=Ready", "agenttask/release-readiness", "-n", namespace,
        f"--timeout={TASK_SECONDS}s",
    )  # fmt: skip
    found = get(kubectl, "agenttask", "release-readiness", namespace)
    status = expect_phase(found, "Succeeded")
    uid = found["metadata"]["uid"]

    # Outputs passed between steps: the join step's params referenced three earlier outputs.
    assert status["outputs"] == {
        "report": {
            "summary": "checkout runs checkout:1.4.2 with 3 replicas; 0 alerts firing",
            "ready": True,
        }
    }
    steps = steps_of(status)
    assert {k: v["phase"] for k, v in steps.items()} == {
        "read-config": "Succeeded",
        "read-alerts": "Succeeded",
        "scale-up": "Skipped",  # its `when` was false: 3 replicas are not fewer than 2
        "settle": "Succeeded",
        "report": "Succeeded",
    }
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "Planned": "True",
        "Approved": "True",
        "Progressing": "False",
        "Ready": "True",
    }

    # One Job per step that ran, created by the operator, owned by the task, each complete
    # (the operator reads a pod's end without waiting for the Job controller to mark its Job).
    kubectl(
        "wait", "--for=condition=Complete", "job", "-l", f"{TASK_UID}={uid}", "-n", namespace,
        "--timeout=60s",
    )  # fmt: skip
    jobs = jobs_of(kubectl, namespace, uid)
    assert sorted(label(j, STEP) for j in jobs) == [
        "read-alerts", "read-config", "report", "settle",
    ]  # fmt: skip
    for job in jobs:
        assert job["metadata"]["ownerReferences"][0]["uid"] == uid
        assert label(job, ATTEMPT) == "1"
        assert any(c["type"] == "Complete" for c in job["status"]["conditions"])
        assert steps[label(job, STEP)]["jobName"] == job["metadata"]["name"]
    pods = pods_of(kubectl, namespace, uid)
    assert len(pods) == 4
    for pod in pods:
        assert pod["status"]["phase"] == "Succeeded"
        if kubelet is not None:
            assert pod["spec"]["nodeName"] == kubelet.node_name
    report = next(p for p in pods if label(p, STEP) == "report")
    message = json.loads(report["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert message["ok"] is True
    assert message["outputs"]["ready"] is True

    # The checkpoint in status is the latest one in Postgres.
    rows = query(
        operator.dsn,
        "SELECT checkpoint_id, step_id, time FROM checkpoints WHERE task_uid = %s "
        "ORDER BY checkpoint_id DESC LIMIT 1",
        uid,
    )
    assert rows, "no checkpoint in the store"
    checkpoint = status["checkpoint"]
    assert (checkpoint["id"], checkpoint["step"]) == rows[0][:2]
    assert timestamp(checkpoint["time"]) == rows[0][2]
    phase = query(operator.dsn, "SELECT phase FROM tasks WHERE uid = %s", uid)
    assert phase == [("Succeeded",)]
    attempts = query(
        operator.dsn,
        "SELECT step_id, attempt, phase FROM step_attempts WHERE task_uid = %s ORDER BY step_id",
        uid,
    )
    assert [(s, a, p) for s, a, p in attempts] == [
        ("read-alerts", 1, "Succeeded"),
        ("read-config", 1, "Succeeded"),
        ("report", 1, "Succeeded"),
        ("settle", 1, "Succeeded"),
    ]

    # The operator's JSON log tells each step's story with the task and the step as fields.
    logged = [json.loads(line) for line in operator.log.read_text().splitlines() if line[:1] == "{"]
    told = {
        (r["step"], r["reason"])
        for r in logged
        if r.get("object", {}).get("uid") == uid and "step" in r
    }
    assert {("read-config", "StepStarted"), ("report", "StepSucceeded")} <= told, told


PLAN = {
    "steps": [
        {
            "id": "gather",
            "tool": "noop",
            "dependsOn": [],
            "rationale": "Stands in for reading the status endpoint.",
            "params": {"outputs": {"status": "healthy", "url": "${inputs.statusURL}"}},
        },
        {
            "id": "summarize",
            "tool": "noop",
            "dependsOn": ["gather"],
            "rationale": "One sentence for the person who asked.",
            "params": {"outputs": {"sentence": "checkout is ${steps.gather.outputs.status}"}},
        },
    ]
}


def test_llm_planned_task_runs_to_success(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    key = "sk-e2e-planner-key"
    with ScriptedOpenAI(api_key=key) as llm:
        llm.reply(text(json.dumps(PLAN), prompt_tokens=120, completion_tokens=80))
        kubectl(
            "create", "secret", "generic", "openai", f"--from-literal=api-key={key}",
            "-n", namespace,
        )  # fmt: skip
        planner_pool, goal_task = example("agenttask-goal.yaml", namespace)
        planner_pool["spec"]["model"]["baseURL"] = llm.base_url
        planner_pool["spec"]["template"] = {"image": RUNTIME_IMAGE}
        apply_yaml(kubectl, namespace, planner_pool, goal_task)
        found = finished(kubectl, namespace, "summarize-status")
    status = expect_phase(found, "Succeeded")

    assert len(llm.requests) == 1  # a valid plan: no re-ask
    asked = json.loads(llm.requests[0]["messages"][-1]["content"])
    assert asked["goal"] == goal_task["spec"]["goal"]
    assert {t["name"] for t in asked["tools"]} <= set(planner_pool["spec"]["tools"])
    assert [(s["id"], s["risk"]["level"]) for s in status["plan"]] == [
        ("gather", "safe"),
        ("summarize", "safe"),
    ]
    assert status["outputs"] == {"summarize": {"sentence": "checkout is healthy"}}
    assert status["usage"]["tokens"] == 200
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Planned"] == "Planned"
    jobs = jobs_of(kubectl, namespace, found["metadata"]["uid"])
    assert sorted(label(j, STEP) for j in jobs) == ["gather", "summarize"]
    # The key reaches step pods by reference to the Secret only, never as a value.
    for job in jobs:
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        assert key not in json.dumps(env)
        assert {"secretKeyRef": {"name": "openai", "key": "api-key"}} in [
            e.get("valueFrom") for e in env
        ]


def sub_agent_asks(
    kubectl: Kubectl, namespace: str, inventory_pool: dict[str, Any], prune: dict[str, Any]
) -> dict[str, Any]:
    """The status of a task whose react_agent step (the runtime image) calls the pool's
    lookup through a scripted model, the server's token mounted in its pod."""
    key = "sk-e2e-agent-key"
    with ScriptedOpenAI(api_key=key) as llm:
        llm.reply(
            tool_calls([("inventory__lookup", {"key": "stale-widget"})]),
            text("stale-widget is unused since 2025-03"),
        )
        kubectl(
            "create", "secret", "generic", "agent-model", f"--from-literal=api-key={key}",
            "-n", namespace,
        )  # fmt: skip
        agents = copy.deepcopy(inventory_pool)
        agents["metadata"]["name"] = "inventory-sub-agents"
        agents["spec"]["tools"] = ["react_agent", "inventory/lookup"]
        agents["spec"]["model"] = {
            "baseURL": llm.base_url,
            "model": "scripted",
            "apiKeySecretRef": {"name": "agent-model", "key": "api-key"},
        }
        ask = copy.deepcopy(prune)
        ask["metadata"]["name"] = "ask-agent"
        ask["spec"]["poolRef"] = {"name": "inventory-sub-agents"}
        goal = {"goal": "Is stale-widget still used?", "tools": ["inventory/lookup"]}
        ask["spec"]["steps"] = [{"id": "ask", "tool": "react_agent", "params": goal}]
        apply_yaml(kubectl, namespace, agents, ask)
        return expect_phase(finished(kubectl, namespace, "ask-agent"), "Succeeded")


def test_mcp_tools_are_discovered_and_called_from_the_runtime_image_with_the_secret_token(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    token = f"mcp-e2e-{uuid.uuid4().hex[:8]}"
    server = ToolServer(token=token).start()  # step pods of the local kubelet share 127.0.0.1
    try:
        kubectl(
            "create", "secret", "generic", "inventory-token", f"--from-literal=token={token}",
            "-n", namespace,
        )  # fmt: skip
        mcp_server, inventory_pool, prune = example("mcp-tools.yaml", namespace)
        mcp_server["spec"]["url"] = server.url
        mcp_server["spec"]["bearerTokenSecretRef"] = {"name": "inventory-token", "key": "token"}
        inventory_pool["spec"]["template"] = {"image": RUNTIME_IMAGE}
        inventory_pool["spec"]["rules"] = [
            {
                "name": "keep-prod",
                "condition": "tool == 'inventory/delete_thing' && params.name.startsWith('prod-')",
                "effect": "Deny",
                "message": "prod things stay",
            }
        ]
        denied = copy.deepcopy(prune)
        denied["metadata"]["name"] = "prune-prod"
        denied["spec"]["steps"][1]["params"] = {"name": "prod-db"}
        apply_yaml(kubectl, namespace, mcp_server, inventory_pool, prune, denied)
        kubectl(
            "wait", "--for=condition=Ready", "mcpserver/inventory", "-n", namespace,
            "--timeout=60s",
        )  # fmt: skip
        listed = kubectl("get", "mcps", "-n", namespace).stdout.splitlines()
        assert listed[0].split() == ["NAME", "TOOLS", "READY", "LAST-SYNC", "AGE"]
        assert listed[1].split()[:3] == ["inventory", "2", "True"]  # the spec's filter: 2 of 4

        def approval() -> dict[str, Any] | None:
            items = kubectl.json("get", "approvalrequests", "-n", namespace)["items"]
            return next((a for a in items if a["spec"]["stepId"] == "prune"), None)

        request = eventually(approval, 120, "the ApprovalRequest of prune", every=1.0)
        assert (request["spec"]["tool"], request["spec"]["risk"]["level"]) == (
            "inventory/delete_thing",
            "high",
        )
        assert server.calls == [("lookup", {"key": "stale-widget"})]  # nothing deleted yet
        kubectl(
            "patch", "approvalrequest", request["metadata"]["name"], "-n", namespace,
            "--type", "merge", "-p", json.dumps({"spec": {"decision": "Approved"}}),
        )  # fmt: skip
        status = expect_phase(finished(kubectl, namespace, "prune-inventory"), "Succeeded")
        refused = expect_phase(finished(kubectl, namespace, "prune-prod"), "Failed")
        agent = sub_agent_asks(kubectl, namespace, inventory_pool, prune)
    finally:
        server.stop()
    # A sub-agent in the runtime image called the tool by the name the model knows.
    assert agent["outputs"]["ask"]["answer"] == "stale-widget is unused since 2025-03"
    assert [t["tool"] for t in agent["outputs"]["ask"]["trace"]] == ["inventory/lookup"]
    assert "step 'prune'" in refused["message"] and "keep-prod" in refused["message"]
    assert "prod things stay" in refused["message"]
    # The server gone: a step of its tool fails saying so, in one line.
    late = copy.deepcopy(prune)
    late["metadata"]["name"] = "look-again"
    late["spec"]["steps"] = [prune["spec"]["steps"][0]]
    apply_yaml(kubectl, namespace, late)
    down = expect_phase(finished(kubectl, namespace, "look-again"), "Failed")
    look = steps_of(down)["look"]
    assert f"MCP server inventory: cannot connect to {server.url}: " in look["message"]
    assert server.calls == [
        ("lookup", {"key": "stale-widget"}),
        ("delete_thing", {"name": "stale-widget"}),
        ("lookup", {"key": "stale-widget"}),  # the sub-agent's
    ]
    assert "unused since 2025-03" in steps_of(status)["look"]["message"]  # structured outputs
    assert status["outputs"] == {"prune": {"text": "deleted stale-widget"}}
    uid = uid_of(kubectl, namespace, "prune-inventory")
    for job in jobs_of(kubectl, namespace, uid):
        assert token not in json.dumps(job)  # mounted from the Secret, never a value
    assert token not in json.dumps(get(kubectl, "mcpserver", "inventory", namespace))


# The approval example as three tasks: each task's onReject, then what a person decides.
ONREJECT = {"approved": "skip", "rejected-skip": "skip", "rejected-fail": "fail"}
DECISIONS = {"approved": "Approved", "rejected-skip": "Rejected", "rejected-fail": "Rejected"}


def test_risky_step_waits_for_approval(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    (base,) = example("agenttask-approval.yaml", namespace)
    base["spec"]["poolRef"] = {"name": "default"}
    tasks = {}
    for name, on_reject in ONREJECT.items():
        manifest = copy.deepcopy(base)
        manifest["metadata"]["name"] = name
        manifest["spec"]["safety"]["onReject"] = on_reject
        tasks[name] = manifest
    apply_yaml(kubectl, namespace, pool("default"), *tasks.values())

    def requests() -> dict[str, dict[str, Any]] | None:
        items = kubectl.json("get", "approvalrequests", "-n", namespace)["items"]
        by_task = {a["spec"]["taskRef"]["name"]: a for a in items}
        return by_task if len(by_task) == len(tasks) else None

    approvals = eventually(requests, 60, "an ApprovalRequest for each task")
    for name, approval in approvals.items():
        spec = approval["spec"]
        assert (spec["stepId"], spec["tool"]) == ("rotate", "shell")
        assert spec["risk"]["requiresApproval"] is True
        found = get(kubectl, "agenttask", name, namespace)
        assert approval["metadata"]["ownerReferences"][0]["uid"] == found["metadata"]["uid"]
        kubectl(
            "wait", "--for=jsonpath={.status.phase}=WaitingApproval", f"agenttask/{name}",
            "-n", namespace, "--timeout=60s",
        )  # fmt: skip
        # Nothing of the risky step runs before a person decides.
        jobs = jobs_of(kubectl, namespace, found["metadata"]["uid"])
        assert [label(j, STEP) for j in jobs] == ["disk-usage"]
    listed = kubectl("get", "apr", "-n", namespace).stdout
    assert all(a["metadata"]["name"] in listed for a in approvals.values())

    def decide(name: str, decision: str) -> None:
        patch = {"spec": {"decision": decision, "reason": f"e2e says {decision.lower()}"}}
        kubectl(
            "patch", "approvalrequest", approvals[name]["metadata"]["name"], "-n", namespace,
            "--type", "merge", "-p", json.dumps(patch),
        )  # fmt: skip

    for name, decision in DECISIONS.items():
        decide(name, decision)

    approved = expect_phase(finished(kubectl, namespace, "approved"), "Succeeded")
    assert {k: v["phase"] for k, v in steps_of(approved).items()} == {
        "disk-usage": "Succeeded",
        "rotate": "Succeeded",
        "confirm": "Succeeded",
    }
    skipped = expect_phase(finished(kubectl, namespace, "rejected-skip"), "Succeeded")
    rotate = steps_of(skipped)["rotate"]
    assert (rotate["phase"], rotate["reason"]) == ("Skipped", "ApprovalRejected")
    assert steps_of(skipped)["confirm"]["phase"] == "Succeeded"
    failed = expect_phase(finished(kubectl, namespace, "rejected-fail"), "Failed")
    assert failed["reason"] == "ApprovalRejected"
    assert "confirm" not in {k for k, v in steps_of(failed).items() if v["phase"] == "Succeeded"}

    ran = {
        name: sorted(
            label(j, STEP) for j in jobs_of(kubectl, namespace, uid_of(kubectl, namespace, name))
        )
        for name in tasks
    }
    assert ran == {
        "approved": ["confirm", "disk-usage", "rotate"],
        "rejected-skip": ["confirm", "disk-usage"],
        "rejected-fail": ["disk-usage"],
    }
    # The operator mirrors each decision into the request's status.
    for name, phase in DECISIONS.items():
        kubectl(
            "wait", f"--for=jsonpath={{.status.phase}}={phase}",
            f"approvalrequest/{approvals[name]['metadata']['name']}", "-n", namespace,
            "--timeout=30s",
        )  # fmt: skip


def test_failing_step_is_retried_then_fails_the_task(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    backoff = 2
    steps = [{"id": "flaky", "tool": "fail", "retries": 1, "params": {"message": "disk on fire"}}]
    manifest = task("doomed", steps, limits={"backoffSeconds": backoff})
    apply_yaml(kubectl, namespace, pool("default"), manifest)
    found = finished(kubectl, namespace, "doomed")
    status = expect_phase(found, "Failed")
    assert status["reason"] == "StepFailed"
    assert "disk on fire" in status["message"]
    flaky = steps_of(status)["flaky"]
    assert (flaky["phase"], flaky["attempt"]) == ("Failed", 2)

    jobs = sorted(
        jobs_of(kubectl, namespace, found["metadata"]["uid"]),
        key=lambda j: int(label(j, ATTEMPT)),
    )
    assert [label(j, ATTEMPT) for j in jobs] == ["1", "2"]
    names = [f"job/{j['metadata']['name']}" for j in jobs]
    # The operator may read a pod's end before the Job controller marks its Job.
    kubectl("wait", "--for=condition=Failed", *names, "-n", namespace, "--timeout=60s")
    pods = {label(p, ATTEMPT): p for p in pods_of(kubectl, namespace, found["metadata"]["uid"])}
    assert sorted(pods) == ["1", "2"]
    ended = pods["1"]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert ended["exitCode"] == 1
    result = json.loads(ended["message"])  # the runtime's report, as the operator reads it
    assert (result["ok"], result["message"]) == (False, "disk on fire")
    # The retry waited for its backoff after the first attempt ended.
    second_created = timestamp(jobs[1]["metadata"]["creationTimestamp"])
    assert second_created - timestamp(ended["finishedAt"]) >= timedelta(seconds=backoff)
    events = kubectl(
        "get", "events", "-n", namespace, "--field-selector",
        "involvedObject.kind=AgentTask,involvedObject.name=doomed", "-o", "json",
    )  # fmt: skip
    seen = [(e["reason"], e["message"]) for e in json.loads(events.stdout)["items"]]
    assert any(r == "BackingOff" and "flaky" in m for r, m in seen), seen
    assert ("StepStarted", "step flaky: attempt 2") in seen, seen


def test_a_pool_whose_image_does_not_exist_fails_the_step_and_frees_its_slot(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    """The Job controller never fails a pod that waits for its image: the operator ends the
    attempt with the kubelet's words, retries it, and deletes each stuck Job."""
    missing = pool("default", replicas=1)
    missing["spec"]["template"]["image"] = "agent-runtime:no-such-tag"
    steps = [{"id": "a", "tool": "noop", "retries": 1}]
    apply_yaml(kubectl, namespace, missing, task("imageless", steps, limits={"backoffSeconds": 0}))
    found = finished(kubectl, namespace, "imageless")
    status = expect_phase(found, "Failed")
    step = steps_of(status)["a"]
    assert (step["phase"], step["reason"], step["attempt"]) == ("Failed", "ImageUnavailable", 2)
    assert "ErrImageNeverPull" in status["message"], status["message"]
    assert "agent-runtime:no-such-tag" in status["message"], status["message"]
    uid = found["metadata"]["uid"]
    eventually(
        lambda: not jobs_of(kubectl, namespace, uid) and not pods_of(kubectl, namespace, uid),
        60,
        "the stuck Jobs and their pods to be deleted",
    )


def test_a_step_whose_tool_overruns_ends_as_timed_out_with_its_partial_outputs(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    steps = [
        {
            "id": "slow",
            "tool": "shell",
            "params": {"command": "echo partial; sleep 60"},
            "timeoutSeconds": 3,
        }
    ]
    manifest = task("overrun", steps, safety={"level": "permissive"})
    apply_yaml(kubectl, namespace, pool("default"), manifest)
    found = finished(kubectl, namespace, "overrun")
    status = expect_phase(found, "Failed")
    slow = steps_of(status)["slow"]
    assert slow["phase"] == "Failed" and slow["reason"] == "TimedOut", slow
    assert "shell timed out after 3s" in status["message"]
    [ended_pod] = pods_of(kubectl, namespace, found["metadata"]["uid"])
    ended = ended_pod["status"]["containerStatuses"][0]["state"]["terminated"]
    result = json.loads(ended["message"])  # the runtime reported, before any deadline of its Job
    assert (result["reason"], result["outputs"]["stdout"]) == ("TimedOut", "partial\n")


def test_a_step_may_write_to_tmp_but_not_to_its_read_only_root_filesystem(
    operator: OperatorProcess, kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    """A step pod runs the runtime image with a read-only root and an emptyDir at /tmp, as
    its non-root user: scratch files go to /tmp; a write anywhere else is refused."""
    probe = f"/probe-{uuid.uuid4().hex[:8]}"
    steps = [
        {"id": "scratch", "tool": "shell", "params": {"command": "echo ok > /tmp/x && cat /tmp/x"}},
        {
            "id": "root",
            "tool": "shell",
            "params": {"command": f"touch {probe}"},
            "dependsOn": ["scratch"],
        },
    ]
    manifest = task("readonly", steps, safety={"level": "permissive"})
    apply_yaml(kubectl, namespace, pool("default"), manifest)
    status = expect_phase(finished(kubectl, namespace, "readonly"), "Failed")
    by_id = steps_of(status)
    assert by_id["scratch"]["phase"] == "Succeeded"
    assert '"stdout":"ok\\n"' in by_id["scratch"]["message"]  # its outputs, summarised
    assert by_id["root"]["phase"] == "Failed"
    assert "Read-only file system" in status["message"], status["message"]
    if kubelet is not None:
        assert not Path(probe).exists()  # nor on this machine's root


def test_deleting_a_running_task_removes_its_jobs_and_pods(
    operator: OperatorProcess, kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    manifest = task("endless", [{"id": "nap", "tool": "sleep", "params": {"seconds": 60}}])
    apply_yaml(kubectl, namespace, pool("default"), manifest)
    uid = uid_of(kubectl, namespace, "endless")
    pod = wait_running_pod(kubectl, namespace, uid, "nap")
    found = get(kubectl, "at", "endless", namespace)
    assert "agentoperator.io/finalizer" in found["metadata"]["finalizers"]
    pid = None
    if kubelet is not None:
        container_id = pod["status"]["containerStatuses"][0].get("containerID", "")
        pid = int(container_id.removeprefix("local://"))

    kubectl("delete", "agenttask", "endless", "-n", namespace, "--timeout=60s")
    eventually(
        lambda: not jobs_of(kubectl, namespace, uid) and not pods_of(kubectl, namespace, uid),
        60,
        "the task's Jobs and pods to be deleted",
    )
    if pid is not None:
        eventually(lambda: not Path(f"/proc/{pid}").exists(), 30, f"step process {pid} to end")
    rows = query(operator.dsn, "SELECT phase, reason FROM tasks WHERE uid = %s", uid)
    assert rows == [("Cancelled", "Cancelled")]


def test_a_result_over_4_kib_comes_back_whole_through_the_pod_log_without_a_dsn(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    """The step holds no store credential; the operator reads the full result from its log."""
    blob = "0123456789abcdef" * 1024  # 16 KiB: four times what a termination message keeps
    steps = [
        {"id": "big", "tool": "noop", "params": {"outputs": {"blob": blob, "count": 3}}},
        {"id": "use", "tool": "noop", "params": {"outputs": {"echo": "${steps.big.outputs.blob}"}}},
    ]
    apply_yaml(kubectl, namespace, pool("default"), task("big-result", steps))
    status = expect_phase(finished(kubectl, namespace, "big-result"), "Succeeded")
    assert status["outputs"] == {"use": {"echo": blob}}  # a summary would carry a marker
    uid = uid_of(kubectl, namespace, "big-result")
    [(outputs,)] = query(
        operator.dsn,
        "SELECT outputs FROM step_attempts WHERE task_uid = %s AND step_id = 'big'",
        uid,
    )
    assert outputs == {"blob": blob, "count": 3}
    for pod in pods_of(kubectl, namespace, uid):
        summary = json.loads(
            pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
        )
        assert summary["inLog"] is True and len(json.dumps(summary)) <= 4096
        env = {e["name"] for c in pod["spec"]["containers"] for e in c.get("env", [])}
        assert env == {"AGENT_STEP"}  # no DSN, no store Secret: nothing but the step


# The largest spec: Kopf keeps no copy of an AgentTask's spec (kube/kopf_state.py), so what
# bounds it is the API server's limit on a whole object (spec and status together), which
# etcd sets at 1.5 MiB by default. A mebibyte of spec is four times what a copy in Kopf's
# annotation (256 KiB for all annotations) allowed.
LARGE_SPEC_BYTES = 1024 * 1024


def test_a_task_with_a_mebibyte_of_spec_runs_and_is_deleted(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply_yaml(kubectl, namespace, pool("default"))
    blob = {"blob": "x" * LARGE_SPEC_BYTES}
    large = task("large", [{"id": "only", "tool": "noop"}], inputs=blob)
    # `kubectl create`, not a client-side `kubectl apply`: that keeps its own copy of the
    # object in an annotation (use `kubectl apply --server-side` for large tasks).
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(large))
    expect_phase(finished(kubectl, namespace, "large"), "Succeeded")
    annotations = get(kubectl, "at", "large", namespace)["metadata"].get("annotations", {})
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 4096, annotations
    # Returns once the finalizer is removed and the object is gone.
    kubectl("delete", "agenttask", "large", "-n", namespace, "--timeout=60s")
    assert kubectl("get", "at", "-n", namespace, "-o", "name").stdout == ""

    too_large = task(
        "too-large", [{"id": "only", "tool": "noop"}], inputs={"blob": "x" * 1600 * 1024}
    )
    refused = kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(too_large), check=False
    )
    assert refused.returncode != 0 and "request is too large" in refused.stderr, refused.stderr


def test_operator_killed_mid_task_carries_on_without_running_a_step_twice(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    steps = [
        {"id": "before", "tool": "noop", "params": {"outputs": {"count": 1}}},
        {"id": "nap", "tool": "sleep", "params": {"seconds": 15, "outputs": {"slept": True}}},
        {
            "id": "after",
            "tool": "noop",
            "params": {"outputs": {"count": "${steps.before.outputs.count}"}},
        },
    ]
    steps[2]["dependsOn"] = ["before", "nap"]
    apply_yaml(kubectl, namespace, pool("default"), task("survivor", steps))
    uid = uid_of(kubectl, namespace, "survivor")
    wait_running_pod(kubectl, namespace, uid, "nap")
    operator.kill()
    try:
        # The step finishes while no operator watches.
        (nap,) = [j for j in jobs_of(kubectl, namespace, uid) if label(j, STEP) == "nap"]
        kubectl(
            "wait", "--for=condition=Complete", f"job/{nap['metadata']['name']}", "-n", namespace,
            "--timeout=60s",
        )  # fmt: skip
        assert get(kubectl, "at", "survivor", namespace)["status"]["phase"] == "Running"
    finally:
        operator.start()
    found = finished(kubectl, namespace, "survivor")
    status = expect_phase(found, "Succeeded")
    assert status["outputs"] == {"after": {"count": 1}}

    jobs = jobs_of(kubectl, namespace, uid)
    per_step: dict[str, int] = {}
    for job in jobs:
        step = label(job, STEP)
        per_step[step] = per_step.get(step, 0) + 1
    assert per_step == {"before": 1, "nap": 1, "after": 1}
    assert all(label(j, ATTEMPT) == "1" for j in jobs)
    assert len(pods_of(kubectl, namespace, uid)) == 3
    attempts = query(
        operator.dsn, "SELECT step_id, attempt FROM step_attempts WHERE task_uid = %s", uid
    )
    assert sorted(attempts) == [("after", 1), ("before", 1), ("nap", 1)]


def test_scaling_the_pool_changes_how_many_steps_run_at_once(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    steps = [
        {"id": f"nap-{i}", "tool": "sleep", "dependsOn": [], "params": {"seconds": 6}}
        for i in range(4)
    ]
    fan_out = task("fan-out", steps, poolRef={"name": "narrow"})
    apply_yaml(kubectl, namespace, pool("narrow", replicas=1), fan_out)
    uid = uid_of(kubectl, namespace, "fan-out")
    most_active = 0

    def active_jobs() -> list[dict[str, Any]]:
        nonlocal most_active
        active = [j for j in jobs_of(kubectl, namespace, uid) if not job_done(j)]
        most_active = max(most_active, len(active))
        return active

    def queued() -> bool:
        active_jobs()
        status = get(kubectl, "at", "fan-out", namespace).get("status", {})
        phases = [s["phase"] for s in status.get("steps", [])]
        return sorted(phases) == ["Queued", "Queued", "Queued", "Running"]

    eventually(queued, 60, "one step running and three queued", every=0.3)
    # Keep looking a little longer while the first step runs: still one at a time.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        active_jobs()
        time.sleep(0.3)
    assert most_active == 1
    assert len(jobs_of(kubectl, namespace, uid)) == 1
    eventually(
        lambda: get(kubectl, "ap", "narrow", namespace).get("status", {}).get("queued") == 3,
        30,
        "the pool's status to show three queued steps",
    )

    kubectl("scale", "agentpool/narrow", "--replicas=4", "-n", namespace)
    path = f"/apis/{API_VERSION}/namespaces/{namespace}/agentpools/narrow/scale"
    scale = json.loads(kubectl("get", "--raw", path).stdout)
    assert scale["spec"]["replicas"] == 4
    eventually(lambda: len(active_jobs()) >= 3, 60, "the queued steps to run at once", every=0.3)
    status = expect_phase(finished(kubectl, namespace, "fan-out"), "Succeeded")
    assert all(s["phase"] == "Succeeded" for s in status["steps"])
    assert len(jobs_of(kubectl, namespace, uid)) == 4


def test_tasks_arriving_together_never_run_more_steps_than_the_pool_allows(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    """Issue 9.15: fifty one-step tasks applied together on a pool of 5 gave 9 to 11 step
    pods at once: concurrent passes counted the same free slot."""
    apply_yaml(kubectl, namespace, pool("pair", replicas=2))
    nap = [{"id": "nap", "tool": "sleep", "params": {"seconds": 2}}]
    names = [f"crowd-{n}" for n in range(10)]
    apply_yaml(kubectl, namespace, *(task(n, nap, poolRef={"name": "pair"}) for n in names))
    most_active = 0

    def all_succeeded() -> bool:
        nonlocal most_active
        jobs = json.loads(kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
        most_active = max(most_active, sum(1 for j in jobs if not job_done(j)))
        tasks = json.loads(kubectl("get", "at", "-n", namespace, "-o", "json").stdout)["items"]
        phases = [t.get("status", {}).get("phase") for t in tasks]
        return len(phases) == len(names) and all(p == "Succeeded" for p in phases)

    eventually(all_succeeded, TASK_SECONDS, "every task to succeed", every=0.2)
    assert 1 <= most_active <= 2, f"{most_active} step Jobs ran at once on a pool of 2"


def test_operator_serves_health_and_metrics(operator: OperatorProcess) -> None:
    """Its liveness endpoint on AGENT_OPERATOR_HEALTH_PORT; Prometheus metrics on its port."""
    connection = http.client.HTTPConnection("127.0.0.1", operator.health_port, timeout=5)
    try:
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    metrics = operator.metrics()
    for name in ("agent_operator_tasks", "agent_operator_step_duration_seconds"):
        assert f"# TYPE {name} " in metrics, metrics[:2000]
