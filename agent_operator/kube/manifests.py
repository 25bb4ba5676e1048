"""The objects the operator creates: a step attempt's Job and a step's ApprovalRequest.

Pure functions from the task, its pool and the core's action to the object's body, so
names, labels, owner references and the pod's security settings are tested without a
cluster, and a restarted operator derives the very same names to adopt what exists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

from agent_contract import API_KEY_ENV, DEFAULT_TERMINATION_PATH, STEP_ENV
from agent_contract.mcp import MCPEndpoint
from agent_operator.api import (
    API_VERSION,
    AgentPool,
    AgentTask,
    ApprovalRequest,
    ApprovalRequestSpec,
    MCPServer,
    ObjectMeta,
    TaskRef,
)
from agent_operator.core.decide import (
    DEADLINE_GRACE_SECONDS,
    RequestApproval,
    StartStep,
)
from agent_operator.core.invocation import step_invocation
from agent_operator.core.mcp import header_dir, secret_headers, step_endpoints
from agent_operator.core.naming import MAX_JOB_NAME, job_name
from agent_operator.redact import redact

MANAGED_BY = ("app.kubernetes.io/managed-by", "agent-operator")
LABEL_TASK = "agentoperator.io/task"
LABEL_TASK_UID = "agentoperator.io/task-uid"
LABEL_STEP = "agentoperator.io/step"
LABEL_ATTEMPT = "agentoperator.io/attempt"
LABEL_POOL = "agentoperator.io/pool"
# Who created the AgentTask, as the API server authenticated them (set by the Helm chart's
# MutatingAdmissionPolicy); copied to the task's ApprovalRequests, where the chart's
# ValidatingAdmissionPolicy can refuse self-approval (a policy cannot read the task itself).
ANNOTATION_CREATED_BY = "agentoperator.io/created-by"
ANNOTATION_TASK_CREATED_BY = "agentoperator.io/task-created-by"
# On a step Job made suspended, before its attempt is recorded; removed when it is let run
# (`LAUNCH`). A Job suspended by anyone else is not taken for one that never ran.
ANNOTATION_PREPARED = "agentoperator.io/prepared"
# The patch that lets a prepared Job run.
LAUNCH = {"metadata": {"annotations": {ANNOTATION_PREPARED: None}}, "spec": {"suspend": False}}
# The operator's Job and Pod watches send this selector, so the server filters for them.
MANAGED_SELECTOR = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"

CONTAINER = "step"
RUN_AS_USER = 65532  # the runtime image's numeric USER
TMP_VOLUME = "tmp"  # a writable /tmp under a read-only root filesystem
MAX_LABEL_VALUE = 63

_ALLOWED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ping_group_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
_SELINUX_TYPES = frozenset(
    {"container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
_PROFILE_TYPES = ("RuntimeDefault", "Localhost")
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def pool_selector(pool_name: str) -> str:
    """The label selector of a pool's step pods (AgentPool status.selector, for scale)."""
    return f"{MANAGED_SELECTOR},{LABEL_POOL}={_label_value(pool_name)}"


def approval_name(task_name: str, task_uid: str, step_id: str) -> str:
    """`<task>-<step>-<hash of uid/step>`: one ApprovalRequest per step, found again by name."""
    digest = hashlib.sha256(f"{task_uid}/{step_id}/approval".encode()).hexdigest()[:8]
    suffix = f"-{digest}"
    return f"{task_name}-{step_id}"[: MAX_JOB_NAME - len(suffix)].rstrip("-.") + suffix


# Linux's limit on one environment string (MAX_ARG_STRLEN), `AGENT_STEP=` included.
MAX_INVOCATION_BYTES = 131072 - len(STEP_ENV) - 2


class InvocationTooLarge(Exception):
    """The step's invocation cannot be passed in its pod's environment."""


