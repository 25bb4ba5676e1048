"""The operator tier: Kopf and the operator in-process against kmock's Kubernetes emulator.

The emulator runs no controllers, so the tests play the Job controller and the
kubelet themselves: they set a Job's status and create its pod with the
termination message, as the real ones would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from kmock import KubernetesEmulator, ResourceInfo, Server, resource
from kubernetes import client, config

from agent_operator.kube import handlers
from agent_operator.kube.settings import OperatorSettings

GROUP = "agentoperator.io/v1alpha1"
TASKS = resource("agentoperator.io", "v1alpha1", "agenttasks")
APPROVALS = resource("agentoperator.io", "v1alpha1", "approvalrequests")
POOLS = resource("agentoperator.io", "v1alpha1", "agentpools")
JOBS = resource("batch", "v1", "jobs")
PODS = resource("", "v1", "pods")
NS = "team-a"
VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]


@dataclass
class Emulated:
    """The emulator, its URL, and a kubernetes client pointed at it."""

    emulator: KubernetesEmulator
    url: str
    kubeconfig: Path
    api: client.ApiClient
    loop: asyncio.AbstractEventLoop

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    def objects(self, kind: Any) -> list[dict[str, Any]]:
        """Objects of one resource as the emulator holds them now."""
        return [
            dict(obj.raw)
            for (res, _ns, _name), obj in list(self.emulator.objects.items())
            if res == kind and not obj.deleted
        ]

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        # The emulator keeps no resourceVersion; Kopf's patches test for the one it saw.
        body = {**body, "metadata": {"resourceVersion": "1", **body["metadata"]}}
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            "agentoperator.io", "v1alpha1", NS, plural, body
        )
        return created

    def get(self, plural: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "agentoperator.io", "v1alpha1", NS, plural, name
        )
        return found

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            "agentoperator.io", "v1alpha1", NS, plural, name, body
        )

    def jobs(self) -> list[dict[str, Any]]:
        return self.objects(JOBS)

    def posted_events(self) -> list[dict[str, Any]]:
        """Events the operator posted (the emulator cannot name them, so read the requests)."""
        return [
            dict(r.data)
            for r in list(self.emulator)
            if str(r.method.value).upper() == "POST" and r.url.path.endswith("/events")
        ]

    def finish_job(self, job: dict[str, Any], result: dict[str, Any], exit_code: int = 0) -> None:
        """Play the kubelet and the Job controller: a pod with the result, then the condition."""
        meta = job["metadata"]
        labels = {**job["spec"]["template"]["metadata"]["labels"], "job-name": meta["name"]}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{meta['name']}-pod", "namespace": NS, "labels": labels},
            "status": {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": "step",
                        "image": "agent-runtime:test",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": exit_code,
                                "message": json.dumps(result),
                                "finishedAt": now,
                                "startedAt": now,
                            }
                        },
                    }
                ],
            },
        }
        client.CoreV1Api(self.api).create_namespaced_pod(NS, pod)
        condition = "Complete" if exit_code == 0 else "Failed"
        status = {
            "startTime": now,
            "conditions": [{"type": condition, "status": "True", "lastTransitionTime": now}],
        }
        if exit_code == 0:
            status["completionTime"] = now
        self.batch.patch_namespaced_job_status(meta["name"], NS, {"status": status})


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "operator"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path


@contextmanager
def emulated_cluster(tmp_path: Path) -> Iterator[Emulated]:
    """kmock's emulator with the project's resources, on its own event loop."""
    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        async with KubernetesEmulator() as emulator, Server(emulator) as server:
            resources = emulator.resources
            resources[f"{GROUP}/agenttasks"] = ResourceInfo(
                kind="AgentTask", namespaced=True, subresources=["status"], verbs=VERBS
            )
            resources[f"{GROUP}/approvalrequests"] = ResourceInfo(
                kind="ApprovalRequest", namespaced=True, subresources=["status"], verbs=VERBS
            )
            resources[f"{GROUP}/agentpools"] = ResourceInfo(
                kind="AgentPool", namespaced=True, subresources=["status", "scale"], verbs=VERBS
            )
            resources["batch/v1/jobs"] = ResourceInfo(
                kind="Job", namespaced=True, subresources=["status"], verbs=VERBS
            )
            for path, kind in [
                ("v1/namespaces", "Namespace"),
                ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition"),
            ]:  # Kopf waits for these to be served before it watches anything
                resources[path] = ResourceInfo(kind=kind, namespaced=False, verbs=VERBS)
            for plural, kind in [
                ("pods", "Pod"),
                ("events", "Event"),
                ("secrets", "Secret"),
            ]:
                resources[f"v1/{plural}"] = ResourceInfo(kind=kind, namespaced=True, verbs=VERBS)
            stop = asyncio.Event()
            state.update(emulator=emulator, url=str(server.url).rstrip("/"), stop=stop)
            state["loop"] = asyncio.get_running_loop()
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30), "the emulator did not start"
    path = _kubeconfig(tmp_path / "kubeconfig", state["url"])
    api = config.new_client_from_config(config_file=str(path))
    try:
        yield Emulated(state["emulator"], state["url"], path, api, state["loop"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)


@contextmanager
def running_operator(settings: OperatorSettings) -> Iterator[None]:
    """The real operator (handlers, daemons, watches) in a thread, stopped on exit."""
    assert handlers.FINALIZER  # the module's handlers are registered by importing it
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=kopf.run,
        kwargs={
            "clusterwide": True,
            "standalone": True,
            "memo": kopf.Memo(settings=settings),
            "stop_flag": stop,
            "ready_flag": ready,
        },
        daemon=True,
    )
    thread.start()
    assert ready.wait(30), "the operator did not start"
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def eventually(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll until `check` returns something truthy (no asserts on how long it took)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, KeyError, IndexError, StopIteration) as error:
            last = error
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
