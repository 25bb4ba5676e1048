"""The e2e cluster is real: pinned control plane, working controllers, a kubelet that runs pods.

Everything goes through kubectl and the API, so these tests also pass on another cluster
(KUBECONFIG_E2E, with busybox pulled); those that need the local kubelet's processes skip there.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import eventually
from localcluster.kubelet import LocalKubelet
from tests.e2e.conftest import REPO, Cluster, Kubectl

pytestmark = pytest.mark.e2e

IMAGE = "busybox:1.36"  # the local kubelet runs the command; other clusters pull this
WAIT = "--timeout=60s"


def pinned_version() -> str:
    versions = (REPO / "hack" / "versions.env").read_text()
    found = re.search(r"^K8S_VERSION=(\S+)$", versions, re.MULTILINE)
    assert found is not None
    return found.group(1)


def local_only(kubelet: LocalKubelet | None) -> LocalKubelet:
    if kubelet is None:
        pytest.skip("needs the local kubelet (it runs pods as processes of this machine)")
    return kubelet


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A one-container pod running `script` with /bin/sh."""
    container = {"name": "main", "image": IMAGE, "command": ["/bin/sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    template = pod(name, script)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": template["spec"]}, **spec},
    }


def message_of(status: dict[str, Any]) -> str:
    return str(status["containerStatuses"][0]["state"]["terminated"].get("message", ""))


def wait_phase(kubectl: Kubectl, namespace: str, name: str, phase: str) -> dict[str, Any]:
    kubectl(
        "wait", f"--for=jsonpath={{.status.phase}}={phase}", f"pod/{name}", "-n", namespace, WAIT
    )
    found: dict[str, Any] = kubectl.json("get", "pod", name, "-n", namespace)
    return found


