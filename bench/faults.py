"""Fault figures: what survives an operator kill, an API server restart, a Postgres outage,
killed step pods and a failover between peered operators, counted on the real control plane.

    make faults       # python -m bench.faults [--tasks 100] [--kills 20] [--others 30]

One control plane and local kubelet (the e2e tier's), a throwaway Postgres, and the Helm
chart installed with the images of `make images`: the operator runs as the chart's
Deployment, from its image, with its store in that Postgres. Each scenario applies its own
tasks of 5 steps in a namespace of its own (every fifth waits for an approval this process
gives; every fourth has a step that fails its first attempt and is retried), injects its
faults while they run, waits for every task to end, and counts:

- lost: tasks that did not end Succeeded (every one of them can);
- run twice: a step attempt (task, step, attempt) whose container started more than once,
  as this process's watch of the step pods saw them;
- missing checkpoints: a succeeded step with no checkpoint row in the store, or a task
  whose store row does not hold the phase it ended in;
- duplicate events: the same store event (task, kind, step, attempt) recorded twice, or the
  same Kubernetes Event (object, reason, message) posted twice;
- recovery: from each fault (the kill, the servers back) to the operator's next write (a
  step Job created, or a task's steps or phase changed), p50 and p95;
- own recovery: of a killed operator's recovery, the part after its container runs again
  (seen by polling every 0.2 s): the operator's own start, without the kubelet's back-off
  before it (the local kubelet's is 1 s doubling to 10 s, a real one's 10 s to 5 min).

Killed step pods are each to end their attempt as failed and be retried (every step of that
scenario has retries). At the end, every object of the run, every Event, the operator's
log and every store row is searched for the store's password.

It prints one table, writes it to docs/reliability.md with the date and the commit, and
exits 1 when a target is missed: 0 lost, 0 run twice, 0 missing checkpoints, 0 duplicate
events, recovery p95 under 15 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from sqlalchemy.engine import make_url

from agent_operator.api import GROUP, VERSION
from agent_operator.kube.manifests import (
    LABEL_ATTEMPT,
    LABEL_STEP,
    LABEL_TASK_UID,
    MANAGED_SELECTOR,
)
from bench.operator_bench import control_plane, percentile, wait_for
from localcluster.controlplane import ControlPlane, free_ports
from tests.chart.helm import CHART, helm
from tests.support.postgres import PostgresServer, postgres_server

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "docs" / "reliability.md"
RELEASE = "faults"
RELEASE_NAMESPACE = "faults-system"
OPERATOR_PODS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
STORE_SECRET = "faults-store"
SCENARIOS = ("operator-kill", "apiserver-restart", "postgres-outage", "step-pod-kill", "failover")
STEPS = 5
POOL_REPLICAS = 6
RECOVERY_TARGET_SECONDS = 15.0
STALE_WRITE_SECONDS = 0.5  # a killed process's last request may land this long after the kill
TASK_DEADLINE_SECONDS = 900
POSTGRES_DOWN_SECONDS = 60
STEP_DIGEST_FIELDS = ("phase", "attempt")


def namespace_of(scenario: str) -> str:
    return f"faults-{scenario}"


# --- the workload ---------------------------------------------------------------------------


def task_spec(index: int, *, retries: int) -> dict[str, Any]:
    """Five steps in a chain; every fifth task waits for an approval at its third step, every
    fourth has a fourth step that fails its first attempt."""
    steps: list[dict[str, Any]] = [
        {"id": f"s{i}", "tool": "noop", "params": {"outputs": {"i": i}}, "retries": retries}
        for i in range(STEPS)
    ]
    spec: dict[str, Any] = {"steps": steps, "limits": {"backoffSeconds": 1}}
    if index % 5 == 1:
        steps[2] |= {"tool": "sleep", "params": {"seconds": 0}}
        spec["safety"] = {"requireApprovalFor": ["sleep"]}
    if index % 4 == 2:
        steps[3] |= {"tool": "fail", "params": {"attempts": 1}, "retries": max(retries, 1)}
    return spec


@dataclass
class StepPod:
    attempt: tuple[str, str, str]  # task uid, step, attempt
    name: str
    started: bool = False
    restarts: int = 0
    running: bool = False


class Observer:
    """This process's watches of the step pods, the step Jobs and the tasks, across API
    server restarts: every step pod seen and whether its container started, and the times
    the operator wrote something (a Job created, a task's steps or phase changed)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.pods: dict[str, StepPod] = {}
        self.jobs: set[str] = set()
        self.tasks: dict[str, str] = {}  # uid -> digest of its phase and steps
        self.writes: list[float] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        custom = client.CustomObjectsApi(api)
        managed = {"label_selector": MANAGED_SELECTOR}
        follows: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any]] = [
            (core.list_pod_for_all_namespaces, (), managed, self._pod),
            (batch.list_job_for_all_namespaces, (), managed, self._job),
            (custom.list_cluster_custom_object, (GROUP, VERSION, "agenttasks"), {}, self._task),
        ]
        self.streams = [watch.Watch() for _ in follows]
        for stream, follow in zip(self.streams, follows, strict=True):
            threading.Thread(target=self._follow, args=(stream, *follow), daemon=True).start()

    def _follow(
        self,
        stream: watch.Watch,
        lister: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        record: Callable[[dict[str, Any]], None],
    ) -> None:
        """Watch from the current state; after any error (the API server went away) again
        from the current state, whose objects come again as ADDED."""
        while not self.stopped.is_set():
            try:
                for event in stream.stream(lister, *args, timeout_seconds=60, **kwargs):
                    if event["type"] != "DELETED":
                        with self.lock:
                            record(event["type"], event["raw_object"])
            except Exception:  # the server restarting, a dropped connection: look again
                if self.stopped.wait(0.5):
                    return

    def _pod(self, kind: str, pod: dict[str, Any]) -> None:
        labels = pod["metadata"].get("labels", {})
        key = (
            labels.get(LABEL_TASK_UID, ""),
            labels.get(LABEL_STEP, ""),
            labels.get(LABEL_ATTEMPT, ""),
        )
        seen = self.pods.setdefault(pod["metadata"]["uid"], StepPod(key, pod["metadata"]["name"]))
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            state, last = status.get("state") or {}, status.get("lastState") or {}
            seen.running = "running" in state
            seen.started |= "running" in state or "terminated" in state or "terminated" in last
            seen.restarts = max(seen.restarts, status.get("restartCount", 0))

    def _job(self, kind: str, job: dict[str, Any]) -> None:
        """A new Job counts as a write at its creationTimestamp (whole seconds, so up to a
        second early), not when a watch started again after an outage brings it."""
        uid = job["metadata"]["uid"]
        if uid not in self.jobs:
            self.jobs.add(uid)
            created = datetime.fromisoformat(job["metadata"]["creationTimestamp"])
            age = max(time.time() - created.timestamp(), 0.0)
            self.writes.append(time.monotonic() - age)

    def _task(self, kind: str, task: dict[str, Any]) -> None:
        """A change of a task's phase or steps, seen as it happens (MODIFIED; what a watch
        started again brings as ADDED may have happened before the fault)."""
        status = task.get("status") or {}
        steps = {
            s.get("id"): [s.get(f) for f in STEP_DIGEST_FIELDS] for s in status.get("steps") or []
        }
        digest = json.dumps([status.get("phase"), steps], sort_keys=True)
        uid = task["metadata"]["uid"]
        if kind == "MODIFIED" and self.tasks.get(uid, digest) != digest:
            self.writes.append(time.monotonic())
        self.tasks[uid] = digest

    def write_after(self, moment: float, timeout: float = 120) -> float | None:
        """The first operator write seen after `moment` (monotonic), waiting for one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                later = [w for w in self.writes if w > moment]
            if later:
                return min(later)
            time.sleep(0.05)
        return None

    def running_pods(self, namespace_uids: set[str]) -> list[StepPod]:
        with self.lock:
            return [p for p in self.pods.values() if p.running and p.attempt[0] in namespace_uids]

    def stop(self) -> None:
        self.stopped.set()
        for stream in self.streams:
            stream.stop()


class Approver(threading.Thread):
    """A person who approves every ApprovalRequest of the run a moment after it appears."""

    def __init__(self, api: client.ApiClient, seed: int) -> None:
        super().__init__(daemon=True)
        self.custom = client.CustomObjectsApi(api)
        self.random = random.Random(seed)
        self.stopped = threading.Event()
        self.approved = 0

    def run(self) -> None:
        while not self.stopped.wait(self.random.uniform(0.2, 1.5)):
            with contextlib.suppress(Exception):  # the API server may be down: look again
                listed = self.custom.list_cluster_custom_object(GROUP, VERSION, "approvalrequests")
                for request in listed["items"]:
                    if request["spec"].get("decision"):
                        continue
                    meta = request["metadata"]
                    patch = {"spec": {"decision": "Approved", "reason": "faults bench"}}
                    self.custom.patch_namespaced_custom_object(
                        GROUP, VERSION, meta["namespace"], "approvalrequests", meta["name"], patch
                    )
                    self.approved += 1


# --- the parts: Postgres, the chart, the operator's pods ------------------------------------


@dataclass
class Run:
    plane: ControlPlane
    postgres: PostgresServer
    dsn: str  # the operator's database
    api: client.ApiClient
    observer: Observer
    random: random.Random
    values: dict[str, Any]
    work: Path

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def helm(self, *args: str) -> None:
        values = self.work / "values.yaml"
        values.write_text(yaml.safe_dump(self.values))
        helm(
            *args, RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
            "--values", str(values), "--kubeconfig", str(self.plane.kubeconfig),
            "--take-ownership", "--wait", "--timeout", "180s", timeout=240,
        )  # fmt: skip

    def operator_pods(self) -> list[Any]:
        pods = self.core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=OPERATOR_PODS)
        return [p for p in pods.items if p.metadata.deletion_timestamp is None]

    def working_operator(self) -> Any:
        """The operator pod that works: the only one, or the peer whose log last said it
        resumed (Kopf starts paused and logs each change)."""

        def working() -> Any:
            pods = [p for p in self.operator_pods() if _running(p)]
            if len(pods) == 1 and not self.values.get("replicaCount", 1) > 1:
                return pods[0]
            active = [p for p in pods if self._resumed(p)]
            return active[0] if len(pods) > 1 and len(active) == 1 else None

        return wait_for(working, 120, "the working operator", poll=0.5)

    def _resumed(self, pod: Any) -> bool:
        log = self.core.read_namespaced_pod_log(pod.metadata.name, RELEASE_NAMESPACE)
        said = [w for w in ("Resuming operations", "Pausing") if w in log]
        return bool(said) and log.rfind("Resuming operations") > log.rfind("Pausing")

    def kill_operator(self, pod: Any) -> tuple[float, float]:
        """SIGKILL the operator's process in its container (as the OOM killer would); the
        kubelet restarts the container. The moments of the kill and of the container seen
        running again."""
        restarts = pod.status.container_statuses[0].restart_count
        os.kill(container_process(pod), signal.SIGKILL)
        killed = time.monotonic()

        def restarted() -> bool:
            now = self.core.read_namespaced_pod(pod.metadata.name, RELEASE_NAMESPACE)
            return _running(now) and now.status.container_statuses[0].restart_count > restarts

        wait_for(restarted, 120, "the operator's container to restart", poll=0.2)
        return killed, time.monotonic()


def _running(pod: Any) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses) and all(s.state.running is not None for s in statuses)


def container_process(pod: Any) -> int:
    """The host pid of a pod's (first) container's main process: the local kubelet's
    container id is its shim's pid, whose one child is the container's PID 1."""
    shim = int(pod.status.container_statuses[0].container_id.removeprefix("local://"))
    children = Path(f"/proc/{shim}/task/{shim}/children").read_text().split()
    return int(children[0])


# --- the scenarios ---------------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    fault: str
    faults: int = 0
    tasks: int = 0
    lost: int = 0
    unretried: int = 0  # killed step attempts that did not fail and get retried
    run_twice: int = 0
    missing_checkpoints: int = 0
    duplicate_events: int = 0
    recoveries: list[float] = field(default_factory=list)
    own_recoveries: list[float] = field(default_factory=list)  # after the container restarted
    note: str = ""

    def recovery(self, fraction: float) -> float | None:
        return percentile(self.recoveries, fraction) if self.recoveries else None

    def own_recovery(self, fraction: float) -> float | None:
        return percentile(self.own_recoveries, fraction) if self.own_recoveries else None

    @property
    def missed(self) -> list[str]:
        missed = [
            name
            for name, value in (
                ("lost", self.lost),
                ("killed attempts not retried", self.unretried),
                ("run twice", self.run_twice),
                ("missing checkpoints", self.missing_checkpoints),
                ("duplicate events", self.duplicate_events),
            )
            if value
        ]
        p95 = self.recovery(0.95)
        if p95 is not None and p95 >= RECOVERY_TARGET_SECONDS:
            missed.append("recovery p95")
        return missed


class Workload:
    """One scenario's tasks, applied at once in its namespace."""

    def __init__(self, run: Run, scenario: str, count: int, *, retries: int = 0) -> None:
        self.run, self.namespace, self.count = run, namespace_of(scenario), count
        self.uids: set[str] = set()
        for i in range(count):
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "AgentTask",
                "metadata": {"name": f"t{i:03d}"},
                "spec": task_spec(i, retries=retries),
            }
            created = run.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "agenttasks", body
            )
            self.uids.add(created["metadata"]["uid"])

    def tasks(self) -> list[dict[str, Any]]:
        listed = self.run.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "agenttasks"
        )
        return list(listed["items"])

    def done(self) -> float:
        """The share of the tasks that ended (0 while the API server cannot say)."""
        try:
            ended = [t for t in self.tasks() if _phase(t) in ("Succeeded", "Failed")]
        except Exception:
            return 0.0
        return len(ended) / self.count

    def wait_ended(self) -> None:
        wait_for(lambda: self.done() == 1.0, TASK_DEADLINE_SECONDS, "every task to end", poll=1)


