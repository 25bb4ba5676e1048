"""The operator's costs, measured in one run and reported as ratios and counts (DESIGN.md 6).

    make bench        # python -m bench.operator_bench [--steps 30] [--tasks 1000]

The operator runs as its own process (`python -m agent_operator`) with a throwaway
Postgres (hack/postgres.sh), twice:

1. against kmock's Kubernetes emulator, which logs every request: Kubernetes API
   requests, Postgres transactions and rows written per step of a chain task (this
   process plays the Job controller and the kubelet);
2. against the real control plane of the e2e tier (tests/e2e: the pinned binaries and the
   local kubelet, which runs each step's pod as an `agent-runtime` process):
   - step hand-off, from a step's pod terminating to the next step's Job let run, both
     as seen by this process's watches, p50/p95, against the floor of the same API writes
     made by a bare client (a Job created suspended, then patched);
   - many tasks at once: `--tasks` tasks that each wait for an approval, the time until
     every ApprovalRequest exists, and the operator's resident memory and threads before
     and after.

Times on a shared machine vary from run to run: compare the ratios and the counts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client, config, watch

from agent_operator.api import GROUP, VERSION
from agent_operator.kube.manifests import LABEL_STEP, LABEL_TASK, MANAGED_SELECTOR
from localcluster.controlplane import ControlPlane
from localcluster.images import ImageStore, default_store
from localcluster.kubelet import project_kubelet
from tests.e2e.conftest import OperatorProcess
from tests.operator.harness import JOBS, Emulated, emulated_cluster, pool, succeeded
from tests.operator.harness import agent_task as emulated_task
from tests.support.postgres import local_postgres

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
NODE = "bench-node"
RUNTIME_IMAGE = "agent-runtime:e2e"  # run by the local kubelet as the installed agent-runtime
BENCH_AGENT = "agent-operator-bench"  # the User-Agent of this process's own requests
STATS_FLUSH_SECONDS = 11  # Postgres publishes an idle backend's statistics within 10 s


def wait_for(check: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll)
    raise TimeoutError(f"timed out waiting for {what}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def chain(steps: int) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "tool": "noop", "params": {"outputs": {"i": i}}} for i in range(steps)]


# --- the parts: Postgres, the operator, the real control plane ------------------------------


@contextmanager
def operator_process(kubeconfig: Path, dsn: str, log: Path) -> Iterator[int]:
    """The operator as the e2e tier runs it (`python -m agent_operator`); its pid."""
    operator = OperatorProcess(kubeconfig, dsn, log)
    operator.start()
    try:
        assert operator.process is not None
        yield operator.process.pid
    finally:
        operator.stop()


def memory(pid: int) -> tuple[int, int]:
    """Resident memory (KiB) and thread count of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