def job_pod(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", f"job-name={name}")["items"]
    assert len(pods) == 1, pods
    found: dict[str, Any] = pods[0]
    return found


def test_control_plane_runs_the_pinned_version(control_plane: Cluster, kubectl: Kubectl) -> None:
    if not control_plane.local:
        pytest.skip("an external cluster runs its own version")
    versions = kubectl.json("version")
    assert versions["serverVersion"]["gitVersion"] == pinned_version()
    assert versions["clientVersion"]["gitVersion"] == pinned_version()


def test_node_is_ready_and_untainted(kubectl: Kubectl, kubelet: LocalKubelet | None) -> None:
    def ready_node() -> dict[str, Any] | None:
        for node in kubectl.json("get", "nodes")["items"]:
            if kubelet and node["metadata"]["name"] != kubelet.node_name:
                continue
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]
            )
            taints = {t["key"] for t in node["spec"].get("taints", [])}
            if ready and "node.kubernetes.io/not-ready" not in taints:
                found: dict[str, Any] = node
                return found
        return None

    # The node-lifecycle controller lifts the not-ready taint a few seconds after Ready.
    node = eventually(ready_node, 60, "a Ready node without the not-ready taint")
    lease = kubectl.json("get", "lease", node["metadata"]["name"], "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == node["metadata"]["name"]


def test_job_completes_with_termination_message(kubectl: Kubectl, namespace: str) -> None:
    script = 'echo "step output"; printf done > "${TERMINATION_MESSAGE_PATH:-/dev/termination-log}"'
    kubectl.apply(job("ok", script, backoffLimit=0), namespace=namespace)
    kubectl("wait", "--for=condition=Complete", "job/ok", "-n", namespace, WAIT)
    terminated = job_pod(kubectl, namespace, "ok")["status"]["containerStatuses"][0]["state"]
    assert terminated["terminated"]["exitCode"] == 0
    assert terminated["terminated"]["reason"] == "Completed"
    assert terminated["terminated"]["message"] == "done"
    # Logs come through the API server from the kubelet.
    assert kubectl("logs", "job/ok", "-n", namespace).stdout == "step output\n"


def test_failing_job_fails_with_the_exit_code(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(job("bad", "echo broken >&2; exit 3", backoffLimit=0), namespace=namespace)
    kubectl("wait", "--for=condition=Failed", "job/bad", "-n", namespace, WAIT)
    terminated = job_pod(kubectl, namespace, "bad")["status"]["containerStatuses"][0]["state"]
    assert terminated["terminated"]["exitCode"] == 3
    assert terminated["terminated"]["reason"] == "Error"


def test_fallback_to_logs_on_error(kubectl: Kubectl, namespace: str) -> None:
    manifest = pod(
        "fallback",
        "echo last words; exit 1",
        container={"terminationMessagePolicy": "FallbackToLogsOnError"},
    )
    kubectl.apply(manifest, namespace=namespace)
    status = wait_phase(kubectl, namespace, "fallback", "Failed")["status"]
    assert message_of(status).strip() == "last words"


def test_init_containers_run_first(kubectl: Kubectl, namespace: str) -> None:
    init = {
        "name": "setup",
        "image": IMAGE,
        "command": [
            "/bin/sh",
            "-c",
            'echo ready > "${TERMINATION_MESSAGE_PATH:-/dev/termination-log}"',
        ],
    }
    kubectl.apply(pod("ordered", "true", initContainers=[init]), namespace=namespace)
    status = wait_phase(kubectl, namespace, "ordered", "Succeeded")["status"]
    setup = status["initContainerStatuses"][0]["state"]["terminated"]
    main = status["containerStatuses"][0]["state"]["terminated"]
    assert setup["message"].strip() == "ready"
    assert setup["finishedAt"] <= main["startedAt"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Initialized"] == "True"


def test_deleting_a_job_stops_its_running_pod(kubectl: Kubectl, namespace: str) -> None:
    """The Job controller's finalizer on the pod is lifted once the kubelet reports the end."""
    kubectl.apply(job("endless", "exec sleep 3600"), namespace=namespace)
    kubectl(
        "wait", "--for=jsonpath={.status.phase}=Running", "pod", "-l", "job-name=endless",
        "-n", namespace, WAIT,
    )  # fmt: skip
    finalizers = job_pod(kubectl, namespace, "endless")["metadata"]["finalizers"]
    assert "batch.kubernetes.io/job-tracking" in finalizers
    kubectl("delete", "job", "endless", "-n", namespace, "--cascade=foreground", WAIT)
    assert not kubectl.json("get", "pods", "-n", namespace, "-l", "job-name=endless")["items"]


def test_deployment_becomes_available(kubectl: Kubectl, namespace: str) -> None:
    labels = {"app": "sleeper"}
    spec = pod("sleeper", "exec sleep 3600", restartPolicy="Always")["spec"]
    template = {"metadata": {"labels": labels}, "spec": spec}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
    }
    kubectl.apply(deployment, namespace=namespace)
    kubectl("wait", "--for=condition=Available", "deployment/sleeper", "-n", namespace, WAIT)
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", "app=sleeper")["items"]
    conditions = {c["type"]: c["status"] for c in pods[0]["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert conditions["ContainersReady"] == "True"
    assert conditions["Initialized"] == "True"
    assert pods[0]["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]


def test_env_from_secret_config_map_and_downward_api(kubectl: Kubectl, namespace: str) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "stringData": {"token": "s3cret"},
    }
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"greeting": "hello", "LEVEL": "debug"},
    }
    names = ["TOKEN", "GREETING", "CFG_LEVEL", "TWICE", "POD", "NS", "UID", "NODE", "SA", "IP"]
    script = "for v in " + " ".join(names) + '; do echo "$v=`printenv $v`"; done'
    script += ' > "${TERMINATION_MESSAGE_PATH:-/dev/termination-log}"'
    fields = {
        "POD": "metadata.name",
        "NS": "metadata.namespace",
        "UID": "metadata.uid",
        "NODE": "spec.nodeName",
        "SA": "spec.serviceAccountName",
        "IP": "status.podIP",
    }
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {
            "name": "GREETING",
            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}},
        },
        {"name": "TWICE", "value": "$(GREETING)-$(GREETING)"},
        *({"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in fields.items()),
    ]
    env_from = [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]
    manifest = pod("env", script, container={"env": env, "envFrom": env_from})
    kubectl.apply(secret, config, manifest, namespace=namespace)
    found = wait_phase(kubectl, namespace, "env", "Succeeded")
    lines = message_of(found["status"]).splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert values == {
        "TOKEN": "s3cret",
        "GREETING": "hello",
        "CFG_LEVEL": "debug",
        "TWICE": "hello-hello",
        "POD": "env",
        "NS": namespace,
        "UID": found["metadata"]["uid"],
        "NODE": found["spec"]["nodeName"],
        "SA": "default",
        "IP": found["status"]["podIP"],
    }


def test_service_account_token_is_authorized_by_rbac(
    control_plane: Cluster, kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    local = local_only(kubelet)
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl("create", "configmap", "visible", "--from-literal=a=b", "-n", namespace)
    kubectl("create", "role", "read-config", "--verb=get", "--resource=configmaps", "-n", namespace)
    kubectl(
        "create", "rolebinding", "reader", "--role=read-config",
        f"--serviceaccount={namespace}:reader", "-n", namespace,
    )  # fmt: skip
    # The pod runs this machine's kubectl, which finds the pod's token through $KUBECONFIG.
    script = (
        '{ "$KUBECTL" get configmap visible -o name; echo "get=$?";'
        ' "$KUBECTL" get secrets 2>&1; echo "list=$?"; }'
        ' > "$TERMINATION_MESSAGE_PATH"'
    )
    manifest = pod(
        "caller",
        script,
        serviceAccountName="reader",
        container={"env": [{"name": "KUBECTL", "value": kubectl.binary}]},
    )
    kubectl.apply(manifest, namespace=namespace)
    found = wait_phase(kubectl, namespace, "caller", "Succeeded")
    message = message_of(found["status"])
    assert "configmap/visible\nget=0" in message
    assert "forbidden" in message
    assert f'User "system:serviceaccount:{namespace}:reader" cannot list' in message
    assert "list=1" in message
    # The token came from the TokenRequest API, bound to this pod on this node.
    pod_dir = local.pod_dir(namespace, "caller")
    assert pod_dir is not None
    token = (pod_dir / "serviceaccount" / "token").read_text()
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["kubernetes.io"]["pod"]["uid"] == found["metadata"]["uid"]
    assert claims["kubernetes.io"]["node"]["name"] == local.node_name


PYTHON_CLIENT = """
import os, kubernetes
try:
    kubernetes.config.load_incluster_config()
    how = "in-cluster"
except kubernetes.config.ConfigException:
    kubernetes.config.load_kube_config()
    how = "kubeconfig"
try:
    kubernetes.client.CoreV1Api().list_namespaced_secret(os.environ["NS"])
    outcome = "allowed"
except kubernetes.client.ApiException as exc:
    outcome = f"{exc.status} {exc.body}"
with open(os.environ["TERMINATION_MESSAGE_PATH"], "w") as out:
    out.write(f"{how}\\n{outcome}")
"""


def test_python_client_in_a_pod_finds_the_pod_token(
    kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    """The `kubernetes` client (as the operator and runtime use it) falls back from
    in-cluster config to the pod's $KUBECONFIG and authenticates as the pod's account."""
    local_only(kubelet)
    manifest = pod("client", "")
    manifest["spec"]["containers"][0].update(
        command=[sys.executable, "-c", PYTHON_CLIENT],
        env=[{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
    )
    kubectl.apply(manifest, namespace=namespace)
    status = wait_phase(kubectl, namespace, "client", "Succeeded")["status"]
    how, outcome = message_of(status).split("\n", 1)
    assert how == "kubeconfig"
    assert outcome.startswith("403 ")
    assert f"system:serviceaccount:{namespace}:default" in outcome


def test_deleting_a_running_pod_kills_its_process(
    kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    local_only(kubelet)
    kubectl.apply(pod("victim", "exec sleep 3600"), namespace=namespace)
    status = wait_phase(kubectl, namespace, "victim", "Running")["status"]
    pid = int(status["containerStatuses"][0]["containerID"].removeprefix("local://"))
    assert Path(f"/proc/{pid}").exists()
    kubectl("delete", "pod", "victim", "-n", namespace, WAIT)
    eventually(lambda: not Path(f"/proc/{pid}").exists(), 10, f"process {pid} to end")


def test_restart_on_failure_counts_restarts(
    kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    local_only(kubelet)  # the marker file survives restarts only in the local pod directory
    script = 'test -e "$HOME/ran" && exit 0; touch "$HOME/ran"; exit 1'
    kubectl.apply(pod("flaky", script, restartPolicy="OnFailure"), namespace=namespace)
    status = wait_phase(kubectl, namespace, "flaky", "Succeeded")["status"]
    container = status["containerStatuses"][0]
    assert container["restartCount"] == 1
    assert container["lastState"]["terminated"]["exitCode"] == 1


def test_active_deadline_fails_the_pod(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(pod("slow", "exec sleep 3600", activeDeadlineSeconds=2), namespace=namespace)
    status = wait_phase(kubectl, namespace, "slow", "Failed")["status"]
    assert status["reason"] == "DeadlineExceeded"


def test_unknown_image_without_command_waits_as_err_image_never_pull(
    kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    local_only(kubelet)
    manifest = pod("imageless", "")
    del manifest["spec"]["containers"][0]["command"]
    manifest["spec"]["containers"][0]["image"] = "example.invalid/unknown:1"
    manifest["spec"]["activeDeadlineSeconds"] = 3
    kubectl.apply(manifest, namespace=namespace)

    def pull_error() -> dict[str, Any] | None:
        status = kubectl.json("get", "pod", "imageless", "-n", namespace).get("status", {})
        states = [c.get("state", {}) for c in status.get("containerStatuses", [])]
        waiting: dict[str, Any] = states[0].get("waiting", {}) if states else {}
        return waiting if waiting.get("reason") == "ErrImageNeverPull" else None

    found = eventually(pull_error, 30, "the container to wait with ErrImageNeverPull")
    assert "example.invalid/unknown:1" in found["message"]
    # As on a node that may not pull: nothing fails the pod but its deadline.
    status = wait_phase(kubectl, namespace, "imageless", "Failed")["status"]
    assert status["reason"] == "DeadlineExceeded", status


def test_ttl_controller_deletes_a_finished_job(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(job("brief", "true", ttlSecondsAfterFinished=0), namespace=namespace)
    # Only a finished Job is deleted by the TTL controller: its absence proves both.
    eventually(
        lambda: not kubectl("get", "job", "brief", "-n", namespace, check=False).stdout,
        60,
        "the ttl-after-finished controller to delete job/brief",
    )
    eventually(
        lambda: not kubectl.json("get", "pods", "-n", namespace, "-l", "job-name=brief")["items"],
        30,
        "the garbage collector to delete the Job's pod",
    )


def test_validating_admission_policy_is_enforced(kubectl: Kubectl, namespace: str) -> None:
    resources = kubectl("api-resources", "--api-group=admissionregistration.k8s.io").stdout
    assert re.search(
        r"^validatingadmissionpolicies\s.*admissionregistration\.k8s\.io/v1\s", resources, re.M
    )
    kubectl("label", "namespace", namespace, "e2e-policy=on")
    name = f"{namespace}-no-blocked"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["configmaps"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "!has(object.data) || !('blocked' in object.data)",
                    "message": "blocked by e2e policy",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"e2e-policy": "on"}}},
        },
    }
    kubectl.apply(policy, binding)
    try:

        def denied() -> bool:
            attempt = kubectl(
                "create", "configmap", "probe", "--from-literal=blocked=1", "-n", namespace,
                "--dry-run=server", check=False,
            )  # fmt: skip
            return attempt.returncode != 0 and "blocked by e2e policy" in attempt.stderr

        # The admission plugin picks up new policies a moment after they are created.
        eventually(denied, 30, "the policy to deny a ConfigMap with a `blocked` key")
        kubectl("create", "configmap", "fine", "--from-literal=ok=1", "-n", namespace)
    finally:
        kubectl(
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            name,
            check=False,
        )


def test_pods_do_not_inherit_the_host_env(
    kubectl: Kubectl,
    kubelet: LocalKubelet | None,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pods see their own env, not the test runner's."""
    local_only(kubelet)
    monkeypatch.setenv("E2E_HOST_ONLY", "1")
    kubectl.apply(pod("env-clean", 'env > "$TERMINATION_MESSAGE_PATH"'), namespace=namespace)
    status = wait_phase(kubectl, namespace, "env-clean", "Succeeded")["status"]
    names = {line.split("=", 1)[0] for line in message_of(status).splitlines()}
    assert "E2E_HOST_ONLY" not in names
    assert {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG", "HOME"} <= names


def test_project_image_runs_from_the_virtualenv(
    kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    """A container without a command runs its image's entrypoint, here the project's runtime."""
    local_only(kubelet)
    manifest = pod("runtime", "")
    container = manifest["spec"]["containers"][0]
    del container["command"]
    container.update(image="agent-runtime:0.1.0", args=["--help"])
    kubectl.apply(manifest, namespace=namespace)
    wait_phase(kubectl, namespace, "runtime", "Succeeded")
    assert "run-step" in kubectl("logs", "runtime", "-n", namespace).stdout