def _phase(task: dict[str, Any]) -> str | None:
    return (task.get("status") or {}).get("phase")


def faults_while(
    workload: Workload, until: float, count: int, gap: tuple[float, float]
) -> Iterator[int]:
    """Yields fault numbers while fewer than `count` are done and less than `until` of the
    tasks ended, waiting a random gap before each."""
    for number in range(count):
        time.sleep(workload.run.random.uniform(*gap))
        if workload.done() >= until:
            return
        yield number


def operator_kill(run: Run, tasks: int, kills: int) -> Figures:
    figures = Figures("operator-kill", f"operator SIGKILLed {kills}x")
    workload = Workload(run, "operator-kill", tasks)
    kill_working_operator(run, workload, figures, kills, (1.0, 6.0))
    return count(run, workload, figures)


def kill_working_operator(
    run: Run, workload: Workload, figures: Figures, kills: int, gap: tuple[float, float]
) -> None:
    """SIGKILL the working operator `kills` times while the tasks run, each after a random
    `gap` and once it wrote again after the last; then wait for every task to end. With one
    replica the next write comes from the restarted container: its own recovery."""
    alone = run.values.get("replicaCount", 1) == 1
    for _ in faults_while(workload, 0.95, kills, gap):
        killed, running = run.kill_operator(run.working_operator())
        figures.faults += 1
        recovered = _recovered(run, killed + STALE_WRITE_SECONDS)
        figures.recoveries.append(recovered - killed)
        if alone:  # a write seen a moment before the poll saw the container run counts 0
            figures.own_recoveries.append(max(0.0, recovered - running))
    workload.wait_ended()


