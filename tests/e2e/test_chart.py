"""The Helm chart on a real control plane: `helm install`, the operator as the chart's
Deployment under the chart's ServiceAccount (so its RBAC is really enforced), the restricted
Pod Security Standard enforced by the API server, unforgeable approvals, `helm upgrade`,
peering with two replicas, and an uninstall that keeps the CRDs and the tasks.

The tests of this module share one release and run in order. On another cluster
(KUBECONFIG_E2E) the images `agent-operator:e2e` and `agent-runtime:e2e` must be loaded
(hack/kind-e2e.sh does it) and the operator keeps its store in SQLite.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from agent_operator.store import resolve_url
from localcluster.controlplane import eventually, free_ports
from localcluster.kubelet import LocalKubelet
from tests.chart.helm import CHART, HelmError, helm, helm_binary
from tests.e2e.conftest import Cluster, Kubectl, KubectlError

pytestmark = pytest.mark.e2e

RELEASE = "e2e-chart"
FULLNAME = f"{RELEASE}-agent-operator"
GROUP = "agentoperator.io"
CRDS = [f"{plural}.{GROUP}" for plural in ("agentpools", "agenttasks", "approvalrequests")]
STORE_SECRET = "agent-operator-store"
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
HELM_TIMEOUT = "120s"
TASK_SECONDS = 90


@dataclass
class Release:
    """The chart installed for this module."""

    namespace: str  # the release's (the operator's) namespace
    tasks: str  # the namespace it watches, where tasks run
    values: Path
    work: Path
    kubeconfig: Path
    admin: str  # the user name the API server gives the test's own credentials
    installed: bool = False
    pool_crd_came_with_it: bool = False  # then the default pool was a post-install hook

    @property
    def operator_user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{FULLNAME}"

    def helm(self, *args: str, timeout: float = 180) -> str:
        return helm(*args, "--kubeconfig", str(self.kubeconfig), timeout=timeout).stdout


@dataclass(frozen=True)
class Database:
    """A fresh PostgreSQL database for the operator of this module."""

    dsn: str
    admin: str
    name: str

    @classmethod
    def create(cls, postgres_dsn: str) -> Database:
        server = resolve_url(postgres_dsn)
        admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
        name = f"chart_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        dsn = server.set(drivername="postgresql", database=name)
        return cls(dsn.render_as_string(hide_password=False), admin, name)

    def drop(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def _restricted_namespace(kubectl: Kubectl, name: str) -> None:
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, RESTRICTED, "pod-security.kubernetes.io/warn=restricted")
    eventually(
        lambda: (
            kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0
        ),
        30,
        f"the default ServiceAccount in {name}",
    )


@pytest.fixture(scope="module")
def release(
    request: pytest.FixtureRequest,
    control_plane: Cluster,
    kubelet: LocalKubelet | None,
    kubectl: Kubectl,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    if helm_binary() is None:
        pytest.skip("no helm binary: run `make bins` or put helm on PATH")
    suffix = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp("chart-e2e")
    admin = kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    chart = Release(
        f"aop-{suffix}",
        f"tasks-{suffix}",
        work / "values.yaml",
        work,
        control_plane.kubeconfig,
        admin,
    )
    database: Database | None = None
    try:
        for namespace in (chart.namespace, chart.tasks):
            _restricted_namespace(kubectl, namespace)
        values: dict[str, Any] = {
            "image": {"repository": "agent-operator", "tag": "e2e"},
            "defaultPool": {"image": {"repository": "agent-runtime", "tag": "e2e"}},
            "watchNamespaces": [chart.tasks],
            "approvals": {"forbidSelfApproval": True},
        }
        if control_plane.local:
            # Every pod of the local kubelet is 127.0.0.1: keep clear of ports in use.
            metrics, health = free_ports(2)
            values |= {"metrics": {"port": metrics}, "healthPort": health}
            database = Database.create(request.getfixturevalue("postgres_dsn"))
            kubectl(
                "create", "secret", "generic", STORE_SECRET,
                f"--from-literal=dsn={database.dsn}", "-n", chart.namespace,
            )  # fmt: skip
            values["store"] = {"existingSecret": STORE_SECRET}
        chart.values.write_text(yaml.safe_dump(values))
        # --take-ownership: CRDs applied earlier from crds/ (another test, or a user) join
        # the release, as the chart's README says.
        pool_crd = kubectl("get", "crd", f"agentpools.{GROUP}", check=False)
        chart.pool_crd_came_with_it = pool_crd.returncode != 0
        chart.installed = True
        chart.helm(
            "install", RELEASE, str(CHART), "--namespace", chart.namespace,
            "--values", str(chart.values), "--take-ownership", "--wait",
            "--timeout", HELM_TIMEOUT,
        )  # fmt: skip
        # Helm's --wait does not cover CRDs: a task is accepted a moment after they appear.
        kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{c}" for c in CRDS))
        probe = json.dumps(task_manifest("probe"))
        eventually(
            lambda: kubectl(
                "create", "--dry-run=server", "-n", chart.tasks, "-f", "-", input=probe,
                check=False,
            ).returncode == 0,
            60,
            "the API server to accept AgentTasks",
        )  # fmt: skip
        yield chart
    finally:
        _teardown(chart, kubectl)
        if database is not None:
            database.drop()


def _teardown(chart: Release, kubectl: Kubectl) -> None:
    """Tasks deleted while the operator can still finalize them, then the release, then
    what is kept on purpose (a task, the pool) without finalizers, then the namespaces."""
    if chart.installed:
        kubectl("delete", "agenttasks", "--all", "-n", chart.tasks, "--wait=false", check=False)
        with contextlib.suppress(TimeoutError):
            eventually(lambda: not _names(kubectl, "agenttasks", chart.tasks), 30, "tasks gone")
        helm(
            "uninstall", RELEASE, "--namespace", chart.namespace,
            "--kubeconfig", str(chart.kubeconfig), check=False,
        )  # fmt: skip
    for kind in ("agenttasks", "agentpools", "approvalrequests"):
        for name in _names(kubectl, kind, chart.tasks):
            kubectl(
                "patch", kind, name, "-n", chart.tasks, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip
    for namespace in (chart.tasks, chart.namespace):
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _names(kubectl: Kubectl, kind: str, namespace: str) -> list[str]:
    result = kubectl("get", kind, "-n", namespace, "-o", "name", check=False)
    return (
        [line.split("/", 1)[1] for line in result.stdout.split()] if result.returncode == 0 else []
    )


# --- helpers --------------------------------------------------------------------------


def task_manifest(name: str, *, approval: bool = False, **metadata: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "steps": [
            {"id": "greet", "tool": "noop", "params": {"outputs": {"greeting": "hello"}}},
            {
                "id": "echo",
                "tool": "noop",
                "params": {"outputs": {"echo": "${steps.greet.outputs.greeting}"}},
            },
        ]
    }
    if approval:
        spec = {
            "steps": [{"id": "publish", "tool": "noop", "params": {"outputs": {"done": True}}}],
            "safety": {"requireApprovalFor": ["noop"]},
        }
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "AgentTask",
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }


def write(chart: Release, name: str, manifest: dict[str, Any]) -> Path:
    path = chart.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def phase(kubectl: Kubectl, chart: Release, task: str) -> str:
    result = kubectl(
        "get", "agenttask", task, "-n", chart.tasks, "-o", "jsonpath={.status.phase}", check=False
    )
    return result.stdout


def wait_phase(kubectl: Kubectl, chart: Release, task: str, *phases: str) -> str:
    return eventually(
        lambda: phase(kubectl, chart, task) if phase(kubectl, chart, task) in phases else None,
        TASK_SECONDS,
        f"AgentTask {task} to reach {' or '.join(phases)}",
    )


def jobs_of(kubectl: Kubectl, chart: Release, task: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json(
        "get", "jobs", "-n", chart.tasks, "-l", f"{GROUP}/task={task}"
    )["items"]
    return items


def operator_pods(kubectl: Kubectl, chart: Release) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json(
        "get", "pods", "-n", chart.namespace, "-l",
        f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator",
    )["items"]  # fmt: skip
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def operator_log(kubectl: Kubectl, chart: Release, pod: str) -> str:
    return kubectl("logs", pod, "-n", chart.namespace, "--tail=-1").stdout


def released_kinds(release: Release) -> set[str]:
    """Kinds of the objects the release manages (hooks are not among them)."""
    manifest = release.helm("get", "manifest", RELEASE, "-n", release.namespace)
    return {doc["kind"] for doc in yaml.safe_load_all(manifest) if doc}


def assert_nothing_refused(kubectl: Kubectl, release: Release) -> None:
    """What the operator was granted was enough: none of its requests was refused."""
    for pod in operator_pods(kubectl, release):
        log = operator_log(kubectl, release, pod["metadata"]["name"])
        # 403 as a status ("(403)", ": 403 "), never as the milliseconds of a timestamp.
        assert not re.search(r"forbidden|\(403\)|: 403 ", log, re.IGNORECASE), log[-3000:]


def refused(kubectl: Kubectl, *args: str, input: str | None = None) -> str:
    """Run kubectl expecting the API server to refuse; its message."""
    with pytest.raises(KubectlError) as error:
        kubectl(*args, input=input)
    return error.value.result.stderr


def can_i(kubectl: Kubectl, user: str, *args: str) -> bool:
    result = kubectl("auth", "can-i", *args, f"--as={user}", check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


# --- the tests, in order ----------------------------------------------------------------


def test_the_operator_runs_as_the_charts_deployment(
    release: Release, kubectl: Kubectl, kubelet: LocalKubelet | None
) -> None:
    kubectl(
        "wait", "--for=condition=Available", f"deployment/{FULLNAME}", "-n", release.namespace,
        "--timeout=60s",
    )  # fmt: skip
    (pod,) = operator_pods(kubectl, release)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == FULLNAME
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == "agent-operator:e2e"
    if kubelet is not None:
        # The token mounted in the pod is one of the chart's ServiceAccount: whatever the
        # operator does, the API server authorizes as that account.
        pod_dir = kubelet.pod_dir(release.namespace, pod["metadata"]["name"])
        assert pod_dir is not None
        [token] = (pod_dir / "volumes").glob("kube-api-access-*/token")
        config = yaml.safe_load(release.kubeconfig.read_text())
        config["users"] = [{"name": "pod", "user": {"token": token.read_text()}}]
        config["contexts"][0]["context"]["user"] = "pod"
        as_pod = release.work / "pod.kubeconfig"
        as_pod.write_text(yaml.safe_dump(config))
        whoami = kubectl.json("auth", "whoami", f"--kubeconfig={as_pod}")
        assert whoami["status"]["userInfo"]["username"] == release.operator_user
    eventually(
        lambda: (
            "Activity 'start' succeeded" in operator_log(kubectl, release, pod["metadata"]["name"])
        ),
        60,
        "the operator to start",
    )


def test_a_task_runs_once_through_the_chart_and_a_reapply_changes_nothing(
    release: Release, kubectl: Kubectl
) -> None:
    path = write(release, "hello", task_manifest("hello"))
    kubectl("apply", "-f", str(path), "-n", release.tasks)
    wait_phase(kubectl, release, "hello", "Succeeded")
    task = kubectl.json("get", "agenttask", "hello", "-n", release.tasks)
    assert task["status"]["outputs"] == {"echo": {"echo": "hello"}}
    # Recorded by the API server (the chart's MutatingAdmissionPolicy), not by the manifest.
    assert task["metadata"]["annotations"][f"{GROUP}/created-by"] == release.admin

    jobs = jobs_of(kubectl, release, "hello")
    assert len(jobs) == 2
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "agent-steps"
        assert pod["automountServiceAccountToken"] is False
        env = {e["name"] for e in pod["containers"][0]["env"]}
        assert "AGENT_OPERATOR_DSN" not in env  # the operator's store stays the operator's

    # kubectl sends the step list again (the live one carries the schema's defaults), and
    # the API server finds nothing to change: no new generation, no write at all.
    kubectl("apply", "-f", str(path), "-n", release.tasks)
    after = kubectl.json("get", "agenttask", "hello", "-n", release.tasks, "--show-managed-fields")
    assert after["metadata"]["generation"] == task["metadata"]["generation"] == 1
    assert after["metadata"]["resourceVersion"] == task["metadata"]["resourceVersion"]
    # The operator never writes spec: only kubectl's field manager owns spec fields.
    owners = {m["manager"] for m in after["metadata"]["managedFields"] if "f:spec" in m["fieldsV1"]}
    assert owners == {"kubectl-client-side-apply"}


def test_the_operator_identity_is_denied_what_it_must_not_do(
    release: Release, kubectl: Kubectl
) -> None:
    operator, tasks = release.operator_user, release.tasks
    for args in [
        ("delete", "nodes"),
        ("*", "*"),
        ("*", "*", "-n", tasks),
        ("get", "secrets", "-n", "kube-system"),
        ("get", "secrets", "-n", release.namespace),  # not a watched namespace
        ("list", "secrets", "-n", tasks),  # get by name only: no listing every Secret
        ("create", "jobs", "-n", "kube-system"),
        ("create", "pods", "-n", tasks),
        ("update", f"agenttasks.{GROUP}", "-n", tasks),
        ("approve", f"approvalrequests.{GROUP}", "-n", tasks),
        ("create", "clusterrolebindings"),
        ("impersonate", "users"),
    ]:
        assert not can_i(kubectl, operator, *args), args
    for args in [
        ("get", "secrets", "-n", tasks),
        ("create", "jobs", "-n", tasks),
        ("get", "jobs", "-n", tasks),  # a Job it meets (409) is read back and adopted
        ("patch", "jobs", "-n", tasks),  # a prepared Job is let run
        ("patch", f"agenttasks.{GROUP}", "-n", tasks, "--subresource=status"),
        ("create", f"approvalrequests.{GROUP}", "-n", tasks),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ]:
        assert can_i(kubectl, operator, *args), args
    steps = f"system:serviceaccount:{tasks}:agent-steps"
    for args in [
        ("get", "pods", "-n", tasks),
        ("get", "secrets", "-n", tasks),
        ("list", f"agenttasks.{GROUP}", "-n", tasks),
        ("create", "jobs", "-n", tasks),
    ]:
        assert not can_i(kubectl, steps, *args), args
    assert_nothing_refused(kubectl, release)


def test_the_api_server_enforces_the_restricted_standard_the_pods_meet(
    release: Release, kubectl: Kubectl
) -> None:
    loose = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "loose"},
        "spec": {"containers": [{"name": "c", "image": "agent-runtime:e2e"}]},
    }
    for namespace in (release.namespace, release.tasks):
        message = refused(
            kubectl, "apply", "--dry-run=server", "-n", namespace, "-f", "-",
            input=json.dumps(loose),
        )  # fmt: skip
        assert 'violates PodSecurity "restricted:latest"' in message
    # ... while the operator and every step pod were admitted there.
    assert operator_pods(kubectl, release)
    assert len(kubectl.json("get", "pods", "-n", release.tasks)["items"]) >= 2


def test_approvals_are_unforgeable(release: Release, kubectl: Kubectl) -> None:
    tasks = release.tasks
    kubectl(
        "create", "rolebinding", "editors", f"--clusterrole={FULLNAME}-edit",
        "--user=alice", "--user=carol", "-n", tasks,
    )  # fmt: skip
    kubectl(
        "create", "rolebinding", "approvers", f"--clusterrole={FULLNAME}-approver",
        "--user=bob", "--user=carol", "-n", tasks,
    )  # fmt: skip
    # alice may create and patch ApprovalRequests (as a namespace admin might), not approve.
    kubectl(
        "create", "role", "apr-writer", "--verb=get,create,patch",
        f"--resource=approvalrequests.{GROUP}", "-n", tasks,
    )  # fmt: skip
    kubectl("create", "rolebinding", "apr-writer", "--role=apr-writer", "--user=alice", "-n", tasks)

    # carol creates the task, claiming in the manifest that bob did.
    forged = {"annotations": {f"{GROUP}/created-by": "bob"}}
    path = write(release, "risky", task_manifest("risky", approval=True, **forged))
    kubectl("--as=carol", "apply", "-f", str(path), "-n", tasks)
    task = kubectl.json("get", "agenttask", "risky", "-n", tasks)
    assert task["metadata"]["annotations"][f"{GROUP}/created-by"] == "carol"
    message = refused(
        kubectl, "--as=carol", "annotate", "--overwrite", "agenttask", "risky", "-n", tasks,
        f"{GROUP}/created-by=dave",
    )  # fmt: skip
    assert "cannot be set or changed by hand" in message

    wait_phase(kubectl, release, "risky", "WaitingApproval")
    (request,) = kubectl.json("get", "approvalrequests", "-n", tasks, "-l", f"{GROUP}/task=risky")[
        "items"
    ]
    name = request["metadata"]["name"]
    assert request["metadata"]["annotations"] == {f"{GROUP}/task-created-by": "carol"}

    # Only the operator creates requests: none arrives pre-approved or pointing at a task.
    fake = {**request, "metadata": {"name": "fake", "labels": request["metadata"]["labels"]}}
    fake["spec"] = {**request["spec"], "decision": "Approved"}
    message = refused(
        kubectl, "--as=alice", "create", "-n", tasks, "-f", "-", input=json.dumps(fake)
    )
    assert "created by the operator" in message

    def decide(user: str, spec: dict[str, Any]) -> None:
        kubectl(
            f"--as={user}", "patch", "approvalrequest", name, "-n", tasks, "--type=merge",
            "-p", json.dumps({"spec": spec}),
        )  # fmt: skip

    approve = {"decision": "Approved", "reason": "looks right"}
    # A wrong type is named by the schema (the mutating policy adding decidedBy used to fail
    # first, with "error applying patch").
    with pytest.raises(KubectlError, match=r"spec.reason: Invalid value: \"integer\""):
        decide("bob", {**approve, "reason": 5})
    with pytest.raises(KubectlError, match="alice may not decide ApprovalRequests"):
        decide("alice", approve)
    with pytest.raises(KubectlError, match="carol created AgentTask risky and may not approve"):
        decide("carol", approve)
    with pytest.raises(KubectlError, match="operator's record of who created"):
        kubectl(
            "--as=alice", "annotate", "--overwrite", "approvalrequest", name, "-n", tasks,
            f"{GROUP}/task-created-by=bob",
        )  # fmt: skip
    assert phase(kubectl, release, "risky") == "WaitingApproval"

    decide("bob", {**approve, "decidedBy": "carol"})  # a typed name is replaced by the real one
    decided = kubectl.json("get", "approvalrequest", name, "-n", tasks)
    assert decided["spec"]["decidedBy"] == "bob"
    wait_phase(kubectl, release, "risky", "Succeeded")
    status = eventually(
        lambda: (
            s
            if (
                s := kubectl.json("get", "approvalrequest", name, "-n", tasks).get("status", {})
            ).get("decidedBy")
            else None
        ),
        30,
        "the operator to record who decided",
    )
    assert (status["phase"], status["decidedBy"]) == ("Approved", "bob")
    events = kubectl.json(
        "get", "events", "-n", tasks, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    assert any(e["reason"] == "StepApproved" and "by bob" in e["message"] for e in events)

    # Final: not changed by its approver, nor its reason by anyone else.
    with pytest.raises(KubectlError, match="a decision cannot be changed once made"):
        decide("bob", {"decision": "Rejected"})
    with pytest.raises(KubectlError, match=r"decidedBy must be the user who makes the decision"):
        decide("carol", {"reason": "I meant to approve it myself"})

    # Nor its record in the status, by anyone but the operator: not even a cluster-admin.
    kubectl("create", "clusterrolebinding", "mallory-admin", "--clusterrole=cluster-admin",
            "--user=mallory")  # fmt: skip
    for kind, name_, status in (
        ("approvalrequest", name, {"decidedBy": "mallory"}),
        ("agenttask", "risky", {"phase": "Failed"}),
    ):
        message = refused(
            kubectl, "--as=mallory", "patch", kind, name_, "-n", tasks, "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": status}),
        )  # fmt: skip
        assert f"is written by the operator ({release.operator_user}) only" in message
    assert kubectl.json("get", "approvalrequest", name, "-n", tasks)["status"]["decidedBy"] == "bob"


def test_kubectl_agent_shows_a_task_and_decides_with_the_users_credentials(
    release: Release, kubectl: Kubectl
) -> None:
    tasks = release.tasks
    kubectl(
        "create", "rolebinding", "plugin-editors", f"--clusterrole={FULLNAME}-edit",
        "--user=erin", "-n", tasks,
    )  # fmt: skip
    kubectl(
        "create", "rolebinding", "plugin-approvers", f"--clusterrole={FULLNAME}-approver",
        "--user=erin", "--user=frank", "-n", tasks,
    )  # fmt: skip
    path = write(release, "plugged", task_manifest("plugged", approval=True))
    kubectl("--as=erin", "apply", "-f", str(path), "-n", tasks)
    wait_phase(kubectl, release, "plugged", "WaitingApproval")

    listed = kubectl.agent("get", "-n", tasks, "--as=erin").stdout.splitlines()
    assert listed[0].split() == ["NAME", "PHASE", "PROGRESS", "STEP", "AGE"]
    [row] = [line.split() for line in listed if line.startswith("plugged ")]
    assert row[:5] == ["plugged", "WaitingApproval", "0/1", "publish", "(WaitingApproval)"]
    as_data = json.loads(kubectl.agent("get", "-n", tasks, "-o", "json", "--as=erin").stdout)
    assert "plugged" in [t["metadata"]["name"] for t in as_data["items"]]
    # An approver reads the task (the chart's approver role lets them) as a tree of steps.
    tree = kubectl.agent("get", "plugged", "-n", tasks, "--as=frank").stdout.splitlines()
    assert tree[0].startswith("AgentTask plugged: WaitingApproval")
    header = tree.index(next(line for line in tree if line.startswith("STEP ")))
    assert tree[header].split() == [
        "STEP", "PHASE", "ATTEMPT", "DURATION", "RISK", "APPROVAL", "MESSAGE"
    ]  # fmt: skip
    assert tree[header + 1].split()[:6] == [
        "publish",
        "WaitingApproval",
        "-",
        "-",
        "safe",
        "Pending",
    ]

    # Its creator may not approve it: the admission policy's words, as one line.
    mine = kubectl.agent("approve", "plugged", "--yes", "-n", tasks, "--as=erin", check=False)
    assert mine.returncode == 1
    assert mine.stderr.count("\n") == 1
    assert "erin created AgentTask plugged and may not approve" in mine.stderr
    # No terminal to ask on, and no --yes: nothing is decided.
    asked = kubectl.agent("approve", "plugged", "-n", tasks, "--as=frank", check=False, input="")
    assert asked.returncode == 1 and "pass --yes" in asked.stderr
    assert "  tool:        noop" in asked.stdout
    assert "spec.safety.requireApprovalFor names tool 'noop'" in asked.stdout

    # On a terminal it asks; anything but yes changes nothing.
    primary, secondary = os.openpty()
    os.write(primary, b"n\n")
    with os.fdopen(secondary) as terminal:
        declined = kubectl.agent(
            "reject", "plugged", "-n", tasks, "--as=frank", check=False, stdin=terminal
        )
    os.close(primary)
    assert declined.returncode == 1
    assert declined.stdout.endswith("Reject step publish? [y/N] Nothing changed.\n")
    assert phase(kubectl, release, "plugged") == "WaitingApproval"

    done = kubectl.agent(
        "approve", "plugged", "--reason", "checked it", "--yes", "-n", tasks, "--as=frank"
    )
    assert done.stdout.splitlines()[-1] == "Approved step publish as frank."
    wait_phase(kubectl, release, "plugged", "Succeeded")
    (request,) = kubectl.json(
        "get", "approvalrequests", "-n", tasks, "-l", f"{GROUP}/task=plugged"
    )["items"]
    assert (request["spec"]["decidedBy"], request["spec"]["reason"]) == ("frank", "checked it")
    again = kubectl.agent("approve", "plugged", "--yes", "-n", tasks, "--as=frank", check=False)
    assert again.stderr == "error: no step of AgentTask plugged waits for a decision\n"

    logs = kubectl.agent("logs", "plugged", "-n", tasks).stdout
    assert logs.startswith("==> step publish, attempt 1 (pod plugged-publish-1-")
    assert '"ok":true' in logs


def test_kubectl_agent_watches_follows_logs_and_plans_without_running(
    release: Release, kubectl: Kubectl
) -> None:
    tasks = release.tasks
    pool = kubectl.json("get", "agentpool", "default", "-n", tasks)
    slow = {
        "apiVersion": pool["apiVersion"],
        "kind": "AgentPool",
        "metadata": {"name": "sleepers", "namespace": tasks},
        "spec": {**pool["spec"], "tools": ["sleep", "noop"]},
    }
    kubectl.apply(slow)
    try:
        _plan_watch_and_follow(release, kubectl, tasks)
    finally:  # the chart's own pool stays the namespace's only one (the uninstall test)
        kubectl("delete", "agentpool", "sleepers", "-n", tasks)


def _plan_watch_and_follow(release: Release, kubectl: Kubectl, tasks: str) -> None:
    napping = task_manifest("napping")
    napping["spec"] = {
        "poolRef": {"name": "sleepers"},
        "steps": [{"id": "nap", "tool": "sleep", "params": {"seconds": 3}}],
    }
    # The plan, against the cluster's pool, with nothing created.
    planned = kubectl.agent("plan", "-f", str(write(release, "napping", napping)), "-n", tasks)
    lines = planned.stdout.splitlines()
    assert (
        lines[0] == f"AgentTask napping on pool sleepers (namespace {tasks}): 1 step, nothing run"
    )
    assert lines[1].split() == ["STEP", "TOOL", "AFTER", "RISK", "GATE", "WHY"]
    assert lines[2].split()[:6] == ["nap", "sleep", "-", "safe", "runs", "unattended"]
    assert phase(kubectl, release, "napping") == ""  # not created
    sneaky = {**napping, "spec": {**napping["spec"], "steps": [{"id": "x", "tool": "shell"}]}}
    refused_plan = kubectl.agent(
        "plan", "-f", str(write(release, "sneaky", sneaky)), "-n", tasks, check=False
    )
    assert refused_plan.returncode == 1
    assert refused_plan.stderr.startswith("error: the plan is not valid: step 'x' (steps[0])")

    # `get -w`: a row for each change; `logs -f`: the pods' logs until the task ends.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    watcher = subprocess.Popen(
        [kubectl.binary, "agent", "get", "-w", "-n", tasks, f"--kubeconfig={kubectl.kubeconfig}"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    rows: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [rows.put(line) for line in watcher.stdout or []]).start()
    try:
        assert rows.get(timeout=30).split() == ["NAME", "PHASE", "PROGRESS", "STEP", "AGE"]
        kubectl.apply(napping, namespace=tasks)  # after the list: seen by the watch
        followed = kubectl.agent("logs", "napping", "-f", "-n", tasks)  # ends with the task
        seen: list[str] = []
        while not any(r.split()[:2] == ["napping", "Succeeded"] for r in seen):
            seen.append(rows.get(timeout=60))
    finally:
        watcher.terminate()
        watcher.wait(10)
    phases = [r.split()[1] for r in seen if r.startswith("napping ")]
    assert "Running" in phases and phases[-1] == "Succeeded", seen
    assert followed.stdout.startswith("==> step nap, attempt 1 (pod napping-nap-1-")
    assert '"event": "step started"' in followed.stdout
    assert '"slept":3' in followed.stdout.replace(" ", "")

    # `get TASK -w` of a task waiting for a person: a view per change, until it ends.
    kubectl(
        "create", "rolebinding", "watching-approvers", f"--clusterrole={FULLNAME}-approver",
        "--user=grace", "-n", tasks,
    )  # fmt: skip
    kubectl.apply(task_manifest("gated", approval=True), namespace=tasks)
    wait_phase(kubectl, release, "gated", "WaitingApproval")
    follower = subprocess.Popen(
        [kubectl.binary, "agent", "get", "gated", "-w", "-n", tasks,
         f"--kubeconfig={kubectl.kubeconfig}"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()  # the view before the decision
        kubectl.agent("approve", "gated", "--yes", "-n", tasks, "--as=grace")
        shown, _ = follower.communicate(timeout=90)
    finally:
        follower.kill()
        follower.wait(10)
    assert follower.returncode == 0
    assert first.startswith("AgentTask gated: WaitingApproval")
    views = [line for line in shown.splitlines() if line.startswith("AgentTask gated: ")]
    assert views[-1].startswith("AgentTask gated: Succeeded")


def test_a_wrong_type_is_named_by_the_schema_not_the_mutating_policy(
    release: Release, kubectl: Kubectl
) -> None:
    wrong = task_manifest("wrong-type")
    wrong["spec"]["steps"][0]["retries"] = "many"
    message = refused(
        kubectl, "--as=carol", "create", "-n", release.tasks, "-f", "-", input=json.dumps(wrong)
    )
    assert "spec.steps[0].retries" in message and "must be of type integer" in message, message
    assert "error applying patch" not in message


def _newer_chart(release: Release) -> Path:
    """A copy of the chart as a next version might be: its AgentTask CRD has a new column."""
    copy = release.work / "chart-next"
    shutil.copytree(CHART, copy)
    crd = copy / "templates" / "crds" / "agenttasks.yaml"
    text = crd.read_text()
    column = (
        "    - additionalPrinterColumns:\n"
        "        - jsonPath: .spec.goal\n"
        "          name: Goal\n"
        "          priority: 1\n"
        "          type: string\n"
    )
    assert text.count("    - additionalPrinterColumns:\n") == 1
    crd.write_text(text.replace("    - additionalPrinterColumns:\n", column))
    return copy


def test_helm_upgrade_changes_a_setting_and_updates_the_crds(
    release: Release, kubectl: Kubectl
) -> None:
    (before,) = operator_pods(kubectl, release)
    assert_nothing_refused(kubectl, release)  # approvals included: created, watched, recorded
    jobs_before = len(jobs_of(kubectl, release, "hello"))
    # The default pool is a release resource from the start unless its CRD came with the
    # release (as on a fresh cluster; earlier tests of this session may have applied it).
    assert ("AgentPool" in released_kinds(release)) != release.pool_crd_came_with_it

    release.helm(
        "upgrade", RELEASE, str(_newer_chart(release)), "--namespace", release.namespace,
        "--values", str(release.values), "--set", "logFormat=json", "--wait",
        "--timeout", HELM_TIMEOUT,
    )  # fmt: skip

    crd = kubectl.json("get", "crd", f"agenttasks.{GROUP}")
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert "Goal" in columns  # templates/, not crds/: Helm upgrades them
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    config = kubectl.json("get", "configmap", FULLNAME, "-n", release.namespace)
    assert config["data"]["AGENT_OPERATOR_LOG_FORMAT"] == "json"
    # The default pool, a hook if it was one on the first install, is a release resource.
    assert "AgentPool" in released_kinds(release)

    # The settings change rolled the pod (Recreate: the old one first), which logs JSON.
    (after,) = eventually(
        lambda: (
            [
                p
                for p in operator_pods(kubectl, release)
                if p["metadata"]["uid"] != before["metadata"]["uid"]
            ]
            or None
        ),
        60,
        "the new operator pod",
    )
    name = after["metadata"]["name"]
    log = eventually(
        lambda: t if "start" in (t := operator_log(kubectl, release, name)) else None,
        60,
        "the new operator's log",
    )
    first = json.loads(next(line for line in log.splitlines() if line.strip()))
    assert "message" in first

    path = write(release, "after-upgrade", task_manifest("after-upgrade"))
    kubectl("apply", "-f", str(path), "-n", release.tasks)
    wait_phase(kubectl, release, "after-upgrade", "Succeeded")
    # The restarted operator saw the finished task again and ran nothing of it twice.
    assert phase(kubectl, release, "hello") == "Succeeded"
    assert len(jobs_of(kubectl, release, "hello")) == jobs_before


def test_two_replicas_peer_and_only_one_works(release: Release, kubectl: Kubectl) -> None:
    # Both pods of the local kubelet share 127.0.0.1: no metrics or health port for them.
    release.helm(
        "upgrade", RELEASE, str(CHART), "--namespace", release.namespace,
        "--values", str(release.values),
        "--set", "replicaCount=2,metrics.enabled=false,healthPort=0",
        "--wait", "--timeout", HELM_TIMEOUT,
    )  # fmt: skip
    config = kubectl.json("get", "configmap", FULLNAME, "-n", release.namespace)
    assert config["data"]["AGENT_OPERATOR_PEERING"] == "true"

    def peers() -> dict[str, Any] | None:
        peering = kubectl.json("get", "kopfpeering", "default", "-n", release.tasks)
        live = {k: v for k, v in (peering.get("status") or {}).items() if v.get("lifetime", 0) > 0}
        pods = operator_pods(kubectl, release)
        return live if len(pods) == 2 and len(live) >= 2 else None

    live = eventually(peers, 60, "two operators in the peering")
    assert len({p["priority"] for p in live.values()}) == len(live), "priorities must differ"
    # A standby takes over within the chart's peeringLifetimeSeconds, not Kopf's 60 s.
    assert {p["lifetime"] for p in live.values()} == {10}

    # Kopf starts paused and says so when that changes: the last word of each pod's log
    # tells whether it works. Exactly one does.
    def working(pod: dict[str, Any]) -> bool:
        log = operator_log(kubectl, release, pod["metadata"]["name"])
        said = re.findall(r"(Resuming) operations|(Pausing) (?:operations|all operators)", log)
        return bool(said) and said[-1][0] == "Resuming"

    eventually(
        lambda: [working(p) for p in operator_pods(kubectl, release)].count(True) == 1,
        60,
        "exactly one operator to work and the other to stand by",
    )

    path = write(release, "with-peers", task_manifest("with-peers"))
    kubectl("apply", "-f", str(path), "-n", release.tasks)
    wait_phase(kubectl, release, "with-peers", "Succeeded")
    assert len(jobs_of(kubectl, release, "with-peers")) == 2
    assert_nothing_refused(kubectl, release)  # peering included


def test_without_a_store_the_operator_keeps_sqlite_on_the_charts_tmp_volume(
    release: Release, kubectl: Kubectl
) -> None:
    """The chart's default store is SQLite, under the emptyDir at /tmp: the image's root
    filesystem is read-only, so state, caches and temp files must all go there."""
    jobs_before = len(jobs_of(kubectl, release, "hello"))
    release.helm(
        "upgrade", RELEASE, str(CHART), "--namespace", release.namespace,
        "--values", str(release.values), "--set", "store.existingSecret=",
        "--wait", "--timeout", HELM_TIMEOUT,
    )  # fmt: skip

    def sqlite_operator() -> str | None:
        pods = operator_pods(kubectl, release)
        if len(pods) != 1:
            return None
        log = operator_log(kubectl, release, pods[0]["metadata"]["name"])
        return log if "checkpoint store ready at sqlite:////tmp/state/" in log else None

    log = eventually(sqlite_operator, 60, "one operator, on SQLite under /tmp")
    assert "Read-only file system" not in log
    path = write(release, "on-sqlite", task_manifest("on-sqlite"))
    kubectl("apply", "-f", str(path), "-n", release.tasks)
    wait_phase(kubectl, release, "on-sqlite", "Succeeded")
    # A store that never saw "hello" still runs nothing of it again: its status says it ended.
    assert phase(kubectl, release, "hello") == "Succeeded"
    assert len(jobs_of(kubectl, release, "hello")) == jobs_before


def test_uninstall_keeps_the_crds_and_the_tasks(release: Release, kubectl: Kubectl) -> None:
    # Tasks the operator should finalize go while it runs; "hello" stays to be kept.
    for name in _names(kubectl, "agenttasks", release.tasks):
        if name != "hello":
            kubectl("delete", "agenttask", name, "-n", release.tasks, "--wait=false")
    eventually(
        lambda: _names(kubectl, "agenttasks", release.tasks) == ["hello"], 60, "tasks finalized"
    )
    release.helm("uninstall", RELEASE, "--namespace", release.namespace, "--wait", "--timeout=60s")
    release.installed = False

    for crd in CRDS:
        kept = kubectl.json("get", "crd", crd)
        assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert phase(kubectl, release, "hello") == "Succeeded"
    assert _names(kubectl, "agentpools", release.tasks) == ["default"]
    for kind, name in [
        ("deployment", f"{FULLNAME} -n {release.namespace}"),
        ("clusterrole", f"{FULLNAME}-approver"),
        ("validatingadmissionpolicy", f"{FULLNAME}-approval-decide"),
        ("mutatingadmissionpolicy", f"{FULLNAME}-task-creator"),
    ]:
        result = kubectl("get", kind, *name.split(), check=False)
        assert result.returncode != 0 and "NotFound" in result.stderr, (kind, name)
    with pytest.raises(HelmError):
        release.helm("status", RELEASE, "--namespace", release.namespace)
