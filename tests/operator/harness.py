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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
from kmock import (
    KubernetesEmulator,
    KubernetesError,
    Request,
    ResourceInfo,
    action,
    resource,
)
from kubernetes import client, config

from agent_operator.kube import handlers
from agent_operator.kube.settings import OperatorSettings
from tests.support.kube import serve_emulator

GROUP = "agentoperator.io/v1alpha1"
TASKS = resource("agentoperator.io", "v1alpha1", "agenttasks")
APPROVALS = resource("agentoperator.io", "v1alpha1", "approvalrequests")
POOLS = resource("agentoperator.io", "v1alpha1", "agentpools")
MCPSERVERS = resource("agentoperator.io", "v1alpha1", "mcpservers")
JOBS = resource("batch", "v1", "jobs")
PODS = resource("", "v1", "pods")
NS = "team-a"
LABEL_STEP = "agentoperator.io/step"
# What an API server sends on a watch whose resourceVersion is too old.
EXPIRED = {
    "apiVersion": "v1",
    "kind": "Status",
    "status": "Failure",
    "code": 410,
    "reason": "Expired",
    "message": "too old resource version",
}
VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]


@dataclass
class Refusal:
    """Requests that `match` are answered `status`, `times` times, before they change anything."""

    match: Callable[[Request], bool]
    status: int
    times: int
    refused: list[Request]


class RefusingEmulator(KubernetesEmulator):
    """kmock's emulator, able to fail a write before it is made.

    kmock's reactions answer after the emulator has applied a write: the change is made and
    the client hears an error (as when a reply is lost). A refusal answers before: nothing is
    changed, as when the API server or etcd fails the write.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refusals: list[Refusal] = []
        self.refusals_lock = threading.Lock()

    async def _handle(self, request: Request) -> Any:
        with self.refusals_lock:
            refusal = next(
                (r for r in self.refusals if len(r.refused) < r.times and r.match(request)), None
            )
            if refusal is not None:
                refusal.refused.append(request)
        if refusal is not None:
            raise KubernetesError(status=refusal.status, reason="Refused", message="injected")
        if request.action == action.CREATE and isinstance(request.data, dict):
            # As the API server does (reminders count from it); kmock leaves it out.
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            request.data.setdefault("metadata", {}).setdefault("creationTimestamp", now)
        return await super()._handle(request)


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

    def refuse(self, match: Callable[[Request], bool], status: int, times: int) -> list[Request]:
        """Answer the next `times` requests that match with `status`, changing nothing.

        Returns the list the refused requests are added to.
        """
        emulator = self.emulator
        assert isinstance(emulator, RefusingEmulator)
        refusal = Refusal(match, status, times, [])
        with emulator.refusals_lock:
            emulator.refusals.append(refusal)
        return refusal.refused

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            "agentoperator.io", "v1alpha1", NS, plural, name
        )

    def exists(self, kind: Any, name: str) -> bool:
        """Whether the emulator holds a live object of that resource and name in NS."""
        return any(o["metadata"]["name"] == name for o in self.objects(kind))

    def job_creations(self) -> list[str]:
        """Names of every Job creation request the emulator received, answered or refused.

        The request log, not the current objects: a Job created twice (or created, deleted
        and created again) shows here twice.
        """
        return [
            str((r.data or {}).get("metadata", {}).get("name"))
            for r in list(self.emulator)
            if r.resource == JOBS and r.action == action.CREATE
        ]

    def jobs_made(self) -> dict[str, int]:
        """How many times each Job name came into existence (a Job deleted and created again
        counts twice; a creation refused with 409 does not count)."""

        async def count() -> dict[str, int]:
            made: dict[str, int] = {}
            for (kind, _ns, name), obj in list(self.emulator.objects.items()):
                if kind == JOBS:
                    versions = list(obj.history)
                    made[name] = sum(
                        1
                        for i, v in enumerate(versions)
                        if v is not None and (i == 0 or versions[i - 1] is None)
                    )
            return made

        made: dict[str, int] = self.on_loop(count)
        return made

    def watches(self, kind: Any) -> int:
        """How many watch requests of one resource the emulator has received."""
        requests = list(self.emulator)
        return sum(1 for r in requests if r.resource == kind and r.action == action.WATCH)

    def watching(self, kind: Any) -> int:
        """Watch streams of one resource now following changes (past their initial listing)."""

        async def count() -> int:
            return int(self.emulator._buses[kind].consumer_count)

        watching: int = self.on_loop(count)
        return watching

    def on_loop(self, make: Callable[[], Any]) -> Any:
        """Run `make()` (a coroutine, awaited) on the emulator's own event loop; its result."""

        async def call() -> Any:
            return await make()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def store_silently(self, kind: Any, body: dict[str, Any]) -> None:
        """Put an object into the emulator without telling any watch (as if the watch lagged)."""
        meta = body["metadata"]

        async def put() -> None:
            self.emulator.objects[kind, meta["namespace"], meta["name"]] = body

        self.on_loop(put)

    def send_watch_event(self, kind: Any, event: dict[str, Any]) -> None:
        """Send a raw event (e.g. an ERROR with code 410) to every open watch of a resource."""

        async def send() -> None:
            await self.emulator._buses[kind].put(event)

        self.on_loop(send)

    def drop_watches(self, kind: Any) -> int:
        """Cut the connections of every watch of a resource, as a server or proxy would."""

        async def drop() -> int:
            dropped = 0
            for request in list(self.emulator):
                if request.resource != kind or request.action != action.WATCH:
                    continue
                raw = request._raw_request
                transport = raw.transport if raw is not None else None
                if transport is not None and not transport.is_closing():
                    transport.close()
                    dropped += 1
            return dropped

        dropped: int = self.on_loop(drop)
        return dropped

    def active_jobs(self) -> list[str]:
        """Jobs without a Complete or Failed condition (what still holds a pool slot)."""
        return [
            j["metadata"]["name"]
            for j in self.jobs()
            if not any(
                c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                for c in (j.get("status") or {}).get("conditions") or []
            )
        ]

    def posted_events(self) -> list[dict[str, Any]]:
        """Events the operator posted (the emulator cannot name them, so read the requests)."""
        return [
            dict(r.data)
            for r in list(self.emulator)
            if str(r.method.value).upper() == "POST" and r.url.path.endswith("/events")
        ]

    def finish_job(self, job: dict[str, Any], result: dict[str, Any], exit_code: int = 0) -> None:
        """Play the kubelet and the Job controller: once the operator has let the Job run
        (it makes every Job suspended, prepared), a pod with the result, then the condition."""
        meta = job["metadata"]
        eventually(
            lambda: not self.batch.read_namespaced_job(meta["name"], NS).spec.suspend,
            what=f"the operator to let Job {meta['name']} run",
        )
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