@contextmanager
def control_plane(work: Path, namespaces: tuple[str, ...] = (NAMESPACE,)) -> Iterator[ControlPlane]:
    """The e2e tier's control plane and local kubelet, with the CRDs and `namespaces`."""
    built = subprocess.run(
        ["bash", str(REPO / "hack" / "build-binaries.sh")], capture_output=True, text=True
    )
    if built.returncode != 0:
        sys.exit(f"hack/build-binaries.sh failed:\n{built.stderr[-4000:]}")
    bin_dir = Path(built.stdout.split()[-1])
    plane = ControlPlane(bin_dir, work / "control-plane")
    plane.start()
    try:
        kubelet = project_kubelet(plane.node_credentials(NODE), work / "kubelet", NODE)
        kubelet.start()
        try:
            kubectl = [str(bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}"]
            for args in (
                ["apply", "--server-side", "-f", str(REPO / "crds")],
                ["wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
                *(["create", "namespace", n] for n in namespaces),
            ):
                subprocess.run([*kubectl, *args], capture_output=True, check=True)
            yield plane
        finally:
            kubelet.stop()
    finally:
        plane.stop()


# --- 1. per-step costs, counted on the emulator ----------------------------------------------


@dataclass
class StepCosts:
    requests: float
    transactions: float
    rows: float


def operator_requests(cluster: Emulated) -> int:
    """Requests the emulator received from anyone but this process."""
    return sum(1 for r in list(cluster.emulator) if r.headers.get("User-Agent") != BENCH_AGENT)


def store_writes(dsn: str) -> tuple[int, int]:
    """Committed transactions, and rows inserted, updated or deleted, in the store."""
    with psycopg.connect(dsn) as connection:
        commits = connection.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        rows = connection.execute(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
        ).fetchone()
    assert commits is not None and rows is not None
    return int(commits[0]), int(rows[0])


def run_emulated_chain(cluster: Emulated, name: str, steps: int) -> None:
    """A chain task to Succeeded, this process playing the Job controller and the kubelet."""
    cluster.create("agenttasks", emulated_task(name, {"steps": chain(steps)}))
    for i in range(steps):
        job = wait_for(lambda i=i: _emulated_job(cluster, name, f"s{i}"), 60, f"{name}/s{i}")
        cluster.finish_job(job, succeeded({"i": i}))
    wait_for(
        lambda: (cluster.get("agenttasks", name).get("status") or {}).get("phase") == "Succeeded",
        60,
        f"{name} to succeed",
    )


def _emulated_job(cluster: Emulated, task: str, step: str) -> dict[str, Any] | None:
    for job in cluster.objects(JOBS):
        labels = job["metadata"].get("labels", {})
        if labels.get(LABEL_TASK) == task and labels.get(LABEL_STEP) == step:
            return job
    return None


def per_step_costs(dsn: str, work: Path, steps: int) -> StepCosts:
    work.mkdir()
    with emulated_cluster(work) as cluster:
        cluster.api.user_agent = BENCH_AGENT
        cluster.create("agentpools", pool())
        with operator_process(cluster.kubeconfig, dsn, work / "operator.log"):
            run_emulated_chain(cluster, "warm-up", 2)
            time.sleep(STATS_FLUSH_SECONDS)
            requests, (commits, rows) = operator_requests(cluster), store_writes(dsn)
            run_emulated_chain(cluster, "chain", steps)
            requests = operator_requests(cluster) - requests
            time.sleep(STATS_FLUSH_SECONDS)
            commits_after, rows_after = store_writes(dsn)
    return StepCosts(
        requests / steps, (commits_after - commits) / steps, (rows_after - rows) / steps
    )


# --- 2. on the real control plane --------------------------------------------------------------


class Sightings:
    """When this process first saw each step's Job let run (the operator makes it suspended,
    then records the attempt, then lets it run) and each step's pod terminated."""

    def __init__(self, api: client.ApiClient) -> None:
        self.job_launched: dict[tuple[str, str], float] = {}
        self.pod_finished: dict[tuple[str, str], float] = {}
        self.stopped = False
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        self._watches = [watch.Watch(), watch.Watch()]
        for stream, lister, record in zip(
            self._watches,
            (batch.list_namespaced_job, core.list_namespaced_pod),
            (self._job, self._pod),
            strict=True,
        ):
            threading.Thread(
                target=self._follow, args=(stream, lister, record), daemon=True
            ).start()

    def _follow(self, stream: watch.Watch, lister: Any, record: Callable[[Any], None]) -> None:
        try:
            for event in stream.stream(lister, NAMESPACE, label_selector=MANAGED_SELECTOR):
                record(event["raw_object"])
        except Exception:
            if not self.stopped:
                raise

    def _key(self, obj: Any) -> tuple[str, str]:
        labels = obj["metadata"]["labels"]
        return labels[LABEL_TASK], labels[LABEL_STEP]

    def _job(self, job: Any) -> None:
        if not (job.get("spec") or {}).get("suspend"):
            self.job_launched.setdefault(self._key(job), time.perf_counter())

    def _pod(self, pod: Any) -> None:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        if any("terminated" in (s.get("state") or {}) for s in statuses):
            self.pod_finished.setdefault(self._key(pod), time.perf_counter())

    def stop(self) -> None:
        self.stopped = True
        for stream in self._watches:
            stream.stop()


def create(api: client.ApiClient, plural: str, name: str, spec: dict[str, Any]) -> None:
    kind = {"agentpools": "AgentPool", "agenttasks": "AgentTask"}[plural]
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, plural, {**body, "spec": spec}
    )


def task_phase(api: client.ApiClient, name: str) -> str | None:
    task = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "agenttasks", name
    )
    return (task.get("status") or {}).get("phase")


def handoffs(api: client.ApiClient, steps: int) -> list[float]:
    """Seconds from each step's pod terminating to the next step's Job let run, in a chain
    task."""
    sightings = Sightings(api)
    try:
        for name, count in (("warm-up", 2), ("chain", steps)):
            create(api, "agenttasks", name, {"steps": chain(count)})
            wait_for(lambda n=name: task_phase(api, n) == "Succeeded", 300, f"{name} to succeed")
        return [
            sightings.job_launched[("chain", f"s{i + 1}")]
            - sightings.pod_finished[("chain", f"s{i}")]
            for i in range(steps - 1)
        ]
    finally:
        sightings.stop()