def step_job(
    task: AgentTask, pool: AgentPool, start: StartStep, servers: Sequence[MCPServer] = ()
) -> dict[str, Any]:
    """The batch/v1 Job that runs one attempt of one step, made prepared (suspended).
    `servers`: the MCPServers of the pool's namespace. Those whose tools the step calls
    (itself, or its sub-agent) give the invocation their endpoints, and their headers'
    Secret keys are mounted as files (`core.mcp.header_dir`), never put in the environment.

    The pod holds no credential of the operator's: a result too large for the termination
    message comes back through the pod's log. Raises ValueError, naming the field, when the
    pool's template would make a pod outside the "restricted" Pod Security Standard or
    would override what the operator sets; LookupError when an MCP tool it calls is not
    offered (its server gone) or not granted; InvocationTooLarge when the step cannot be
    told in its environment.
    """
    endpoints, used = step_endpoints([start.tool, *start.calls], servers, pool.spec)
    template = pool.spec.template.wire()  # camelCase copies: the job never aliases the pool
    labels = {
        **_task_labels(task, start.step_id),
        LABEL_ATTEMPT: str(start.attempt),
        LABEL_POOL: _label_value(pool.metadata.name),
    }
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": template["image"],
        "args": ["run-step"],
        "env": _env(task, pool, start, template.get("env", []), endpoints),
        "securityContext": _merge(
            {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            template.get("securityContext", {}),
        ),
        "terminationMessagePath": DEFAULT_TERMINATION_PATH,
        # A runtime that dies before reporting still leaves its last log lines to read.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    secrets = [
        (header_dir(server.metadata.name, index), ref)
        for server in used
        for index, (_name, ref, _prefix) in enumerate(secret_headers(server.spec))
    ]
    for number, (directory, ref) in enumerate(secrets):
        volume = f"mcp-header-{number}"
        volumes.append(
            {
                "name": volume,
                "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": "value"}]},
            }
        )
        container["volumeMounts"].append({"name": volume, "mountPath": directory, "readOnly": True})
    container |= _present(template, "imagePullPolicy", "envFrom", "resources")
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": _needs_kubernetes(start),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if template.get("serviceAccountName", "default") != "default":
        pod_spec["serviceAccountName"] = template["serviceAccountName"]
    pod_spec |= _present(template, "nodeSelector", "tolerations")
    problems = restricted_violations(pod_spec)
    if problems:
        raise ValueError(
            f"AgentPool {pool.metadata.name!r}: spec.template.securityContext gives a step pod "
            f'outside the "restricted" Pod Security Standard: {"; ".join(problems)}'
        )
    job_spec: dict[str, Any] = {
        "suspend": True,  # prepared: `LAUNCH` lets it run once its attempt is recorded
        "backoffLimit": 0,  # a failed attempt is the operator's to retry, as a new Job
        "activeDeadlineSeconds": start.timeout_seconds + DEADLINE_GRACE_SECONDS,
        # A deleted or evicted pod counts as failed only once it has stopped, so the retry
        # that the Job's failure leads to never overlaps an attempt still shutting down.
        "podReplacementPolicy": "Failed",
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    job_spec |= _present(template, "ttlSecondsAfterFinished")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(task.metadata.name, _uid(task), start.step_id, start.attempt),
            "namespace": task.metadata.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_PREPARED: "true"},
            "ownerReferences": [_owner(task)],
        },
        "spec": job_spec,
    }


def approval_request(task: AgentTask, request: RequestApproval) -> dict[str, Any]:
    """The ApprovalRequest asking a person about one step; its params are redacted."""
    meta = task.metadata
    name = approval_name(meta.name, _uid(task), request.step_id)
    body = ApprovalRequest(
        metadata=ObjectMeta(name=name, namespace=meta.namespace),
        spec=ApprovalRequestSpec(
            task_ref=TaskRef(name=meta.name, uid=meta.uid),
            step_id=request.step_id,
            tool=request.tool,
            params=redact(request.params),
            params_digest=request.digest,
            risk=request.risk,
            expires_at=request.expires_at.astimezone(UTC).replace(microsecond=0),
        ),
    ).wire()
    # Server-owned parts (generation, status) stay out of the body that creates it.
    del body["status"]
    body["metadata"] = {
        "name": name,
        "namespace": meta.namespace,
        "labels": _task_labels(task, request.step_id),
        "ownerReferences": [_owner(task)],
    }
    creator = meta.annotations.get(ANNOTATION_CREATED_BY)
    if creator:
        body["metadata"]["annotations"] = {ANNOTATION_TASK_CREATED_BY: creator}
    return body


def restricted_violations(pod_spec: Mapping[str, Any]) -> list[str]:
    """Every way a pod spec breaks the "restricted" Pod Security Standard, naming the field.

    The checks Pod Security admission makes at level restricted (baseline included), so a
    bad pool template fails the task with a message to act on, instead of the namespace's
    admission refusing each Job with a bare Forbidden.
    """
    problems = [
        f"spec.{f} must be false" for f in ("hostNetwork", "hostPID", "hostIPC") if pod_spec.get(f)
    ]
    pod_context = pod_spec.get("securityContext") or {}
    problems += _context_violations("spec.securityContext", pod_context)
    problems += [
        f"spec.securityContext.sysctls: {s.get('name')} is not a safe sysctl"
        for s in pod_context.get("sysctls") or []
        if s.get("name") not in _SAFE_SYSCTLS
    ]
    for volume in pod_spec.get("volumes") or []:
        problems += [
            f"spec.volumes[{volume.get('name')}]: {kind} volumes are not allowed"
            for kind in volume
            if kind != "name" and kind not in _ALLOWED_VOLUMES
        ]
    for kind in _CONTAINER_LISTS:
        for container in pod_spec.get(kind) or []:
            path = f"spec.{kind}[{container.get('name')}]"
            problems += _container_violations(path, container, pod_context)
    return problems