def _declare_resources(emulator: Any) -> None:
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
    resources[f"{GROUP}/mcpservers"] = ResourceInfo(
        kind="MCPServer", namespaced=True, subresources=["status"], verbs=VERBS
    )
    resources["batch/v1/jobs"] = ResourceInfo(
        kind="Job", namespaced=True, subresources=["status"], verbs=VERBS
    )
    for path, kind in [
        ("v1/namespaces", "Namespace"),
        ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition"),
    ]:  # Kopf waits for these to be served before it watches anything
        resources[path] = ResourceInfo(kind=kind, namespaced=False, verbs=VERBS)
    for plural, kind in [("pods", "Pod"), ("events", "Event"), ("secrets", "Secret")]:
        resources[f"v1/{plural}"] = ResourceInfo(kind=kind, namespaced=True, verbs=VERBS)


@contextmanager
def emulated_cluster(tmp_path: Path) -> Iterator[Emulated]:
    """kmock's emulator with the project's resources, on its own event loop."""
    with serve_emulator(tmp_path, _declare_resources, "operator", RefusingEmulator) as served:
        api = config.new_client_from_config(config_file=str(served.kubeconfig))
        yield Emulated(served.emulator, served.url, served.kubeconfig, api, served.loop)


@contextmanager
def running_operator(settings: OperatorSettings) -> Iterator[kopf.Memo]:
    """The real operator (handlers, daemons, watches) in a thread, stopped on exit.

    Yields the operator's memo: `memo["ctx"]` is its OperatorContext (caches, ledger, the
    wakers that count running and sleeping task loops).
    """
    assert handlers.FINALIZER  # the module's handlers are registered by importing it
    stop, ready = threading.Event(), threading.Event()
    memo = kopf.Memo(settings=settings)
    thread = threading.Thread(
        target=kopf.run,
        kwargs={
            "clusterwide": True,
            "standalone": True,
            "memo": memo,
            "stop_flag": stop,
            "ready_flag": ready,
        },
        daemon=True,
    )
    thread.start()
    assert ready.wait(30), "the operator did not start"
    try:
        yield memo
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the operator did not stop"
        ctx = memo.get("ctx")
        assert ctx is None or ctx.wakers.running() == 0, "the operator left task loops running"


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


