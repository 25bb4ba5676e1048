"""The operator running for real (Kopf, daemons, watches) against kmock's Kubernetes emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_operator.kube.settings import OperatorSettings
from agent_operator.store import Store

from .harness import NS, Emulated, emulated_cluster, eventually, running_operator

POOL = {
    "apiVersion": "agentoperator.io/v1alpha1",
    "kind": "AgentPool",
    "metadata": {"name": "default", "namespace": NS, "uid": "pool-uid"},
    "spec": {"replicas": 2, "template": {"image": "agent-runtime:test"}},
}


def agent_task(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "agentoperator.io/v1alpha1",
        "kind": "AgentTask",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


@pytest.fixture
def dsn(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulated]:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with emulated_cluster(tmp_path) as emulated:
        monkeypatch.setenv("KUBECONFIG", str(emulated.kubeconfig))
        emulated.create("agentpools", POOL)
        yield emulated


@pytest.fixture
def operator(cluster: Emulated, dsn: str) -> Iterator[None]:
    with running_operator(OperatorSettings(dsn=dsn, metrics_port=0)):
        yield


def status(cluster: Emulated, name: str) -> dict[str, Any]:
    return cluster.get("agenttasks", name).get("status") or {}


def job_for(cluster: Emulated, step: str, attempt: int = 1) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for job in cluster.jobs():
            labels = job["metadata"]["labels"]
            if labels["agentoperator.io/step"] == step and labels[
                "agentoperator.io/attempt"
            ] == str(attempt):
                return job
        return None

    found: dict[str, Any] = eventually(find, what=f"the Job of {step}/{attempt}")
    return found


def ok(outputs: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "outputs": outputs, "message": "", "usage": {"tokens": 0, "costUSD": 0}}


def test_a_chain_runs_job_by_job_to_succeeded_with_checkpoints(
    cluster: Emulated, operator: None, dsn: str
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
    first = job_for(cluster, "fetch")
    assert first["metadata"]["ownerReferences"][0]["uid"] == "uid-chain"
    assert len(cluster.jobs()) == 1  # the second step waits for the first
    cluster.finish_job(first, ok({"n": 41}))
    second = job_for(cluster, "use")
    env = {
        e["name"]: e.get("value")
        for e in second["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert '"m":41' in env["AGENT_STEP"].replace(" ", "")
    cluster.finish_job(second, ok({"m": 41}))
    done = eventually(
        lambda: status(cluster, "chain").get("phase") == "Succeeded", what="Succeeded"
    )
    assert done
    final = status(cluster, "chain")
    assert final["outputs"] == {"use": {"m": 41}}
    assert {c["type"]: c["status"] for c in final["conditions"]}["Ready"] == "True"
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
    cluster: Emulated, operator: None
) -> None:
    cluster.create(
        "agenttasks",
        agent_task(
            "orphan", {"poolRef": {"name": "ghost"}, "steps": [{"id": "a", "tool": "noop"}]}
        ),
    )
    eventually(lambda: status(cluster, "orphan").get("phase") == "Failed", what="Failed")
    final = status(cluster, "orphan")
    assert final["reason"] == "PoolNotFound"
    assert "AgentPool 'ghost'" in final["message"]
    assert cluster.jobs() == []
