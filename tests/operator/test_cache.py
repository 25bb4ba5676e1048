"""The Job/Pod cache (issue 9.11): it follows the watch from the last resourceVersion instead
of listing again after every watch, lists again on 410 only, wakes only the tasks whose
objects changed, and keeps a deleted object's last state for a while."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent_operator.kube.cache import LabelledCache
from agent_operator.kube.manifests import LABEL_TASK_UID, MANAGED_SELECTOR

from .harness import EXPIRED, JOBS, NS, Emulated, eventually


def job(name: str, task: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "agent-operator", LABEL_TASK_UID: task},
        },
        "spec": {"template": {"spec": {"containers": [{"name": "step", "image": "x"}]}}},
    }


class Changes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        with self.lock:
            self.seen.append((kind, obj["metadata"]["name"]))

    def names(self) -> list[str]:
        with self.lock:
            return [name for _, name in self.seen]


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def jobs(cluster: Emulated, changes: Changes) -> Iterator[LabelledCache]:
    cache = LabelledCache(
        "jobs",
        [(cluster.batch.list_job_for_all_namespaces, {})],
        MANAGED_SELECTOR,
        LABEL_TASK_UID,
        changes,
        watch_seconds=1,
    )
    cache.start()
    assert cache.wait_ready(10)
    yield cache
    cache.stop()


def test_watches_resume_without_listing_again(cluster: Emulated, jobs: LabelledCache) -> None:
    """A watch that ended or broke resumes from the last version seen; before, every
    watch (300 s each) ended in a full relist that woke every task."""
    for n in range(3):
        eventually(lambda: cluster.watching(JOBS) == 1, what="the watch to follow changes")
        cluster.batch.create_namespaced_job(NS, job(f"j{n}", "task-a"))
        eventually(lambda n=n: jobs.get(NS, f"j{n}"), what=f"Job j{n} in the cache")
        assert cluster.drop_watches(JOBS) == 1
    eventually(lambda: cluster.watching(JOBS) == 1, what="the watch to follow changes")
    assert jobs.relists == 1
    assert cluster.watches(JOBS) == 4


def test_a_relist_after_410_wakes_only_the_tasks_whose_objects_changed(
    cluster: Emulated, jobs: LabelledCache, changes: Changes
) -> None:
    for name, task in (("a", "task-a"), ("b", "task-b")):
        cluster.batch.create_namespaced_job(NS, job(name, task))
    eventually(lambda: sorted(changes.names()) == ["a", "b"], what="both Jobs seen")
    assert [o["metadata"]["name"] for o in jobs.for_key("task-a")] == ["a"]
    relists = jobs.relists
    cluster.store_silently(JOBS, {**job("b", "task-b"), "status": {"active": 1}})
    seen = len(changes.names())
    eventually(lambda: cluster.watching(JOBS) == 1, what="the watch to follow changes")
    cluster.send_watch_event(JOBS, {"type": "ERROR", "object": EXPIRED})

    eventually(lambda: jobs.relists > relists, what="a relist after 410")
    eventually(lambda: (jobs.get(NS, "b") or {}).get("status") == {"active": 1}, what="b fresh")
    assert changes.seen[seen:] == [("MODIFIED", "b")], changes.seen  # a did not change


def test_a_deleted_job_leaves_its_last_state_for_a_while(
    cluster: Emulated, jobs: LabelledCache
) -> None:
    cluster.batch.create_namespaced_job(NS, job("a", "task-a"))
    eventually(lambda: jobs.get(NS, "a"), what="the Job in the cache")
    cluster.batch.delete_namespaced_job("a", NS)
    eventually(lambda: jobs.get(NS, "a") is None, what="the Job gone")
    assert jobs.for_key("task-a") == []
    assert [o["metadata"]["name"] for o in jobs.gone_for_key("task-a")] == ["a"]


def test_a_job_deleted_before_its_creator_put_it_stays_gone(
    cluster: Emulated, jobs: LabelledCache
) -> None:
    """The operator puts the Job it created once the create call returns; by then the watch
    may have brought its creation and its deletion (`kubectl delete job` at once). Before,
    the put brought the Job back to life, so its attempt was never called lost and the step
    never retried."""
    created = cluster.batch.api_client.sanitize_for_serialization(
        cluster.batch.create_namespaced_job(NS, job("a", "task-a"))
    )
    eventually(lambda: jobs.get(NS, "a"), what="the Job in the cache")
    cluster.batch.delete_namespaced_job("a", NS)
    eventually(lambda: jobs.get(NS, "a") is None, what="the Job gone")
    jobs.put(created)  # the create call returns only now
    assert jobs.for_key("task-a") == []
    assert [o["metadata"]["name"] for o in jobs.gone_for_key("task-a")] == ["a"]


def test_a_job_put_while_a_relist_is_in_flight_is_not_taken_for_gone() -> None:
    """A Job the operator creates while a relist's list call is on its way is not in that
    list; dropping it would make the core call its attempt lost and start it again."""
    seen: list[tuple[str, str]] = []
    cache: LabelledCache

    class Listing:
        data = json.dumps({"metadata": {"resourceVersion": "7"}, "items": []}).encode()

    def lister(**_: Any) -> Listing:
        cache.put(job("made-meanwhile", "task-a"))  # created while the list is made
        return Listing()

    cache = LabelledCache(
        "jobs",
        [(lister, {})],
        MANAGED_SELECTOR,
        LABEL_TASK_UID,
        lambda k, o: seen.append((k, o["kind"])),
    )
    cache._relist(0, lister, {})  # as a relist after 410 does
    assert [o["metadata"]["name"] for o in cache.for_key("task-a")] == ["made-meanwhile"]
    assert cache.gone_for_key("task-a") == [] and seen == []