# --- building blocks shared by the operator-tier tests ---------------------------------


def pool(name: str = "default", replicas: int = 2, **spec: Any) -> dict[str, Any]:
    """An AgentPool body."""
    return {
        "apiVersion": GROUP,
        "kind": "AgentPool",
        "metadata": {"name": name, "namespace": NS, "uid": f"pool-uid-{name}"},
        "spec": {"replicas": replicas, "template": {"image": "agent-runtime:test"}, **spec},
    }


def agent_task(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An AgentTask body; the emulator assigns no uid, so the task brings its own."""
    return {
        "apiVersion": GROUP,
        "kind": "AgentTask",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


def task_status(cluster: Emulated, name: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get("agenttasks", name).get("status") or {}
    return status


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def step_jobs(cluster: Emulated, step: str, task: str | None = None) -> list[dict[str, Any]]:
    """The Jobs the emulator holds for one step (of one task), by attempt."""
    found = [
        j
        for j in cluster.jobs()
        if j["metadata"]["labels"].get("agentoperator.io/step") == step
        and (task is None or j["metadata"]["labels"].get("agentoperator.io/task") == task)
    ]
    return sorted(found, key=lambda j: int(j["metadata"]["labels"]["agentoperator.io/attempt"]))


def wait_job(
    cluster: Emulated, step: str, attempt: int = 1, task: str | None = None
) -> dict[str, Any]:
    """The Job of one attempt of a step, once the operator has let it run (it makes each
    Job prepared, suspended, before it records the attempt)."""

    def find() -> dict[str, Any] | None:
        for job in step_jobs(cluster, step, task):
            if job["metadata"]["labels"]["agentoperator.io/attempt"] == str(attempt):
                return None if job["spec"].get("suspend") else job
        return None

    found: dict[str, Any] = eventually(find, what=f"the Job of {task or ''}/{step}/{attempt}")
    return found


def wait_phase(cluster: Emulated, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    """The task's status once it reaches `phase`."""
    status: dict[str, Any] = eventually(
        lambda: (s := task_status(cluster, name)).get("phase") == phase and s,
        timeout=timeout,
        what=f"{name} to be {phase}",
    )
    return status


def one_job_per_step(cluster: Emulated) -> None:
    """No step ran twice: one Job per step, each made once, and no other Job asked for.

    Counted from the emulator's request log (every Job name the operator asked for) and
    each Job's history (a Job deleted and made again counts twice), not only from the Jobs
    that exist now. A creation answered 409 made nothing.
    """
    made = cluster.jobs_made()
    assert all(n == 1 for n in made.values()), f"a Job was made more than once: {made}"
    assert set(cluster.job_creations()) == set(made)
    steps = [
        (j["metadata"]["labels"]["agentoperator.io/task"], j["metadata"]["labels"][LABEL_STEP])
        for j in cluster.jobs()
    ]
    assert len(steps) == len(set(steps)) == len(made), f"a step ran twice: {sorted(steps)}"


def succeeded(outputs: dict[str, Any]) -> dict[str, Any]:
    """The runtime's StepResult for a step that worked."""
    return {"ok": True, "outputs": outputs, "message": "", "usage": {"tokens": 0, "costUSD": 0}}


def failed(message: str) -> dict[str, Any]:
    """The runtime's StepResult for a step whose tool failed."""
    return {"ok": False, "outputs": {}, "message": message, "usage": {"tokens": 0, "costUSD": 0}}
