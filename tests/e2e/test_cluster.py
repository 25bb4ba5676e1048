"""The e2e cluster is real: pinned control plane, working controllers, a kubelet that runs pods.

Everything goes through kubectl and the API, so these tests also pass on another cluster
(KUBECONFIG_E2E, with busybox and the runtime image loaded); those that look at the local
kubelet's files and processes skip there.
"""

from __future__ import annotations

import base64
import json
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import eventually
from localcluster.kubelet import LocalKubelet
from tests.e2e.conftest import REPO, Cluster, Kubectl

pytestmark = pytest.mark.e2e

IMAGE = "busybox:1.36"  # `make images` makes it for the local kubelet; other clusters pull it
RUNTIME_IMAGE = f"agent-runtime:{version('agent-operator')}"
WAIT = "--timeout=60s"


def pinned_version() -> str:
    versions = (REPO / "hack" / "versions.env").read_text()
    found = re.search(r"^K8S_VERSION=(\S+)$", versions, re.MULTILINE)
    assert found is not None
    return found.group(1)


def local_only(kubelet: LocalKubelet | None) -> LocalKubelet:
    if kubelet is None:
        pytest.skip("needs the local kubelet (it looks at the pod's files and processes here)")
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


def plain(kind: str, name: str, **fields: Any) -> dict[str, Any]:
    """A core/v1 object such as a Secret or a ConfigMap."""
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, **fields}


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


