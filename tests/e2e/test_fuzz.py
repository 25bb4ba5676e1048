"""Hostile input (issue 11): generated AgentTasks, AgentPools, decisions on ApprovalRequests
and LLM plans against the real API server and the running operator.

Every generated input ends in exactly one of three ways: the API server refuses it with a
message naming a field under `spec`; the operator accepts it and ends it Failed with a reason
and a message; or it is valid and runs (to Succeeded, or to a step waiting for a person).
Never: a Job for a plan that was refused, an operator that crashed or restarted, a task left
without a Ready condition, a traceback in anything a user reads.

`make test` runs a few examples of each, the same ones every time (derandomized); set
FUZZ_EXAMPLES to run more, drawn afresh (`make faults` does). A failure hypothesis finds
becomes a test of its own in the tier where the defect lives.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localcluster.controlplane import eventually
from tests.e2e.conftest import Kubectl, OperatorProcess
from tests.support.openai_server import ScriptedOpenAI, text

pytestmark = pytest.mark.e2e

GROUP, VERSION = "agentoperator.io", "v1alpha1"
RUNTIME_IMAGE = os.environ.get("E2E_RUNTIME_IMAGE", "agent-runtime:e2e")
TASK_UID = "agentoperator.io/task-uid"
HANDLED = "kopf.zalando.org/last-handled-configuration"  # Kopf's mark on what it handled
KEY_REF = {"name": "llm", "key": "api-key"}
API_KEY = f"sk-fuzz-{uuid.uuid4().hex}"  # what no object, Event, log line or row may show
STORE_TABLES = ("tasks", "step_attempts", "checkpoints", "events")
# A Python traceback's frame line, as text or inside a JSON log line (not the word alone:
# the hostile strings carry it, and the API server quotes what it refuses).
TRACEBACK = re.compile(r'File \\?"[^"\\]+\\?", line \d+')
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 8,
    derandomize=not EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SETTLE_SECONDS = 90  # the longest a generated task may take to end or to wait for a person
# A plan or pool refused before anything ran: no Job may exist for such a task.
REFUSED_PLAN = {
    "InvalidPlan",
    "NoModel",
    "PlanningFailed",
    "InvalidSpec",
    "PoolNotFound",
    "InvalidPoolTemplate",
}

# Strings that have broken parsers, templates, shells and SQL elsewhere.
HOSTILE = [
    "",
    " ",
    "A",
    "-a",
    "a" * 41,
    "a.b",
    "${steps.missing.outputs.x}",
    "${inputs.nope}",
    "$(KUBERNETES_SERVICE_HOST)",
    "{{ .Values.secret }}",
    "'; DROP TABLE checkpoints;--",
    '"}]}',
    "a\nb",
    "\u202etxt.exe",
    "ünïcödé",
    "\\x00",
    "../../etc/passwd",
    "Traceback (most recent call last):",
]
hostile_text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
# Mostly valid ids, so that most plans get past the API server to the operator's checks.
valid_ids = st.sampled_from(["a", "b", "c", "fetch", "x-1"])
step_ids = st.one_of(valid_ids, valid_ids, valid_ids, hostile_text)
tools = st.sampled_from(
    ["noop", "noop", "noop", "shell", "http_request", "sleep", "no-such", "", "NOOP"]
)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.sampled_from([2**64, -(2**70)]),  # beyond what CEL and many parsers hold
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(hostile_text, inner, max_size=3)
    ),
    max_leaves=12,
)


def deep(depth: int) -> Any:
    """A value nested `depth` levels deep."""
    value: Any = "bottom"
    for _ in range(depth):
        value = {"next": value}
    return value


params = st.one_of(
    st.just({}),
    st.builds(lambda outputs: {"outputs": outputs}, st.dictionaries(step_ids, json_values)),
    st.dictionaries(hostile_text, json_values, max_size=3),  # keys the tool does not take
    st.just({"outputs": {"huge": "x" * 200_000}}),  # over what one step's params may hold
    st.just({"outputs": deep(60)}),
    st.builds(lambda command: {"command": command}, hostile_text),
)


@st.composite
def plan_steps(draw: st.DrawFn, schema_hostile: bool = True) -> list[dict[str, Any]]:
    """Steps with any tools and params, depending on any ids: earlier, later, their own,
    missing, or repeated (cycles and duplicates included). `schema_hostile` also breaks
    what the CRD's schema checks (ids, retries), for the API server to refuse."""
    ids = draw(st.lists(step_ids if schema_hostile else valid_ids, min_size=1, max_size=4))
    retries = st.integers(min_value=-1, max_value=11) if schema_hostile else st.integers(0, 2)
    steps = []
    for step_id in ids:
        step: dict[str, Any] = {"id": step_id, "tool": draw(tools), "params": draw(params)}
        if draw(st.booleans()):
            step["dependsOn"] = draw(st.lists(st.sampled_from([*ids, "missing"]), max_size=3))
        if draw(st.booleans()):
            step["retries"] = draw(retries)
        if draw(st.booleans()):
            step["when"] = draw(st.sampled_from(["true", "steps.a.outputs.n > 0", "(((", "1/0"]))
        steps.append(step)
    return steps