def apiserver_restart(run: Run, tasks: int) -> Figures:
    figures = Figures("apiserver-restart", "API server restarted 2x (etcd kept)")
    workload = Workload(run, "apiserver-restart", tasks)
    for share in (0.2, 0.55):
        wait_for(
            lambda s=share: workload.done() >= s, TASK_DEADLINE_SECONDS, f"{share:.0%}", poll=1
        )
        run.plane.restart_apiserver(down_seconds=2)
        back = time.monotonic()
        figures.faults += 1
        figures.recoveries.append(_recovered(run, back) - back)
    workload.wait_ended()
    return count(run, workload, figures)


def postgres_outage(run: Run, tasks: int) -> Figures:
    figures = Figures("postgres-outage", f"Postgres stopped {POSTGRES_DOWN_SECONDS} s")
    workload = Workload(run, "postgres-outage", tasks)
    wait_for(lambda: workload.done() >= 0.2, TASK_DEADLINE_SECONDS, "a fifth done", poll=1)
    run.postgres.stop()
    time.sleep(POSTGRES_DOWN_SECONDS)
    run.postgres.start()
    back = time.monotonic()
    figures.faults = 1
    figures.recoveries.append(_recovered(run, back) - back)
    workload.wait_ended()
    return count(run, workload, figures)