def floor(api: client.ApiClient, samples: int) -> list[float]:
    """The API writes of a hand-off made by a bare client: a Job created suspended, then
    patched (as the operator prepares a step's Job, then lets it run)."""
    batch, times = client.BatchV1Api(api), []
    for i in range(samples):
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"floor-{i}"},
            "spec": {
                "suspend": True,  # nothing runs
                "template": {
                    "spec": {
                        "containers": [{"name": "c", "image": RUNTIME_IMAGE}],
                        "restartPolicy": "Never",
                    }
                },
            },
        }
        started = time.perf_counter()
        batch.create_namespaced_job(NAMESPACE, job)
        batch.patch_namespaced_job(f"floor-{i}", NAMESPACE, {"metadata": {"labels": {"n": "1"}}})
        times.append(time.perf_counter() - started)
    return times


@dataclass
class ManyTasks:
    seconds: float
    memory_kib: tuple[int, int]
    threads: tuple[int, int]


def many_waiting_tasks(api: client.ApiClient, pid: int, count: int) -> ManyTasks:
    """`count` tasks at once, each waiting for an approval."""
    rss_before, threads_before = memory(pid)
    started = time.perf_counter()
    safety = {"requireApprovalFor": ["noop"]}
    for i in range(count):
        create(api, "agenttasks", f"wait-{i}", {"steps": chain(1), "safety": safety})
    approvals = client.CustomObjectsApi(api)

    def requested() -> bool:
        listed = approvals.list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "approvalrequests"
        )
        return len(listed["items"]) >= count

    wait_for(requested, 1800, f"{count} ApprovalRequests", poll=1.0)
    seconds = time.perf_counter() - started
    time.sleep(2)
    rss_after, threads_after = memory(pid)
    return ManyTasks(seconds, (rss_before, rss_after), (threads_before, threads_after))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steps of the chain tasks")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks waiting at once")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="agent-operator-bench-"))
    with local_postgres() as dsn:
        costs = per_step_costs(dsn, work / "emulated", args.steps)
        with control_plane(work) as plane:
            kubeconfig = plane.kubeconfig
            api = config.new_client_from_config(str(kubeconfig))
            create(
                api, "agentpools", "default", {"replicas": 4, "template": {"image": RUNTIME_IMAGE}}
            )
            with operator_process(kubeconfig, dsn, work / "operator.log") as pid:
                handoff = handoffs(api, args.steps)
                bare = floor(api, len(handoff))
                many = many_waiting_tasks(api, pid, args.tasks)

    p50, p95, floor50 = percentile(handoff, 0.5), percentile(handoff, 0.95), percentile(bare, 0.5)
    print(
        f"per step (emulator): {costs.requests:.1f} Kubernetes API requests, "
        f"{costs.transactions:.1f} Postgres transactions, {costs.rows:.1f} rows written"
    )
    print(
        f"step hand-off ({len(handoff)} samples): p50 {p50 * 1000:.0f} ms, "
        f"p95 {p95 * 1000:.0f} ms; bare-client floor p50 {floor50 * 1000:.0f} ms; "
        f"p50 / floor {p50 / floor50:.1f}"
    )
    (rss_before, rss_after), (threads_before, threads_after) = many.memory_kib, many.threads
    print(f"{args.tasks} tasks waiting for approval: all asked within {many.seconds:.0f} s "
          f"({args.tasks / many.seconds:.1f} tasks/s); operator memory {rss_before // 1024} -> "
          f"{rss_after // 1024} MiB ({(rss_after - rss_before) / args.tasks:.0f} KiB per task); "
          f"threads {threads_before} -> {threads_after}")  # fmt: skip
    print("images (unpacked): " + ", ".join(f"{n} {image_megabytes(n)} MB" for n in IMAGES))
    shutil.rmtree(work, ignore_errors=True)


IMAGES = ("agent-operator", "agent-runtime")


def image_megabytes(name: str) -> int:
    """The size of an image's root filesystem, as `make images` unpacked it."""
    image = ImageStore(default_store()).find(f"{name}:e2e")
    if image is None:
        raise SystemExit(f"no {name}:e2e in the image store: run `make images`")
    total = sum(p.lstat().st_size for p in image.rootfs.rglob("*") if not p.is_symlink())
    return total // 1_000_000


if __name__ == "__main__":
    main()