@st.composite
def task_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Half of them break the CRD's schema somewhere; the other half only what the operator
    checks (the plan, its params, its tools, references, a goal with no model)."""
    hostile = draw(st.booleans())
    spec: dict[str, Any] = {"poolRef": {"name": "default"}}
    shape = draw(
        st.sampled_from(
            ["steps", "steps", "goal", "both", "neither"] if hostile else ["steps", "steps", "goal"]
        )
    )
    if shape in ("steps", "both"):
        spec["steps"] = draw(plan_steps(schema_hostile=hostile))
    if shape in ("goal", "both"):
        spec["goal"] = draw(hostile_text)
    if draw(st.booleans()):
        spec["inputs"] = draw(st.dictionaries(hostile_text, json_values, max_size=3))
    if draw(st.booleans()):
        spec["limits"] = {
            "maxSteps": draw(st.integers(-1, 600) if hostile else st.integers(1, 500)),
            "backoffSeconds": draw(st.sampled_from([0, 0.5, -1] if hostile else [0, 0.5])),
        }
    if draw(st.booleans()):
        levels = ["strict", "moderate", "permissive", *(["none", ""] if hostile else [])]
        spec["safety"] = {
            "level": draw(st.sampled_from(levels)),
            "requireApprovalFor": draw(st.lists(hostile_text, max_size=2)),
            "rules": draw(rules),
        }
    return spec


SECURITY_CONTEXTS = [
    {},
    {"privileged": True},
    {"runAsUser": 0},
    {"runAsNonRoot": False},
    {"allowPrivilegeEscalation": True},
    {"capabilities": {"add": ["SYS_ADMIN"]}},
    {"readOnlyRootFilesystem": False},
    {"runAsUser": "root"},
]
RESOURCES = [
    {"limits": {"memory": "256Mi"}},
    {"limits": {"cpu": "lots"}},
    {"requests": {"memory": "-1Gi"}},
    {"limits": "none"},
]


# Safety rules: CEL that holds, fails to compile, fails to evaluate, or is hostile text.
CONDITIONS = [
    "true",
    "false",
    "tool == 'noop'",
    "namespace == 'prod'",
    "params.statement.matches('(?i)drop')",  # no such param: cannot be evaluated, holds
    "tool ==",
    "1/0 == 1",
    "params.x.matches('(')",
    "size(tool)",  # not true or false
    "namespce == 'prod'",  # a typo: an unknown name, which celpy's error text quotes whole
    "params.outputs.huge > 1",  # a value CEL may not hold (an int beyond 64 bits)
    "!" * 2000 + "true",  # nesting too deep to evaluate
]
rules = st.lists(
    st.fixed_dictionaries(
        {
            "name": step_ids,
            "condition": st.one_of(st.sampled_from(CONDITIONS), hostile_text),
            "effect": st.sampled_from(["Deny", "RequireApproval", "RaiseRisk", "Allow"]),
        },
        optional={"risk": st.sampled_from(["high", "critical", "none"]), "message": hostile_text},
    ),
    max_size=2,
)


@st.composite
def pool_specs(draw: st.DrawFn) -> dict[str, Any]:
    """AgentPools whose template, tools and capacity are anything: what the CRD's schema,
    the operator's pod rules or the API server's Job validation must refuse, or valid."""
    images = [RUNTIME_IMAGE, RUNTIME_IMAGE, RUNTIME_IMAGE, "no-such:image", "", "UPPER/Case"]
    template: dict[str, Any] = {"image": draw(st.sampled_from(images))}
    if draw(st.booleans()):
        template["securityContext"] = draw(st.sampled_from(SECURITY_CONTEXTS))
    if draw(st.booleans()):
        names = st.one_of(st.sampled_from(["AGENT_STEP", "PATH", "LANG"]), hostile_text)
        env = st.fixed_dictionaries({"name": names, "value": hostile_text})
        template["env"] = draw(st.lists(env, max_size=2))
    if draw(st.booleans()):
        template["resources"] = draw(st.sampled_from(RESOURCES))
    if draw(st.booleans()):
        template["serviceAccountName"] = draw(st.one_of(st.just("default"), hostile_text))
    if draw(st.booleans()):
        template["nodeSelector"] = draw(st.dictionaries(hostile_text, hostile_text, max_size=2))
    if draw(st.booleans()):
        template["imagePullPolicy"] = draw(st.sampled_from(["Never", "Always", "Sometimes", ""]))
    if draw(st.booleans()):
        template["ttlSecondsAfterFinished"] = draw(st.integers(-1, 5))
    spec: dict[str, Any] = {"replicas": draw(st.integers(-1, 3)), "template": template}
    if draw(st.booleans()):
        spec["tools"] = draw(st.lists(tools, max_size=3))
    if draw(st.booleans()):
        spec["capabilities"] = draw(st.lists(hostile_text, max_size=2))
    if draw(st.booleans()):
        spec["allowedHosts"] = draw(st.lists(hostile_text, max_size=2))
    if draw(st.booleans()):
        spec["rules"] = draw(rules)
    return spec


# What a person (or a forger) may write into an ApprovalRequest's spec: a decision in any
# spelling, a reason of any size, a claimed approver, and changes to what is approved.
decisions = st.sampled_from(["Approved", "Rejected", "Approved", "approved", "Maybe", "", None])
approval_patches = st.fixed_dictionaries(
    {"decision": decisions},
    optional={
        "reason": st.one_of(hostile_text, st.just("r" * 100_000)),
        "decidedBy": hostile_text,
        "tool": st.sampled_from(["shell", "noop"]),
        "stepId": st.sampled_from(["b", "a"]),
        "params": st.dictionaries(hostile_text, json_values, max_size=2),
        "risk": st.just({"level": "low", "reasons": []}),
        "expiresAt": st.sampled_from(["2000-01-01T00:00:00Z", "never"]),
    },
)


# --- one input, one outcome -------------------------------------------------------------------


class Fuzzed:
    """The cluster side of the fuzz: create a task, wait for where it ends, check the promises."""

    def __init__(self, kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
        self.api = config.new_client_from_config(str(kubectl.kubeconfig))
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.operator = operator
        self.namespace = namespace
        self.names = (f"fuzz-{n}" for n in itertools.count())
        self.outcomes: dict[str, int] = {}

    def create(self, plural: str, name: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        """The created object, or None when the API server refused it (naming a field)."""
        kind = {
            "agenttasks": "AgentTask",
            "agentpools": "AgentPool",
            "approvalrequests": "ApprovalRequest",
        }[plural]
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        try:
            created: dict[str, Any] = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, body
            )
            return created
        except ApiException as refused:
            self.refused(refused)
            return None

    def refused(self, refused: ApiException) -> None:
        """The API server refused a write, naming the field, with no traceback."""
        assert refused.status in (400, 422), (refused.status, refused.body)
        message = json.loads(refused.body)["message"]
        assert "spec" in message, message  # it names the field it refuses
        assert not TRACEBACK.search(message), message
        self.count("refused by the API server")

    def decide(self, name: str, spec: dict[str, Any]) -> None:
        """Patch an ApprovalRequest's spec, as a person deciding does."""
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "approvalrequests", name, {"spec": spec}
        )

    def approval(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "approvalrequests", name
        )
        return found

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def settle(self, name: str) -> dict[str, Any]:
        """The task's status once it ended, or once a step waits for a person."""

        def settled() -> dict[str, Any] | None:
            task = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "agenttasks", name
            )
            status: dict[str, Any] = task.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                return task
            if status.get("reason") == "WaitingForApproval":
                return task
            if any(s.get("reason") == "WaitingForCapacity" for s in status.get("steps", [])):
                return task  # a pool of 0 replicas: queued, and saying so
            return None

        found: dict[str, Any] = eventually(settled, SETTLE_SECONDS, f"task {name} to settle")
        return found

    def check(self, task: dict[str, Any]) -> None:
        """The promises that hold for every accepted task, however it ended."""
        status, uid = task["status"], task["metadata"]["uid"]
        ready = {c["type"]: c for c in status.get("conditions", [])}.get("Ready")
        assert ready is not None and ready.get("reason") and ready.get("message"), status
        said = [status.get("message"), *(c.get("message") for c in status.get("conditions", []))]
        said += [s.get("message") for s in status.get("steps", [])]
        assert not any(TRACEBACK.search(m) for m in said if m), said
        if status["phase"] == "Failed":
            assert status.get("reason") and status.get("message"), status
            if status["reason"] in REFUSED_PLAN:
                jobs = self.batch.list_namespaced_job(
                    self.namespace, label_selector=f"{TASK_UID}={uid}"
                )
                assert jobs.items == [], f"a Job for a refused plan: {status}"
        self.count(f"{status['phase']}: {status.get('reason')}")
        self.delete("agenttasks", task["metadata"]["name"])

    def nowhere(self, secret: str) -> None:
        """`secret` is in no object of the namespace but its Secret, in no Event, no line
        of the operator's log and no row of its store."""
        custom = [
            self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)
            for plural in ("agenttasks", "agentpools", "approvalrequests")
        ]
        core = client.CoreV1Api(self.api)
        built_in = [
            self.batch.list_namespaced_job(self.namespace),
            core.list_namespaced_pod(self.namespace),
            core.list_namespaced_event(self.namespace),
            core.list_namespaced_config_map(self.namespace),
        ]
        seen = {
            "objects": json.dumps(
                [*custom, *(self.api.sanitize_for_serialization(o) for o in built_in)]
            ),
            "operator log": self.operator.log.read_text(errors="replace"),
        }
        with psycopg.connect(self.operator.dsn) as db:  # a libpq URL (conftest.operator_dsn)
            for table in STORE_TABLES:
                rows = db.execute(f"SELECT * FROM {table}").fetchall()  # fixed names
                seen[f"store table {table}"] = json.dumps(rows, default=str)
        assert [where for where, text in seen.items() if secret in text] == []

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def carried_on(self, starts: int) -> None:
        """The operator neither stopped nor logged a traceback; what the examples came to."""
        print("outcomes:", json.dumps(self.outcomes, indent=1, sort_keys=True))
        assert self.operator.process is not None and self.operator.process.poll() is None
        assert self.operator.starts == starts  # never restarted by the fixture either
        found = TRACEBACK.search(self.operator.log.read_text(errors="replace"))
        assert found is None, f"the operator logged a traceback: {found and found.group()}"