def _container_violations(
    path: str, container: Mapping[str, Any], pod_context: Mapping[str, Any]
) -> list[str]:
    context = container.get("securityContext") or {}
    where = f"{path}.securityContext"
    problems = _context_violations(where, context)
    if context.get("privileged"):
        problems.append(f"{where}.privileged must be false")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}.allowPrivilegeEscalation must be false")
    if context.get("procMount", "Default") != "Default":
        problems.append(f"{where}.procMount must be Default")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append(f"{where}.capabilities.drop must include ALL")
    added = [c for c in capabilities.get("add") or [] if c != "NET_BIND_SERVICE"]
    if added:
        problems.append(f"{where}.capabilities.add may hold only NET_BIND_SERVICE, not {added}")
    # Container settings override the pod's; either level may satisfy these two.
    if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
        problems.append(f"{where}.runAsNonRoot must be true (here or in spec.securityContext)")
    if "seccompProfile" not in context and "seccompProfile" not in pod_context:
        problems.append(f"{where}.seccompProfile must be set (here or in spec.securityContext)")
    problems += [
        f"{path}.ports[{p.get('containerPort')}].hostPort must be unset"
        for p in container.get("ports") or []
        if p.get("hostPort")
    ]
    return problems


def _context_violations(where: str, context: Mapping[str, Any]) -> list[str]:
    """Checks that apply alike to a pod's and a container's securityContext."""
    problems = []
    if context.get("runAsUser") == 0:
        problems.append(f"{where}.runAsUser must not be 0 (root)")
    for field in ("seccompProfile", "appArmorProfile"):
        kind = (context.get(field) or {}).get("type", _PROFILE_TYPES[0])
        if kind not in _PROFILE_TYPES:
            problems.append(f"{where}.{field}.type must be RuntimeDefault or Localhost, not {kind}")
    selinux = context.get("seLinuxOptions") or {}
    if (selinux.get("type") or "container_t") not in _SELINUX_TYPES:
        problems.append(f"{where}.seLinuxOptions.type {selinux['type']!r} is not allowed")
    problems += [
        f"{where}.seLinuxOptions.{f} must be unset" for f in ("user", "role") if selinux.get(f)
    ]
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        problems.append(f"{where}.windowsOptions.hostProcess must be false")
    return problems


def _env(
    task: AgentTask,
    pool: AgentPool,
    start: StartStep,
    extra: list[dict[str, Any]],
    endpoints: Sequence[MCPEndpoint],
) -> list[dict[str, Any]]:
    """The step (no secret in it), secrets by reference only, then the pool's own env."""
    invocation = step_invocation(task, pool.spec, start, endpoints)
    value = invocation.model_dump_json(by_alias=True)
    size = len(value.encode())
    if size > MAX_INVOCATION_BYTES:
        schemas = sum(len(json.dumps(e.input_schema)) for e in endpoints)
        raise InvocationTooLarge(
            f"step {start.step_id!r}: its invocation takes {size} bytes, and a pod's "
            f"environment variable holds at most {MAX_INVOCATION_BYTES}"
            + (
                f"; the MCP tools it may call bring {schemas} bytes of schemas: list fewer"
                if endpoints
                else ""
            )
        )
    env: list[dict[str, Any]] = [{"name": STEP_ENV, "value": value}]
    model = pool.spec.model
    if model is not None and model.api_key_secret_ref is not None:
        ref = model.api_key_secret_ref
        env.append(_secret_env(API_KEY_ENV, ref.name, ref.key))
    ours = {e["name"] for e in env}
    clash = sorted(ours & {e.get("name") for e in extra})
    if clash:
        # The later entry would win: the pool could replace the checked step or its key.
        raise ValueError(
            f"AgentPool {pool.metadata.name!r}: spec.template.env sets {', '.join(clash)}, "
            "which the operator sets for every step; remove it from the template"
        )
    return env + extra


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _needs_kubernetes(start: StartStep) -> bool:
    """Whether the step (or its sub-agent) talks to the API server; only then does its
    pod get a token."""
    return any(tool.startswith("kubernetes_") for tool in (start.tool, *start.calls))


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`, nested objects (capabilities) merged one level down."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        merged[key] = (
            {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return merged


def _present(source: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: source[k] for k in keys if source.get(k) is not None}


def _uid(task: AgentTask) -> str:
    """The task's uid; its name where an emulator assigns none (as step_invocation does)."""
    return task.metadata.uid or task.metadata.name


def _task_labels(task: AgentTask, step_id: str) -> dict[str, str]:
    return {
        MANAGED_BY[0]: MANAGED_BY[1],
        LABEL_TASK: _label_value(task.metadata.name),
        LABEL_TASK_UID: _label_value(_uid(task)),
        LABEL_STEP: step_id,
    }


def _label_value(name: str) -> str:
    """`name` as a label value: object names may be 253 characters, label values 63."""
    if len(name) <= MAX_LABEL_VALUE:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name[: MAX_LABEL_VALUE - len(digest) - 1].rstrip("-.") + "-" + digest


def _owner(task: AgentTask) -> dict[str, Any]:
    """Owned by the task: deleting it deletes its Jobs and ApprovalRequests."""
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentTask",
        "name": task.metadata.name,
        "uid": _uid(task),
        "controller": True,
        "blockOwnerDeletion": True,
    }
