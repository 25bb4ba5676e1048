"""The operator running for real (Kopf, daemons, watches) against kmock's Kubernetes emulator."""

from __future__ import annotations

import kopf

from agent_operator.kube.settings import OperatorSettings
from agent_operator.store import EventKind, Store

from .harness import (
    Emulated,
    agent_task,
    conditions,
    eventually,
    running_operator,
    succeeded,
    wait_job,
    wait_phase,
)


def test_a_chain_runs_job_by_job_to_succeeded_with_checkpoints(
    cluster: Emulated, operator: kopf.Memo, dsn: str
) -> None:
    cluster.create(
        "agenttasks",
        agent_task(
            "chain",
            {
                "steps": [
                    {"id": "fetch", "tool": "noop", "params": {"outputs": {"n": 1}}},
                    {
                        "id": "use",
                        "tool": "noop",
                        "params": {"outputs": {"m": "${steps.fetch.outputs.n}"}},
                    },
                ]
            },
        ),
    )
    first = wait_job(cluster, "fetch")
    assert first["metadata"]["ownerReferences"][0]["uid"] == "uid-chain"
    assert len(cluster.jobs()) == 1  # the second step waits for the first
    cluster.finish_job(first, succeeded({"n": 41}))
    second = wait_job(cluster, "use")
    env = {
        e["name"]: e.get("value")
        for e in second["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert '"m":41' in env["AGENT_STEP"].replace(" ", "")
    cluster.finish_job(second, succeeded({"m": 41}))
    final = wait_phase(cluster, "chain", "Succeeded")
    assert final["outputs"] == {"use": {"m": 41}}
    assert conditions(final)["Ready"]["status"] == "True"
    assert len(cluster.jobs()) == 2
    with Store.open(dsn) as store:
        attempts = {(a.step_id, a.attempt): a.phase for a in store.attempts("uid-chain")}
        assert attempts == {("fetch", 1): "Succeeded", ("use", 1): "Succeeded"}
        checkpoint = store.last_checkpoint("uid-chain")
        assert checkpoint is not None and checkpoint.snapshot["phase"] == "Succeeded"
        assert final["checkpoint"]["id"] == checkpoint.checkpoint_id
    reasons = [e.get("reason") for e in cluster.posted_events()]
    assert "StepStarted" in reasons and "StepSucceeded" in reasons and "Succeeded" in reasons


def test_a_task_naming_a_missing_pool_fails_with_a_reason(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    cluster.create(
        "agenttasks",
        agent_task(
            "orphan", {"poolRef": {"name": "ghost"}, "steps": [{"id": "a", "tool": "noop"}]}
        ),
    )
    final = wait_phase(cluster, "orphan", "Failed")
    assert final["reason"] == "PoolNotFound"
    assert "AgentPool 'ghost'" in final["message"]
    assert cluster.jobs() == []


def test_the_operator_deletes_the_history_of_tasks_that_ended_before_the_retention(
    cluster: Emulated, settings: OperatorSettings, dsn: str
) -> None:
    with Store.open(dsn) as store:
        for uid, phase in (("uid-ended", "Succeeded"), ("uid-running", "Running")):
            store.upsert_task(uid, namespace="default", name=uid, phase=phase)
            store.append_event(uid, EventKind.planned, message="1 steps")
        # A retention of a millisecond: the task that just ended is already past it.
        with running_operator(settings.model_copy(update={"retention_days": 1e-3 / 86400})):
            eventually(
                lambda: store.task("uid-ended") is None, 30, "the ended task to be forgotten"
            )
        assert store.events("uid-ended") == []
        assert store.task("uid-running") is not None and store.events("uid-running") != []


def test_kopf_keeps_no_copy_of_a_task_spec_on_the_task(
    cluster: Emulated, operator: kopf.Memo
) -> None:
    # The API server allows 256 KiB of annotations in all: a copy of a large spec there made
    # every Kopf patch of the task fail, the finalizer's removal too.
    marker = "x" * 1000
    step = {"id": "only", "tool": "noop", "params": {"outputs": {"text": marker}}}
    cluster.create("agenttasks", agent_task("big", {"steps": [step]}))
    cluster.finish_job(wait_job(cluster, "only"), succeeded({"text": "done"}))
    wait_phase(cluster, "big", "Succeeded")
    annotations = cluster.get("agenttasks", "big")["metadata"].get("annotations", {})
    assert annotations, "Kopf keeps its diff base in an annotation"
    assert not any(marker in value for value in annotations.values()), annotations