def step_pod_kill(run: Run, tasks: int, kills: int) -> Figures:
    """Step pods deleted or their process killed: each a failed attempt, then retried."""
    figures = Figures("step-pod-kill", f"{kills} step pods deleted or killed")
    workload = Workload(run, "step-pod-kill", tasks, retries=2)
    killed: list[tuple[str, str, str]] = []
    for number in faults_while(workload, 0.9, kills, (0.5, 3.0)):
        running = [p for p in run.observer.running_pods(workload.uids) if p.attempt not in killed]
        if not running:
            continue
        pod = run.random.choice(running)
        # Gone or not started meanwhile (no container id yet): the next one, then.
        with contextlib.suppress(ApiException, OSError, IndexError, ValueError, AttributeError):
            if number % 2:
                run.core.delete_namespaced_pod(pod.name, workload.namespace, grace_period_seconds=0)
            else:
                os.kill(
                    container_process(run.core.read_namespaced_pod(pod.name, workload.namespace)),
                    signal.SIGKILL,
                )
            killed.append(pod.attempt)
            figures.faults += 1
    workload.wait_ended()
    ended = _ended(run, killed)
    retried = sum(1 for key in killed if ended[key] == "retried")
    done = sum(1 for key in killed if ended[key] == "Succeeded")  # killed as it exited 0
    figures.note = (
        f"of {len(killed)} killed attempts {retried} failed and were retried, "
        f"{done} had just succeeded"
    )
    figures.unretried = len(killed) - retried - done
    return count(run, workload, figures)


