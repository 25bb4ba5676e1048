"""Notices through the running operator: an approval request, its reminders and
escalation to a pool's channels (Apprise URLs in a Secret), the expiry and the task's end
to the operator's default channel; delivered to a real HTTP receiver through Apprise's
JSON webhook, once each, and not again after a restart."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from kubernetes import client

from agent_operator.kube.settings import OperatorSettings
from agent_operator.store import NoticeState, Store
from tests.support.webhook import Webhook

from .harness import (
    NS,
    Emulated,
    agent_task,
    eventually,
    pool,
    running_operator,
    succeeded,
    wait_job,
    wait_phase,
)
from .test_flows import approval_of, decide

SECRET = "hunter2-notify-s3cr3t"


def secret(cluster: Emulated, name: str, data: dict[str, str]) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=NS),
        data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    )
    client.CoreV1Api(cluster.api).create_namespaced_secret(NS, body)


def kinds(posts: list[dict[str, Any]]) -> list[str]:
    """What each post was about, by its title's first words."""
    return [p["title"].split(":")[0].split(" (")[0] for p in posts]


def test_a_pools_approvers_are_told_reminded_escalated_to_and_told_the_end(
    cluster: Emulated, settings: OperatorSettings, webhook: Webhook
) -> None:
    secret(
        cluster,
        "pagers",
        {"urls": webhook.url("approvers"), "escalationUrls": webhook.url("oncall")},
    )
    cluster.create(
        "agentpools",
        pool(
            "paged",
            notifications={
                "secretName": "pagers",
                "remindEverySeconds": 1,
                "escalateAfterSeconds": 2,
                "taskFinished": True,
            },
        ),
    )
    params = {"outputs": {"ok": True}, "password": SECRET}
    task = agent_task(
        "deploy",
        {
            "poolRef": {"name": "paged"},
            "steps": [{"id": "roll", "tool": "noop", "params": params, "rationale": "ship it"}],
            "safety": {"requireApprovalFor": ["noop"]},
        },
    )
    with running_operator(settings):
        cluster.create("agenttasks", task)
        webhook.wait_for(1)
        eventually(
            lambda: (
                "Escalated" in kinds(webhook.received)
                and "Still waiting for approval" in kinds(webhook.received)
            ),
            what="a reminder and the escalation",
        )
        posts = list(webhook.received)
        asked = posts[0]
        assert kinds([asked]) == ["Approval needed"] and asked["path"] == "/approvers"
        assert f"kubectl agent approve deploy roll -n {NS}" in asked["message"]
        assert "ship it" in asked["message"]
        assert [p["path"] for p in posts if kinds([p]) == ["Escalated"]] == ["/oncall"]
        decide(cluster, approval_of(cluster, "roll"), "Approved", "go")
        cluster.finish_job(wait_job(cluster, "roll"), succeeded({"ok": True}))
        wait_phase(cluster, "deploy", "Succeeded")
        eventually(lambda: "Task succeeded" in kinds(webhook.received), what="the end told")
    told = kinds(webhook.received)
    assert told.count("Approval needed") == 1 and told.count("Escalated") == 1
    assert told.count("Task succeeded") == 1
    assert all(SECRET not in p["message"] + p["title"] for p in webhook.received)

    with running_operator(settings), Store.open(settings.dsn) as store:  # a restart: no more
        uid = cluster.get("agenttasks", "deploy")["metadata"]["uid"]
        eventually(
            lambda: all(n.state == NoticeState.delivered for n in store.notices(uid)),
            what="every notice delivered",
        )
        rows = store.notices(uid)
    assert kinds(webhook.received) == told
    assert {r.key for r in rows} >= {"requested/roll", "escalated/roll", "finished"}
    assert all(r.attempts == 1 for r in rows)


def test_the_operators_default_channel_hears_an_expiry_and_a_failed_delivery_is_retried(
    cluster: Emulated, settings: OperatorSettings, webhook: Webhook, tmp_path: Path
) -> None:
    channel = tmp_path / "notifications"
    channel.mkdir()
    (channel / "urls").write_text(webhook.url("default") + "\n")
    settings = settings.model_copy(
        update={"notify_dir": str(channel), "notify_task_finished": True}
    )
    webhook.fail_next(1)  # the first delivery meets a service that is down
    task = agent_task(
        "late",
        {
            "steps": [{"id": "wait", "tool": "noop"}],
            "safety": {"requireApprovalFor": ["noop"], "approvalTimeoutSeconds": 2},
        },
    )
    with running_operator(settings) as memo:
        memo["ctx"].deliverer.retry_seconds = 0.2
        cluster.create("agenttasks", task)
        wait_phase(cluster, "late", "Failed")
        posts = webhook.wait_for(3)
    assert kinds(posts) == ["Approval needed", "Approval expired", "Task failed"]
    assert {p["path"] for p in posts} == {"/default"}
    assert webhook.refused == 1
    assert "ApprovalExpired" in posts[1]["message"]
    with Store.open(settings.dsn) as store:
        uid = cluster.get("agenttasks", "late")["metadata"]["uid"]
        first = next(n for n in store.notices(uid) if n.key == "requested/wait")
    assert (first.attempts, first.state) == (2, NoticeState.delivered)