@pytest.fixture
def fuzzed(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> Fuzzed:
    fuzz = Fuzzed(kubectl, operator, namespace)
    pool = {"replicas": 4, "template": {"image": RUNTIME_IMAGE}}
    assert fuzz.create("agentpools", "default", pool) is not None
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name=KEY_REF["name"]), string_data={KEY_REF["key"]: API_KEY}
    )
    client.CoreV1Api(fuzz.api).create_namespaced_secret(namespace, secret)
    return fuzz


def test_a_generated_task_is_refused_failed_with_a_reason_or_run(fuzzed: Fuzzed) -> None:
    starts = fuzzed.operator.starts

    @FUZZ
    @given(spec=task_specs())
    def one(spec: dict[str, Any]) -> None:
        name = next(fuzzed.names)
        if fuzzed.create("agenttasks", name, spec) is not None:
            fuzzed.check(fuzzed.settle(name))

    one()
    fuzzed.carried_on(starts)


def test_a_generated_pool_is_refused_failed_with_a_reason_or_run(fuzzed: Fuzzed) -> None:
    """A task of one harmless step in a generated pool: the pool is refused by the API
    server, or the task fails with a reason (no Job when the pool's template is unsafe),
    waits for capacity saying so, or runs."""
    starts = fuzzed.operator.starts

    @FUZZ
    @given(pool=pool_specs())
    def one(pool: dict[str, Any]) -> None:
        name = next(fuzzed.names)
        if fuzzed.create("agentpools", name, pool) is None:
            return
        step = {"id": "a", "tool": "noop", "timeoutSeconds": 10}
        spec = {"poolRef": {"name": name}, "steps": [step]}
        assert fuzzed.create("agenttasks", name, spec) is not None
        fuzzed.check(fuzzed.settle(name))
        fuzzed.delete("agentpools", name)

    one()
    fuzzed.carried_on(starts)