def wait_waiting(kubectl: Kubectl, namespace: str, name: str, reason: str) -> dict[str, Any]:
    """The pod's first container's `waiting` state, once it waits for `reason`."""

    def waiting() -> dict[str, Any] | None:
        status = kubectl.json("get", "pod", name, "-n", namespace).get("status", {})
        states = [c.get("state", {}) for c in status.get("containerStatuses", [])]
        found: dict[str, Any] = states[0].get("waiting", {}) if states else {}
        return found if found.get("reason") == reason else None

    found: dict[str, Any] = eventually(waiting, 30, f"{name}'s container to wait with {reason}")
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
    script = 'echo "step output"; printf done > /dev/termination-log'
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
            "echo ready > /dev/termination-log",
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
    secret = plain("Secret", "creds", stringData={"token": "s3cret"})
    config = plain("ConfigMap", "settings", data={"greeting": "hello", "LEVEL": "debug"})
    names = ["TOKEN", "GREETING", "CFG_LEVEL", "TWICE", "POD", "NS", "UID", "NODE", "SA", "IP"]
    script = "env > /dev/termination-log"
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
    values = {k: v for k, v in (line.split("=", 1) for line in lines) if k in names}
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
    # The pod runs this machine's kubectl (a static binary, mounted from the host), which
    # finds the pod's token where the ServiceAccount admission plugin mounted it.
    script = (
        '{ /kubectl/kubectl get configmap visible -o name; echo "get=$?";'
        ' /kubectl/kubectl get secrets 2>&1; echo "list=$?"; }'
        " > /dev/termination-log"
    )
    binaries = {"name": "kubectl", "hostPath": {"path": str(Path(kubectl.binary).parent)}}
    manifest = pod(
        "caller",
        script,
        serviceAccountName="reader",
        volumes=[binaries],
        container={"volumeMounts": [{"name": "kubectl", "mountPath": "/kubectl"}]},
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
    [token_file] = (pod_dir / "volumes").glob("kube-api-access-*/token")
    token = token_file.read_text()
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
with open("/dev/termination-log", "w") as out:
    out.write(f"{how}\\n{outcome}")
"""


def test_python_client_in_a_pod_finds_the_pod_token(kubectl: Kubectl, namespace: str) -> None:
    """The `kubernetes` client in the runtime image (as the operator and the runtime use it)
    finds the in-cluster config: the token mounted for the pod, readable by the image's
    non-root user, and authenticates as the pod's account."""
    manifest = pod("client", "")
    manifest["spec"]["containers"][0].update(
        image=RUNTIME_IMAGE,
        command=["python", "-c", PYTHON_CLIENT],
        env=[{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
    )
    kubectl.apply(manifest, namespace=namespace)
    status = wait_phase(kubectl, namespace, "client", "Succeeded")["status"]
    how, outcome = message_of(status).split("\n", 1)
    assert how == "in-cluster"
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


def test_restart_on_failure_counts_restarts(kubectl: Kubectl, namespace: str) -> None:
    """A restarted container starts from a fresh writable layer; an emptyDir outlives it."""
    script = "test -e /state/ran && test ! -e /layer && exit 0; touch /state/ran /layer; exit 1"
    manifest = pod(
        "flaky",
        script,
        restartPolicy="OnFailure",
        volumes=[{"name": "state", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "state", "mountPath": "/state"}]},
    )
    kubectl.apply(manifest, namespace=namespace)
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
    found = wait_waiting(kubectl, namespace, "imageless", "ErrImageNeverPull")
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
    kubectl.apply(pod("env-clean", "env > /dev/termination-log"), namespace=namespace)
    status = wait_phase(kubectl, namespace, "env-clean", "Succeeded")["status"]
    names = {line.split("=", 1)[0] for line in message_of(status).splitlines()}
    assert "E2E_HOST_ONLY" not in names
    assert {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "HOME", "PATH"} <= names


def test_a_container_without_a_command_runs_its_images_entrypoint(
    kubectl: Kubectl, namespace: str
) -> None:
    """Here the runtime image's ENTRYPOINT (`agent-runtime`), with the pod's args."""
    manifest = pod("runtime", "")
    container = manifest["spec"]["containers"][0]
    del container["command"]
    container.update(image=RUNTIME_IMAGE, args=["--help"])
    kubectl.apply(manifest, namespace=namespace)
    wait_phase(kubectl, namespace, "runtime", "Succeeded")
    assert "run-step" in kubectl("logs", "runtime", "-n", namespace).stdout


def test_a_container_sees_its_image_not_the_host(kubectl: Kubectl, namespace: str) -> None:
    """Its root is the image's (busybox has no /usr/bin/python3), its processes are its own
    (PID 1 is its command), and its hostname is the pod's."""
    script = (
        "echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline | cut -d' ' -f1) host=$(hostname)"
        " python=$(test -e /usr/bin/python3 && echo yes || echo no)"
        " procs=$(ls /proc | grep -c '^[0-9]') > /dev/termination-log"
    )
    kubectl.apply(pod("isolated", script), namespace=namespace)
    status = wait_phase(kubectl, namespace, "isolated", "Succeeded")["status"]
    facts = dict(part.split("=", 1) for part in message_of(status).split())
    assert (facts["pid1"], facts["host"], facts["python"]) == ("/bin/sh", "isolated", "no")
    assert int(facts["procs"]) <= 4  # sh, ls, grep and the subshell; not this machine's


def test_a_read_only_root_takes_writes_only_on_the_pods_volumes(
    kubectl: Kubectl, kubelet: LocalKubelet | None, namespace: str
) -> None:
    """readOnlyRootFilesystem, runAsUser and an emptyDir, as the step Jobs use them."""
    probe = f"/probe-{namespace}"
    script = (
        f"id -u; touch {probe} 2>&1; echo ok > /scratch/file && cat /scratch/file;"
        " touch /etc/file 2>&1; true"
    )
    manifest = pod(
        "readonly",
        f"{{ {script}; }} > /dev/termination-log",
        securityContext={"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True},
        volumes=[{"name": "scratch", "emptyDir": {}}],
        container={
            "securityContext": {
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        },
    )
    kubectl.apply(manifest, namespace=namespace)
    lines = message_of(wait_phase(kubectl, namespace, "readonly", "Succeeded")["status"])
    uid, refused, wrote, refused_etc = lines.splitlines()
    assert uid == "1000" and wrote == "ok"
    assert "Read-only file system" in refused and "Read-only file system" in refused_etc
    if kubelet is not None:
        assert not Path(probe).exists()  # nor on this machine's root


def test_run_as_non_root_refuses_an_image_that_runs_as_root(
    kubectl: Kubectl, namespace: str
) -> None:
    manifest = pod("rooted", "true", securityContext={"runAsNonRoot": True})
    kubectl.apply(manifest, namespace=namespace)
    found = wait_waiting(kubectl, namespace, "rooted", "CreateContainerConfigError")
    assert "runAsNonRoot and image will run as root" in found["message"]


def test_secret_and_config_map_volumes_are_files_that_cannot_be_changed(
    kubectl: Kubectl, namespace: str
) -> None:
    secret = plain("Secret", "files", stringData={"password": "hunter2"})
    config = plain("ConfigMap", "files", data={"a.conf": "x=1", "b.conf": "y=2"})
    script = (
        "cat /secret/password; echo; cat /config/b; echo; ls /config;"
        " { echo no > /secret/password; } 2>&1; true"
    )
    volumes = [
        {"name": "secret", "secret": {"secretName": "files"}},
        {
            "name": "config",
            "configMap": {"name": "files", "items": [{"key": "b.conf", "path": "b"}]},
        },
    ]
    mounts = [
        {"name": "secret", "mountPath": "/secret"},
        {"name": "config", "mountPath": "/config"},
    ]
    manifest = pod(
        "volumes",
        f"{{ {script}; }} > /dev/termination-log",
        volumes=volumes,
        container={"volumeMounts": mounts},
    )
    kubectl.apply(secret, config, manifest, namespace=namespace)
    message = message_of(wait_phase(kubectl, namespace, "volumes", "Succeeded")["status"])
    password, b, listing, refused = message.splitlines()
    assert (password, b, listing) == ("hunter2", "y=2", "b")
    assert "Read-only file system" in refused


def test_a_command_missing_from_the_image_fails_to_start(kubectl: Kubectl, namespace: str) -> None:
    manifest = pod("missing", "")
    manifest["spec"]["containers"][0]["command"] = ["/no/such/binary"]
    kubectl.apply(manifest, namespace=namespace)
    status = wait_phase(kubectl, namespace, "missing", "Failed")["status"]
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("StartError", 128)
    assert "/no/such/binary" in terminated["message"]


def test_a_sub_path_that_a_container_made_a_symlink_out_of_the_volume_is_refused(
    kubectl: Kubectl, namespace: str
) -> None:
    """An init container leaves `h -> /` in a shared emptyDir; mounting `subPath: h` would
    hand the next container this machine's root. A kubelet refuses it (CVE-2017-1002101)."""
    init = {
        "name": "plant",
        "image": IMAGE,
        "command": ["/bin/sh", "-c", "ln -s / /shared/h"],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
    }
    manifest = pod(
        "escape",
        "ls /host > /dev/termination-log",
        initContainers=[init],
        volumes=[{"name": "shared", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "shared", "mountPath": "/host", "subPath": "h"}]},
    )
    kubectl.apply(manifest, namespace=namespace)
    found = wait_waiting(kubectl, namespace, "escape", "CreateContainerConfigError")
    assert "not within volume path" in found["message"], found


def test_a_root_container_cannot_climb_out_of_its_root(kubectl: Kubectl, namespace: str) -> None:
    """The classic chroot escape (chroot into a subdirectory, climb with `..`, chroot
    there) ends in the container's own root: the host's root is not there to reach."""
    escape = (
        "import os\n"
        "os.mkdir('/tmp/x'); os.chroot('/tmp/x')\n"
        "for _ in range(20): os.chdir('..')\n"
        "os.chroot('.')\n"
        "open('/dev/termination-log', 'w').write(' '.join(sorted(os.listdir('/'))))\n"
    )
    manifest = pod("climber", "", securityContext={"runAsUser": 0})
    manifest["spec"]["containers"][0].update(
        image=RUNTIME_IMAGE,
        command=["python", "-c", escape],
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
    )
    manifest["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    kubectl.apply(manifest, namespace=namespace)
    listing = message_of(wait_phase(kubectl, namespace, "climber", "Succeeded")["status"])
    assert "opt" in listing.split()  # the image's /opt/venv: still the container's root
    assert "work" not in listing.split()  # this machine's /work is out of reach


def test_signals_and_expansion_are_a_kubelets(kubectl: Kubectl, namespace: str) -> None:
    """A writer to a closed pipe dies of SIGPIPE (141), as on any node; `$(VAR)` expands the
    pod's variables only, never the image's (HOME stays as written)."""
    script = (
        "{ (yes; echo $? > /tmp/code) | head -1 > /dev/null; cat /tmp/code;"
        " echo '$(HOME)' '$(KUBERNETES_SERVICE_PORT)'; } > /dev/termination-log"
    )
    manifest = pod(
        "posix",
        script,
        volumes=[{"name": "tmp", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
    )
    kubectl.apply(manifest, namespace=namespace)
    code, words = message_of(wait_phase(kubectl, namespace, "posix", "Succeeded")["status"]).split(
        "\n", 1
    )
    home, port = words.split()
    assert code == "141"
    assert home == "$(HOME)" and port.isdigit()


def test_a_restarted_api_server_keeps_the_state_and_gets_what_the_kubelet_missed(
    control_plane: Cluster, kubectl: Kubectl, namespace: str
) -> None:
    """What bench/faults.py does to the operator: the server stopped and started again on its
    etcd. What was made before is there after; a pod that ended while the server was away
    (longer than the kubelet's retries of one status) is reported once it is back, as a
    kubelet's status manager does; a pod made after runs."""
    plane = control_plane.control_plane
    if plane is None:
        pytest.skip("restarts the local control plane's API server")
    kubectl.apply(
        plain("ConfigMap", "before", data={"k": "v"}),
        pod("during", "sleep 2; echo -n ended > /dev/termination-log"),
        namespace=namespace,
    )
    wait_phase(kubectl, namespace, "during", "Running")
    port = plane.port
    plane.restart_apiserver(down_seconds=12)
    assert plane.port == port
    assert kubectl.json("get", "configmap", "before", "-n", namespace)["data"] == {"k": "v"}
    assert message_of(wait_phase(kubectl, namespace, "during", "Succeeded")["status"]) == "ended"
    kubectl.apply(pod("after", "echo -n ran > /dev/termination-log"), namespace=namespace)
    assert message_of(wait_phase(kubectl, namespace, "after", "Succeeded")["status"]) == "ran"