def failover(run: Run, tasks: int, kills: int) -> Figures:
    """Two replicas with peering; the working one is killed."""
    run.values |= {"replicaCount": 2, "metrics": {"enabled": False}, "healthPort": 0}
    run.helm("upgrade")
    wait_for(
        lambda: len([p for p in run.operator_pods() if _running(p)]) == 2, 120, "two operators"
    )
    figures = Figures("failover", f"2 peered replicas, the working one killed {kills}x")
    workload = Workload(run, "failover", tasks)
    kill_working_operator(run, workload, figures, kills, (3.0, 8.0))
    return count(run, workload, figures)


def _recovered(run: Run, moment: float) -> float:
    seen = run.observer.write_after(moment)
    if seen is None:
        raise SystemExit("the operator wrote nothing for 120 s after a fault")
    return seen


def _ended(run: Run, killed: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """How each killed attempt ended in the store: "retried" (Failed, and a later attempt
    exists), else its phase."""
    with psycopg.connect(run.dsn) as db:
        rows = db.execute("SELECT task_uid, step_id, attempt, phase FROM step_attempts").fetchall()
    phases = {(uid, step, str(attempt)): phase for uid, step, attempt, phase in rows}
    return {
        (uid, step, attempt): "retried"
        if phases.get((uid, step, attempt)) == "Failed"
        and (uid, step, str(int(attempt) + 1)) in phases
        else str(phases.get((uid, step, attempt)))
        for uid, step, attempt in killed
    }


def count(run: Run, workload: Workload, figures: Figures) -> Figures:
    tasks = workload.tasks()
    figures.tasks = len(tasks)
    unfinished = [t for t in tasks if _phase(t) != "Succeeded"]
    figures.lost += len(unfinished)
    if unfinished:
        why = Counter(
            f"{_phase(t)} {(t.get('status') or {}).get('reason')}: "
            f"{((t.get('status') or {}).get('message') or '')[:120]}"
            for t in unfinished
        )
        lost = "not Succeeded: " + "; ".join(f"{n}x {w}" for w, n in why.most_common(3))
        figures.note = "; ".join(filter(None, [figures.note, lost]))
    with run.observer.lock:
        started = Counter(
            p.attempt
            for p in run.observer.pods.values()
            if p.started and p.attempt[0] in workload.uids
        )
        restarted = sum(
            1 for p in run.observer.pods.values() if p.restarts and p.attempt[0] in workload.uids
        )
    figures.run_twice = sum(1 for n in started.values() if n > 1) + restarted
    uids = list(workload.uids)
    with psycopg.connect(run.dsn) as db:
        checkpoints = set(
            db.execute(
                "SELECT task_uid, step_id FROM checkpoints WHERE task_uid = ANY(%s)", (uids,)
            ).fetchall()
        )
        stored = dict(
            db.execute("SELECT uid, phase FROM tasks WHERE uid = ANY(%s)", (uids,)).fetchall()
        )
        recorded = db.execute(
            "SELECT kind, step_id, attempt, count(*) FROM events WHERE task_uid = ANY(%s) "
            "GROUP BY task_uid, kind, step_id, attempt HAVING count(*) > 1",
            (uids,),
        ).fetchall()
    for task in tasks:
        uid = task["metadata"]["uid"]
        if stored.get(uid) != _phase(task):
            figures.missing_checkpoints += 1
        for step in (task.get("status") or {}).get("steps") or []:
            if step.get("phase") == "Succeeded" and (uid, step["id"]) not in checkpoints:
                figures.missing_checkpoints += 1
    # What the operator tells of tasks (not Kopf's own "Logging" lines about handlers).
    events = [
        e
        for e in run.core.list_namespaced_event(workload.namespace).items
        if e.involved_object.kind == "AgentTask" and e.reason != "Logging"
    ]
    posted = Counter((e.involved_object.name, e.reason, e.message) for e in events)
    twice = [
        *(f"store event {kind} {step} #{attempt} x{n}" for kind, step, attempt, n in recorded),
        *(
            f"Event {name} {reason} {message!r} x{n}"
            for (name, reason, message), n in posted.items()
            if n > 1
        ),
        *(
            f"Event {e.involved_object.name} {e.reason} {e.message!r} count {e.count}"
            for e in events
            if (e.count or 1) > 1
        ),
    ]
    figures.duplicate_events = len(twice)
    if twice:
        figures.note = "; ".join(filter(None, [figures.note, "twice: " + ", ".join(twice[:5])]))
    return figures


# --- secrets -----------------------------------------------------------------------------


def places_showing(run: Run, secret: str) -> list[str]:
    """Where `secret` shows: any object of the run's namespaces but the store's Secret, any
    Event, the operator's log (this and the previous container of each pod), any store row."""
    seen: dict[str, str] = {}
    namespaces = [RELEASE_NAMESPACE, *(namespace_of(s) for s in SCENARIOS)]
    batch = client.BatchV1Api(run.api)
    for namespace in namespaces:
        objects: list[Any] = [
            run.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
            for plural in ("agenttasks", "agentpools", "approvalrequests")
        ]
        for lister in (
            run.core.list_namespaced_pod,
            run.core.list_namespaced_event,
            run.core.list_namespaced_config_map,
            batch.list_namespaced_job,
            client.AppsV1Api(run.api).list_namespaced_deployment,
        ):
            objects.append(run.api.sanitize_for_serialization(lister(namespace)))
        secrets = run.core.list_namespaced_secret(namespace).items
        objects += [
            run.api.sanitize_for_serialization(s)
            for s in secrets
            if s.metadata.name != STORE_SECRET
        ]
        seen[f"objects in {namespace}"] = json.dumps(objects)
    for pod in run.operator_pods():
        for previous in (False, True):
            with contextlib.suppress(ApiException):
                seen[f"log of {pod.metadata.name}{' (previous)' if previous else ''}"] = (
                    run.core.read_namespaced_pod_log(
                        pod.metadata.name, RELEASE_NAMESPACE, previous=previous
                    )
                )
    with psycopg.connect(run.dsn) as db:
        for table in ("tasks", "step_attempts", "checkpoints", "events"):
            rows = db.execute(f"SELECT * FROM {table}").fetchall()  # fixed names
            seen[f"store table {table}"] = json.dumps(rows, default=str)
    return [where for where, text in seen.items() if secret in text]


# --- the report --------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def table(all_figures: list[Figures]) -> str:
    lines = [
        "| scenario | faults | tasks | lost | run twice | missing checkpoints "
        "| duplicate events | recovery p50 | recovery p95 | own recovery p50 | own recovery p95 "
        "| verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in all_figures:
        verdict = "ok" if not f.missed else "missed: " + ", ".join(f.missed)
        lines.append(
            f"| {f.scenario} | {f.fault} ({f.faults}) | {f.tasks} | {f.lost} | {f.run_twice} "
            f"| {f.missing_checkpoints} | {f.duplicate_events} | {seconds(f.recovery(0.5))} "
            f"| {seconds(f.recovery(0.95))} | {seconds(f.own_recovery(0.5))} "
            f"| {seconds(f.own_recovery(0.95))} | {verdict} |"
        )
    notes = [f"- {f.scenario}: {f.note}" for f in all_figures if f.note]
    return "\n".join([*lines, "", *notes])


def report(all_figures: list[Figures], leaks: list[str], args: argparse.Namespace) -> str:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    secret_line = (
        "the store's password shows nowhere"
        if not leaks
        else "the store's password shows in: " + ", ".join(leaks)
    )
    return "\n".join([
        "# Reliability figures",
        "",
        "Written by `make faults` (bench/faults.py); read its docstring for what each figure",
        "counts. Targets: 0 lost, 0 run twice, 0 missing checkpoints, 0 duplicate events,",
        f"recovery p95 under {RECOVERY_TARGET_SECONDS:g} s.",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {commit}, on {machine};",
        f"`--tasks {args.tasks} --kills {args.kills} --others {args.others} --seed {args.seed}`.",
        "",
        table(all_figures),
        "",
        f"Secrets: {secret_line}.",
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100, help="tasks of the operator-kill run")
    parser.add_argument("--kills", type=int, default=20, help="operator kills in that run")
    parser.add_argument("--others", type=int, default=20, help="tasks of each other scenario")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="for the fault times")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/reliability.md")
    args = parser.parse_args(argv)
    chosen = args.only or list(SCENARIOS)

    work = Path(tempfile.mkdtemp(prefix="agent-operator-faults-"))
    namespaces = (RELEASE_NAMESPACE, *(namespace_of(s) for s in SCENARIOS))
    with (
        postgres_server() as postgres,
        control_plane(work, namespaces) as plane,
        _database(postgres) as dsn,
    ):
        api = config.new_client_from_config(str(plane.kubeconfig))
        core = client.CoreV1Api(api)
        core.create_namespaced_secret(
            RELEASE_NAMESPACE,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=STORE_SECRET), string_data={"dsn": dsn}
            ),
        )
        metrics, health = free_ports(2)
        values: dict[str, Any] = {
            "image": {"repository": "agent-operator", "tag": "e2e"},
            "watchNamespaces": list(namespaces[1:]),
            "store": {"existingSecret": STORE_SECRET},
            "metrics": {"port": metrics},
            "healthPort": health,
            "defaultPool": {
                "image": {"repository": "agent-runtime", "tag": "e2e"},
                "replicas": POOL_REPLICAS,
                "tools": ["noop", "sleep", "fail"],
            },
        }
        observer = Observer(api)
        run = Run(plane, postgres, dsn, api, observer, random.Random(args.seed), values, work)
        approver = Approver(api, args.seed)
        approver.start()
        try:
            run.helm("install")
            scenarios: dict[str, Callable[[], Figures]] = {
                "operator-kill": lambda: operator_kill(run, args.tasks, args.kills),
                "apiserver-restart": lambda: apiserver_restart(run, args.others),
                "postgres-outage": lambda: postgres_outage(run, args.others),
                "step-pod-kill": lambda: step_pod_kill(run, args.others, args.others // 2),
                "failover": lambda: failover(run, args.others, 2),
            }
            all_figures = []
            for name in chosen:
                began = time.monotonic()
                all_figures.append(scenarios[name]())
                print(f"{name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
            leaks = places_showing(run, make_url(dsn).password or "")
        finally:
            approver.stopped.set()
            observer.stop()
    shutil.rmtree(work, ignore_errors=True)
    text = report(all_figures, leaks, args)
    print(text)
    if not args.no_report:
        REPORT.write_text(text)
    if leaks or any(f.missed for f in all_figures):
        sys.exit(1)


@contextlib.contextmanager
def _database(postgres: PostgresServer) -> Iterator[str]:
    """The operator's own database, under a user of its own whose password is the one
    searched for at the end."""
    password = os.urandom(12).hex()
    with psycopg.connect(postgres.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE USER faults PASSWORD '{password}'")
        admin.execute("CREATE DATABASE faults OWNER faults")
    url = make_url(postgres.dsn).set(username="faults", password=password, database="faults")
    yield url.render_as_string(hide_password=False)


if __name__ == "__main__":
    main()