def test_a_generated_decision_is_refused_or_decides_the_step(fuzzed: Fuzzed) -> None:
    """A step waits for a person; a generated patch of its ApprovalRequest's spec is refused
    by the API server (a decision in another spelling, a change to what is approved), or it
    decides the step: approved, it runs; rejected, the task fails saying so, and the step
    never ran. A request made by someone else for the same step, already approved, decides
    nothing (an undecided example ends rejected, so that would show as a Job)."""
    starts = fuzzed.operator.starts

    @FUZZ
    @given(patch=approval_patches, forge=st.booleans())
    def one(patch: dict[str, Any], forge: bool) -> None:
        name = next(fuzzed.names)
        spec = {
            "poolRef": {"name": "default"},
            "steps": [{"id": "a", "tool": "noop"}],
            "safety": {"requireApprovalFor": ["noop"]},
        }
        assert fuzzed.create("agenttasks", name, spec) is not None
        waiting = fuzzed.settle(name)
        assert waiting["status"]["reason"] == "WaitingForApproval", waiting["status"]
        [request] = fuzzed.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            fuzzed.namespace,
            "approvalrequests",
            label_selector=f"{TASK_UID}={waiting['metadata']['uid']}",
        )["items"]
        if forge:
            forged = {**request["spec"], "decision": "Approved", "decidedBy": "mallory"}
            made = fuzzed.create("approvalrequests", f"{name}-forged", forged)
            assert made is not None
        try:
            fuzzed.decide(request["metadata"]["name"], patch)
        except ApiException as refused:
            fuzzed.refused(refused)
            patch = {"decision": None}
        if forge:  # Kopf has handled the forged request: the operator saw it, woke the task
            eventually(
                lambda: (
                    HANDLED in fuzzed.approval(f"{name}-forged")["metadata"].get("annotations", {})
                ),
                SETTLE_SECONDS,
                "the forged request to be handled",
            )
        if patch.get("decision") not in ("Approved", "Rejected"):  # nothing decided yet
            assert fuzzed.settle(name)["status"]["reason"] == "WaitingForApproval"
            patch = {"decision": "Rejected", "reason": "to end the example"}
            fuzzed.decide(request["metadata"]["name"], patch)
        ended = eventually(
            lambda: (t := fuzzed.settle(name))["status"]["phase"] in ("Succeeded", "Failed") and t,
            SETTLE_SECONDS,
            f"task {name} to end after its decision",
        )
        expected = {"Approved": "Succeeded", "Rejected": "Failed"}[patch["decision"]]
        assert ended["status"]["phase"] == expected, ended["status"]
        if expected == "Failed":  # the step never ran, whatever else approved it
            assert ended["status"]["reason"] == "ApprovalRejected", ended["status"]
            uid = ended["metadata"]["uid"]
            jobs = fuzzed.batch.list_namespaced_job(
                fuzzed.namespace, label_selector=f"{TASK_UID}={uid}"
            )
            assert jobs.items == [], "a Job for a rejected step"
        fuzzed.check(ended)

    one()
    fuzzed.carried_on(starts)


