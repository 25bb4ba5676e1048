"""The step Job and the ApprovalRequest the operator creates, and the restricted pod check."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from agent_contract import RiskLevel, StepInvocation
from agent_operator.api import (
    NAME_PATTERN,
    AgentPool,
    AgentTask,
    ApprovalRequest,
    MCPServer,
    RiskAssessment,
)
from agent_operator.core.decide import RequestApproval, StartStep
from agent_operator.core.invocation import step_invocation
from agent_operator.core.naming import job_name
from agent_operator.kube.manifests import (
    LABEL_ATTEMPT,
    LABEL_POOL,
    LABEL_STEP,
    LABEL_TASK,
    LABEL_TASK_UID,
    MANAGED_SELECTOR,
    InvocationTooLarge,
    approval_name,
    approval_request,
    pool_selector,
    restricted_violations,
    step_job,
)
from agent_operator.redact import REDACTED

UID = "0b7c5a8e-4f1d-4c3e-9a57-2d1e6f8b9c10"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
START = StartStep(
    step_id="fetch",
    attempt=2,
    tool="http_request",
    params={"url": "https://reports.example.com/daily", "method": "GET"},
    timeout_seconds=120,
    requires_approval=False,
    approved_by=None,
)


def make_task(name: str = "nightly-report", uid: str = UID) -> AgentTask:
    return AgentTask.model_validate(
        {
            "apiVersion": "agentoperator.io/v1alpha1",
            "kind": "AgentTask",
            "metadata": {"name": name, "namespace": "team-a", "uid": uid, "generation": 1},
            "spec": {"steps": [{"id": "fetch", "tool": "http_request", "params": START.params}]},
        }
    )


def make_pool(name: str = "default", **spec: Any) -> AgentPool:
    return AgentPool.model_validate(
        {"metadata": {"name": name, "namespace": "team-a"}, "spec": spec}
    )


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(job)["containers"]
    assert only["name"] == "step"
    return dict(only)


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(job)["env"]}


# --- the Job ------------------------------------------------------------------


def test_the_job_is_named_labelled_and_owned_for_adoption() -> None:
    task, pool = make_task(), make_pool()
    job = step_job(task, pool, START)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == job_name("nightly-report", UID, "fetch", 2)
    assert step_job(task, pool, START) == job  # a restarted operator derives the same Job
    assert job["metadata"]["namespace"] == "team-a"
    labels = {
        "app.kubernetes.io/managed-by": "agent-operator",
        LABEL_TASK: "nightly-report",
        LABEL_TASK_UID: UID,
        LABEL_STEP: "fetch",
        LABEL_ATTEMPT: "2",
        LABEL_POOL: "default",
    }
    assert job["metadata"]["labels"] == labels
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "agentoperator.io/v1alpha1",
            "kind": "AgentTask",
            "name": "nightly-report",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_retries_are_the_operators_and_the_deadline_backs_up_the_runtime() -> None:
    job = step_job(make_task(), make_pool(), START)
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 120 + 30
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    assert pod_spec(job)["restartPolicy"] == "Never"


@pytest.mark.parametrize(("ttl", "expected"), [(None, None), (0, 0), (600, 600)])
def test_ttl_comes_from_the_template_and_none_keeps_finished_jobs(
    ttl: int | None, expected: int | None
) -> None:
    job = step_job(make_task(), make_pool(template={"ttlSecondsAfterFinished": ttl}), START)
    assert job["spec"].get("ttlSecondsAfterFinished") == expected


def test_the_default_ttl_removes_finished_jobs_after_an_hour() -> None:
    assert step_job(make_task(), make_pool(), START)["spec"]["ttlSecondsAfterFinished"] == 3600


def test_the_step_travels_as_json_and_secrets_only_by_reference() -> None:
    """The model's key is the only credential: never the operator's store (its DSN)."""
    pool = make_pool(
        model={"model": "gpt-4o", "apiKeySecretRef": {"name": "openai", "key": "api-key"}}
    )
    task = make_task()
    job = step_job(task, pool, START)
    env = container(job)["env"]
    assert [e["name"] for e in env] == ["AGENT_STEP", "OPENAI_API_KEY"]
    step = StepInvocation.model_validate_json(env[0]["value"])
    assert step == step_invocation(task, pool.spec, START)
    assert step.params == START.params and step.attempt == 2 and step.task_uid == UID
    assert step.model is not None and step.model.api_key_env == "OPENAI_API_KEY"
    assert env[1] == {
        "name": "OPENAI_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}},
    }


def test_without_a_key_or_store_secret_only_the_step_is_set() -> None:
    job = step_job(make_task(), make_pool(model={"model": "gpt-4o"}), START)
    assert list(env_of(job)) == ["AGENT_STEP"]


def test_the_template_cannot_replace_what_the_operator_sets() -> None:
    pool = make_pool(template={"env": [{"name": "AGENT_STEP", "value": "{}"}]})
    with pytest.raises(ValueError, match=r"spec\.template\.env sets AGENT_STEP"):
        step_job(make_task(), pool, START)


def test_template_fields_are_carried_over() -> None:
    template = {
        "image": "registry.example.com/agent-runtime:1.4.2",
        "imagePullPolicy": "IfNotPresent",
        "serviceAccountName": "report-agent",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "env": [{"name": "LOG_LEVEL", "value": "debug"}],
        "envFrom": [{"secretRef": {"name": "report-db"}}],
        "nodeSelector": {"kubernetes.io/os": "linux", "pool": "agents"},
        "tolerations": [
            {"key": "agents", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ],
    }
    pool = make_pool(template=template)
    job = step_job(make_task(), pool, START)
    spec, step = pod_spec(job), container(job)
    assert step["image"] == template["image"]
    assert step["imagePullPolicy"] == "IfNotPresent"
    assert step["args"] == ["run-step"]
    assert step["resources"] == template["resources"]
    assert step["env"][-1] == {"name": "LOG_LEVEL", "value": "debug"}
    assert step["envFrom"] == template["envFrom"]
    assert spec["serviceAccountName"] == "report-agent"
    assert spec["nodeSelector"] == template["nodeSelector"]
    assert spec["tolerations"] == template["tolerations"]
    step["resources"]["limits"]["memory"] = "2Gi"  # the Job holds copies, not the pool's dicts
    assert pool.spec.template.resources == template["resources"]


def test_unset_template_fields_stay_out_of_the_pod() -> None:
    job = step_job(make_task(), make_pool(template={"serviceAccountName": "default"}), START)
    spec, step = pod_spec(job), container(job)
    for absent in ("serviceAccountName", "nodeSelector", "tolerations"):
        assert absent not in spec
    for absent in ("imagePullPolicy", "resources", "envFrom"):
        assert absent not in step


@pytest.mark.parametrize(
    ("tool", "params", "token"),
    [
        ("kubernetes_get", {"kind": "ConfigMap", "name": "x", "namespace": "team-a"}, True),
        ("kubernetes_apply", {"manifest": {}, "namespace": "team-a"}, True),
        ("http_request", {"url": "https://example.com"}, False),
        ("react_agent", {"goal": "check pods", "tools": ["kubernetes_list", "llm_complete"]}, True),
        ("react_agent", {"goal": "summarise", "tools": ["http_request"]}, False),
    ],
)
def test_only_steps_that_talk_to_the_api_server_get_a_token(
    tool: str, params: dict[str, Any], token: bool
) -> None:
    calls = tuple(params.get("tools", []))  # as the core finds them (`ToolSpec.calls`)
    start = StartStep("fetch", 1, tool, params, 60, False, None, calls)
    assert pod_spec(step_job(make_task(), make_pool(), start))["automountServiceAccountToken"] is (
        token
    )


def test_the_pod_meets_the_restricted_standard_with_a_writable_tmp() -> None:
    job = step_job(make_task(), make_pool(), START)
    spec, step = pod_spec(job), container(job)
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert step["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert restricted_violations(spec) == []
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert step["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert step["terminationMessagePath"] == "/dev/termination-log"
    assert step["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_template_may_tighten_or_loosen_within_the_standard() -> None:
    security = {
        "runAsUser": 1000,
        "readOnlyRootFilesystem": False,
        "capabilities": {"add": ["NET_BIND_SERVICE"]},
    }
    job = step_job(make_task(), make_pool(template={"securityContext": security}), START)
    assert container(job)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": False,
        "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
    }


@pytest.mark.parametrize(
    ("security", "field"),
    [
        ({"allowPrivilegeEscalation": True}, "allowPrivilegeEscalation must be false"),
        ({"runAsUser": 0}, "runAsUser must not be 0"),
        ({"runAsNonRoot": False}, "runAsNonRoot must be true"),
        ({"privileged": True}, "privileged must be false"),
        ({"capabilities": {"add": ["SYS_ADMIN"]}}, "capabilities.add may hold only"),
        ({"capabilities": {"drop": ["NET_RAW"]}}, "capabilities.drop must include ALL"),
        ({"seccompProfile": {"type": "Unconfined"}}, "seccompProfile.type must be"),
    ],
)
def test_a_template_outside_the_standard_is_refused_naming_the_field(
    security: dict[str, Any], field: str
) -> None:
    pool = make_pool("gpu", template={"securityContext": security})
    with pytest.raises(ValueError, match=re.escape(field)) as refused:
        step_job(make_task(), pool, START)
    assert "AgentPool 'gpu'" in str(refused.value)
    assert "spec.containers[step].securityContext." in str(refused.value)


# --- restricted_violations ----------------------------------------------------


Mutation = Callable[[dict[str, Any]], object]


def compliant() -> dict[str, Any]:
    return copy.deepcopy(pod_spec(step_job(make_task(), make_pool(), START)))


def pod(**fields: Any) -> Mutation:
    return lambda spec: spec.update(fields)


def pod_security(**fields: Any) -> Mutation:
    return lambda spec: spec["securityContext"].update(fields)


def step(**fields: Any) -> Mutation:
    return lambda spec: spec["containers"][0].update(fields)


def step_security(**fields: Any) -> Mutation:
    return lambda spec: spec["containers"][0]["securityContext"].update(fields)


RESTRICTED_CASES: list[tuple[str, Mutation, str]] = [
    ("host-network", pod(hostNetwork=True), "spec.hostNetwork must be false"),
    ("host-pid", pod(hostPID=True), "spec.hostPID must be false"),
    ("host-ipc", pod(hostIPC=True), "spec.hostIPC must be false"),
    (
        "host-path",
        pod(volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
        "spec.volumes[root]: hostPath volumes are not allowed",
    ),
    (
        "host-port",
        step(ports=[{"containerPort": 8080, "hostPort": 80}]),
        "spec.containers[step].ports[8080].hostPort must be unset",
    ),
    ("pod-root", pod_security(runAsUser=0), "spec.securityContext.runAsUser must not be 0 (root)"),
    (
        "unsafe-sysctl",
        pod_security(sysctls=[{"name": "kernel.msgmax", "value": "65536"}]),
        "spec.securityContext.sysctls: kernel.msgmax is not a safe sysctl",
    ),
    (
        "selinux-type",
        pod_security(seLinuxOptions={"type": "spc_t"}),
        "spec.securityContext.seLinuxOptions.type 'spc_t' is not allowed",
    ),
    (
        "selinux-user",
        step_security(seLinuxOptions={"user": "system_u"}),
        "spec.containers[step].securityContext.seLinuxOptions.user must be unset",
    ),
    (
        "apparmor",
        step_security(appArmorProfile={"type": "Unconfined"}),
        "spec.containers[step].securityContext.appArmorProfile.type must be RuntimeDefault "
        "or Localhost, not Unconfined",
    ),
    (
        "host-process",
        pod_security(windowsOptions={"hostProcess": True}),
        "spec.securityContext.windowsOptions.hostProcess must be false",
    ),
    (
        "proc-mount",
        step_security(procMount="Unmasked"),
        "spec.containers[step].securityContext.procMount must be Default",
    ),
    (
        "container-overrides-non-root",
        step_security(runAsNonRoot=False),
        "spec.containers[step].securityContext.runAsNonRoot must be true "
        "(here or in spec.securityContext)",
    ),
    (
        "escalation-unset",
        lambda spec: spec["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "spec.containers[step].securityContext.allowPrivilegeEscalation must be false",
    ),
    (
        "no-seccomp-anywhere",
        lambda spec: spec["securityContext"].pop("seccompProfile"),
        "spec.containers[step].securityContext.seccompProfile must be set "
        "(here or in spec.securityContext)",
    ),
    (
        "no-run-as-non-root-anywhere",
        lambda spec: spec["securityContext"].pop("runAsNonRoot"),
        "spec.containers[step].securityContext.runAsNonRoot must be true "
        "(here or in spec.securityContext)",
    ),
    (
        "init-container",
        pod(
            initContainers=[
                {"name": "setup", "securityContext": {"capabilities": {"drop": ["ALL"]}}}
            ]
        ),
        "spec.initContainers[setup].securityContext.allowPrivilegeEscalation must be false",
    ),
]


@pytest.mark.parametrize(
    ("change", "problem"),
    [case[1:] for case in RESTRICTED_CASES],
    ids=[case[0] for case in RESTRICTED_CASES],
)
def test_restricted_violations_name_each_broken_rule(change: Mutation, problem: str) -> None:
    spec = compliant()
    change(spec)
    assert restricted_violations(spec) == [problem]


def test_container_level_settings_can_satisfy_the_standard() -> None:
    spec = compliant()
    del spec["securityContext"]
    step_security(runAsNonRoot=True, seccompProfile={"type": "Localhost"})(spec)
    step(ports=[{"containerPort": 8080}])(spec)
    assert restricted_violations(spec) == []


# --- labels and selectors -------------------------------------------------------


def test_the_pool_selector_picks_the_pools_step_pods() -> None:
    assert pool_selector("default") == (
        "app.kubernetes.io/managed-by=agent-operator,agentoperator.io/pool=default"
    )
    job = step_job(make_task(), make_pool("default"), START)
    labels = job["spec"]["template"]["metadata"]["labels"]
    wanted = dict(term.split("=") for term in pool_selector("default").split(","))
    assert wanted.items() <= labels.items()
    assert MANAGED_SELECTOR in pool_selector("default")


def test_long_names_still_make_valid_labels_the_selector_matches() -> None:
    long_task = "nightly-report." + "x" * 200
    long_pool = "pool-" + "y" * 120
    job = step_job(make_task(long_task), make_pool(long_pool), START)
    labels = job["metadata"]["labels"]
    for value in labels.values():
        assert len(value) <= 63 and LABEL_VALUE.match(value), value
    wanted = dict(term.split("=") for term in pool_selector(long_pool).split(","))
    assert wanted.items() <= labels.items()
    other = step_job(make_task(long_task + "z"), make_pool(long_pool + "z"), START)
    assert other["metadata"]["labels"][LABEL_TASK] != labels[LABEL_TASK]
    assert other["metadata"]["labels"][LABEL_POOL] != labels[LABEL_POOL]


# --- the ApprovalRequest --------------------------------------------------------


def test_approval_names_are_deterministic_and_fit_a_label() -> None:
    name = approval_name("nightly-report", UID, "fetch")
    assert name == approval_name("nightly-report", UID, "fetch")
    assert name != approval_name("nightly-report", "another-uid", "fetch")
    assert name != approval_name("nightly-report", UID, "publish")
    assert name.startswith("nightly-report-fetch-")
    long = approval_name("a" * 253, UID, "s" * 40)
    assert len(long) <= 63 and re.match(NAME_PATTERN, long)


def make_request(expires_at: datetime | None = None) -> RequestApproval:
    return RequestApproval(
        step_id="publish",
        tool="http_request",
        params={
            "url": "https://user:hunter2secret@reports.example.com/publish",
            "method": "POST",
            "headers": {"Authorization": "Bearer s3cr3t-t0ken-value"},
            "password": "hunter2secret",
        },
        risk=RiskAssessment(
            level=RiskLevel.high,
            requires_approval=True,
            risks=["writes to an external service"],
            mitigations=["read-only credentials"],
        ),
        expires_at=expires_at or datetime(2026, 11, 23, 11, 0, 0, 123456, tzinfo=UTC),
        digest="d1gest",
    )


def test_the_approval_request_validates_and_hides_secrets() -> None:
    task = make_task()
    body = approval_request(task, make_request())
    assert body["spec"]["paramsDigest"] == "d1gest"  # the core's digest, not one of its own
    parsed = ApprovalRequest.model_validate(body)
    assert parsed.spec.step_id == "publish" and parsed.spec.tool == "http_request"
    assert body["metadata"] == {
        "name": approval_name("nightly-report", UID, "publish"),
        "namespace": "team-a",
        "labels": {
            "app.kubernetes.io/managed-by": "agent-operator",
            LABEL_TASK: "nightly-report",
            LABEL_TASK_UID: UID,
            LABEL_STEP: "publish",
        },
        "ownerReferences": [
            {
                "apiVersion": "agentoperator.io/v1alpha1",
                "kind": "AgentTask",
                "name": "nightly-report",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    assert "status" not in body
    spec = body["spec"]
    assert spec["taskRef"] == {"name": "nightly-report", "uid": UID}
    assert spec["risk"] == {
        "level": "high",
        "requiresApproval": True,
        "risks": ["writes to an external service"],
        "mitigations": ["read-only credentials"],
        "rules": [],
    }
    assert spec["expiresAt"] == "2026-11-23T11:00:00Z"
    assert spec["params"]["password"] == REDACTED
    assert spec["params"]["method"] == "POST"
    text = json.dumps(body)
    assert "hunter2secret" not in text and "s3cr3t-t0ken-value" not in text
    assert "decision" not in spec


def test_expiry_is_written_in_utc() -> None:
    local = datetime(2026, 11, 23, 13, 30, tzinfo=timezone(timedelta(hours=2)))
    body = approval_request(make_task(), make_request(local))
    assert body["spec"]["expiresAt"] == "2026-11-23T11:30:00Z"


def test_the_approval_request_carries_the_tasks_recorded_creator() -> None:
    # The chart's admission policy records who created the task; the request repeats it,
    # because the policy judging an approval can read only the request itself.
    task = make_task()
    task.metadata.annotations["agentoperator.io/created-by"] = "carol@example.com"
    body = approval_request(task, make_request())
    assert body["metadata"]["annotations"] == {
        "agentoperator.io/task-created-by": "carol@example.com"
    }
    assert "annotations" not in approval_request(make_task(), make_request())["metadata"]


def test_a_step_whose_invocation_outgrows_the_pods_environment_is_refused_clearly() -> None:
    """Each MCP tool a sub-agent may call brings its schema into the invocation; Linux
    holds one environment string to 128 KiB, and a pod given more would never start."""
    big = {"type": "object", "properties": {f"field{i}": {"type": "string",
           "description": "x" * 100} for i in range(400)}}  # fmt: skip
    server = MCPServer.model_validate(
        {
            "metadata": {"name": "wide", "namespace": "team-a"},
            "spec": {"url": "http://wide.test/mcp"},
            "status": {
                "tools": [{"name": f"t{n}", "inputSchema": big, "risk": "low"} for n in range(3)]
            },
        }
    )
    pool = make_pool(template={"image": "agent-runtime:1"}, tools=["react_agent", "wide/*"])
    tools = ["wide/t0", "wide/t1", "wide/t2"]
    start = StartStep("fetch", 1, "react_agent", {"goal": "g", "tools": tools}, 60, False, None,
                      tuple(tools))  # fmt: skip
    with pytest.raises(InvocationTooLarge) as refused:
        step_job(make_task(), pool, start, [server])
    assert str(refused.value).startswith("step 'fetch': its invocation takes ")
    assert "the MCP tools it may call bring" in str(refused.value)
    one = replace(start, params={"goal": "g", "tools": tools[:1]}, calls=tuple(tools[:1]))
    assert step_job(make_task(), pool, one, [server])["kind"] == "Job"  # one fits