def test_a_generated_llm_plan_is_failed_with_a_reason_or_run(fuzzed: Fuzzed) -> None:
    """Whatever the model answers, its plan gets no further than the pool and the policy
    allow: an invalid one (asked again once) ends the task as InvalidPlan, with no Job."""
    starts = fuzzed.operator.starts

    @FUZZ
    @given(
        answer=st.one_of(
            plan_steps().map(lambda steps: json.dumps({"steps": steps})),
            hostile_text,  # not JSON at all
            json_values.map(json.dumps),  # JSON, but not a plan
        )
    )
    def one(answer: str) -> None:
        name = next(fuzzed.names)
        with ScriptedOpenAI() as llm:
            llm.reply(text(answer), text(answer))  # the answer, and the same on the re-ask
            model = {"model": "scripted", "baseURL": llm.base_url, "apiKeySecretRef": KEY_REF}
            pool = {"replicas": 4, "template": {"image": RUNTIME_IMAGE}, "model": model}
            assert fuzzed.create("agentpools", name, pool) is not None
            spec = {"poolRef": {"name": name}, "goal": "whatever the model says"}
            assert fuzzed.create("agenttasks", name, spec) is not None
            fuzzed.check(fuzzed.settle(name))
        fuzzed.delete("agentpools", name)

    one()
    fuzzed.carried_on(starts)
    fuzzed.nowhere(API_KEY)
