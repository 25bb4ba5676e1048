"""Kopf registrations: the thin shell around the task loops, approvals and pools."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import prometheus_client
from kubernetes import client, config
from pydantic import ValidationError

from agent_operator.api import GROUP, VERSION, AgentPoolSpec, ApprovalPhase, Condition, Safety
from agent_operator.core.conditions import pool_conditions
from agent_operator.core.decide import Event, EventKind
from agent_operator.core.reasons import Reason
from agent_operator.core.safety import rule_problems
from agent_operator.driver import BackOff, Done
from agent_operator.kube import metrics
from agent_operator.kube.cache import LabelledCache, Obj
from agent_operator.kube.channels import kube_channels
from agent_operator.kube.cluster import Cluster
from agent_operator.kube.kopf_state import TaskFreeDiffBase
from agent_operator.kube.manifests import (
    LABEL_POOL,
    LABEL_TASK_UID,
    MANAGED_SELECTOR,
    approval_name,
    pool_selector,
)
from agent_operator.kube.mcp_discovery import ServerSync
from agent_operator.kube.reconciler import (
    EventPoster,
    KubeShell,
    ObjectLoggerFactory,
    OperatorContext,
    TaskLoop,
    plain_body,
)
from agent_operator.kube.settings import OperatorSettings
from agent_operator.notifier import Deliverer
from agent_operator.store import StoreError

log = logging.getLogger(__name__)

FINALIZER = "agentoperator.io/finalizer"
POOL_STATUS_SECONDS = 5.0
CACHE_READY_SECONDS = 30.0
DAEMON_EXIT_SECONDS = 10.0
RETENTION_SWEEP_SECONDS = 3600.0


def _api_client() -> client.ApiClient:
    """In-cluster credentials in a pod; $KUBECONFIG (read now, not at import) otherwise."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))


def _event_poster(object_logger: ObjectLoggerFactory) -> EventPoster:
    """Each transition becomes a Kubernetes Event and a log line; in JSON logs the line
    carries the task (`object`), the step and the reason as fields of their own."""

    def post(body: Any, event: Event) -> None:
        text = f"step {event.step_id}: {event.message}" if event.step_id else event.message
        kind = "Warning" if event.warning else "Normal"
        kopf.event(body, type=kind, reason=event.reason, message=text)
        fields: dict[str, Any] = {"reason": event.reason}
        if event.step_id:
            fields |= {"step": event.step_id, "attempt": event.attempt}
        object_logger(body).log(
            logging.WARNING if event.warning else logging.INFO, text, extra=fields
        )

    return post


def _job_done(job: Obj) -> bool:
    conditions = job.get("status", {}).get("conditions") or []
    return any(
        c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")
        and c.get("status") == "True"
        for c in conditions
    )


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """A pod's service account, else $KUBECONFIG as it is now (not as it was at import).

    In a pod, the API server is where the kubelet says (KUBERNETES_SERVICE_HOST and _PORT),
    as the kubernetes client and client-go find it; Kopf's own default name,
    kubernetes.default.svc, needs cluster DNS, which a hostNetwork pod or a cluster
    without DNS does not have."""
    account = kopf.login_with_service_account(**kwargs)
    if account is None:
        return kopf.login_with_kubeconfig(**kwargs)
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if host and port:
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        return dataclasses.replace(account, server=f"https://{host}:{port}")
    return account


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator = memo.get("settings") or OperatorSettings.from_env()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.diffbase_storage = TaskFreeDiffBase()
    settings.posting.level = logging.INFO
    settings.peering.standalone = not operator.peering
    # Each replica says it is alive every lifetime minus 5-10 s (at least every second).
    settings.peering.lifetime = operator.peering_lifetime_seconds
    # A deleted task's daemon finishes the pass it is in before it exits; let Kopf wait for
    # that instead of looking again only at the cancellation timeout (60 s).
    settings.background.instant_exit_timeout = DAEMON_EXIT_SECONDS
    api = _api_client()
    cluster = Cluster(api)
    ctx: OperatorContext

    def scopes(namespaced: Any, cluster_wide: Any) -> list[tuple[Any, dict[str, str]]]:
        if operator.namespaces:
            return [(namespaced, {"namespace": n}) for n in operator.namespaces]
        return [(cluster_wide, {})]

    def on_job(kind: str, job: Obj) -> None:
        meta = job["metadata"]
        labels = meta.get("labels", {})
        pool = (meta.get("namespace", ""), labels.get(LABEL_POOL, ""))
        if kind == "DELETED" or _job_done(job):
            ctx.ledger.release(pool, [meta["name"]])
            for uid in ctx.ledger.wakeable(pool):
                ctx.wakers.wake(uid)
        else:
            ctx.ledger.hold(pool, [meta["name"]])
        ctx.wakers.wake(labels.get(LABEL_TASK_UID, ""))

    def on_pod(kind: str, pod: Obj) -> None:
        ctx.wakers.wake(pod["metadata"].get("labels", {}).get(LABEL_TASK_UID, ""))

    jobs = LabelledCache(
        "jobs",
        scopes(cluster.batch.list_namespaced_job, cluster.batch.list_job_for_all_namespaces),
        MANAGED_SELECTOR,
        LABEL_TASK_UID,
        on_job,
    )
    pods = LabelledCache(
        "pods",
        scopes(cluster.core.list_namespaced_pod, cluster.core.list_pod_for_all_namespaces),
        MANAGED_SELECTOR,
        LABEL_TASK_UID,
        on_pod,
    )

    def object_logger(body: Any) -> logging.LoggerAdapter[Any]:
        """Lines that carry the object (`object` in JSON logs) and post no Event of their own."""
        return kopf.LocalObjectLogger(body=body, settings=settings)

    ctx = OperatorContext(
        operator, cluster, jobs, pods, _event_poster(object_logger), object_logger
    )
    ctx.deliverer = Deliverer(
        ctx.store,
        kube_channels(cluster, operator.notify_dir),
        retry_seconds=operator.api_retry_seconds,
        delivered=lambda notice, ok: metrics.NOTIFICATIONS.labels(
            notice.kind, "delivered" if ok else "failed"
        ).inc(),
    )
    ctx.deliverer.start()
    memo["ctx"] = ctx
    jobs.start()
    pods.start()
    for cache in (jobs, pods):
        if not cache.wait_ready(CACHE_READY_SECONDS):
            # Task passes wait for it (they must see every Job before calling one lost).
            log.warning("the %s watch has not listed yet; task passes wait for it", cache.kind)
    if operator.metrics_port:
        prometheus_client.start_http_server(operator.metrics_port)


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext | None = memo.get("ctx")
    if ctx is not None:
        if ctx.deliverer is not None:
            ctx.deliverer.stop()
        ctx.jobs.stop()
        ctx.pods.stop()
        ctx.close()


@kopf.index(GROUP, VERSION, "agentpools")
def pools_by_name(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): body}


@kopf.index(GROUP, VERSION, "mcpservers")
def mcpservers_by_namespace(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """A server being deleted is gone for new steps at once (no key: Kopf drops its
    entry; None would keep it), before its finalizer (the discovery daemon's) is removed
    and the API forgets it."""
    return {} if body.metadata.get("deletionTimestamp") else {namespace: body}


@kopf.daemon(GROUP, VERSION, "mcpservers", cancellation_timeout=5.0)
async def discover_tools(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """The server's tools, listed into its status for as long as it exists."""
    await ServerSync(memo["ctx"].cluster, lambda: plain_body(body), lambda: bool(stopped)).run()


@kopf.index(GROUP, VERSION, "approvalrequests")
def approvals_by_task(labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {labels.get(LABEL_TASK_UID): body}


# Cancelled at once when the operator stops or the task is deleted; the pass in flight may
# take this long (API calls, LLM planning) to finish. The index kwargs are Kopf's own, but
# its protocol does not list them.
@kopf.daemon(GROUP, VERSION, "agenttasks", cancellation_timeout=60.0)  # type: ignore[arg-type]
async def drive_task(
    body: kopf.Body,
    memo: kopf.Memo,
    pools_by_name: kopf.Index[Any, Any],
    approvals_by_task: kopf.Index[Any, Any],
    mcpservers_by_namespace: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """The task's own loop, until it reaches a terminal phase (or is deleted)."""
    indexes = (pools_by_name, approvals_by_task, mcpservers_by_namespace)
    await _task_loop(memo["ctx"], body, *indexes).run()


@kopf.on.event(GROUP, VERSION, "agenttasks")
def task_changed(uid: str, memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext | None = memo.get("ctx")
    if ctx is not None:
        ctx.wakers.wake(uid)


@kopf.on.delete(GROUP, VERSION, "agenttasks")  # type: ignore[arg-type]
def cancel_task(
    body: kopf.Body,
    meta: kopf.Meta,
    memo: kopf.Memo,
    pools_by_name: kopf.Index[Any, Any],
    approvals_by_task: kopf.Index[Any, Any],
    mcpservers_by_namespace: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """The finalizer: a last pass of the task's driver (the core cancels it: its running
    Jobs are stopped, the cancellation recorded once), then open approvals are withdrawn."""
    ctx: OperatorContext = memo["ctx"]
    namespace, uid = meta.namespace or "default", meta.uid or ""
    # The daemon's loop when it still runs (its driver remembers what it recorded).
    loop = ctx.loops.get(uid) or _task_loop(
        ctx, body, pools_by_name, approvals_by_task, mcpservers_by_namespace
    )
    outcome = loop.pass_once()
    if isinstance(outcome, BackOff):
        raise kopf.TemporaryError(f"cancelling the task: {outcome.error}", delay=outcome.seconds)
    if not isinstance(outcome, Done):  # a planner's answer came in: pass again to cancel
        raise kopf.TemporaryError("cancelling the task: one more pass", delay=0.1)
    for approval in ctx.cluster.approvals_of_task(namespace, uid):
        if not approval.get("spec", {}).get("decision"):
            ctx.cluster.delete_approval(namespace, approval["metadata"]["name"])
    ctx.ledger.forget(uid)
    ctx.phases.forget(uid)


def _task_loop(
    ctx: OperatorContext,
    body: kopf.Body,
    pools_by_name: kopf.Index[Any, Any],
    approvals_by_task: kopf.Index[Any, Any],
    mcpservers_by_namespace: kopf.Index[Any, Any],
) -> TaskLoop:
    def pool(namespace: str, name: str) -> Obj | None:
        found = list(pools_by_name.get((namespace, name), []))
        return found[0] if found else None

    return TaskLoop(
        KubeShell(
            ctx,
            body,
            pool,
            lambda uid: list(approvals_by_task.get(uid, [])),
            lambda namespace: list(mcpservers_by_namespace.get(namespace, [])),
        )
    )


@kopf.on.field(GROUP, VERSION, "approvalrequests", field="spec.decision")
def record_decision(
    new: Any,
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """A person decided: the outcome goes to the request's status, an event and the task.
    A request this operator did not make (another name for the step) decides nothing, so
    nothing of it is told either."""
    if new not in (ApprovalPhase.approved.value, ApprovalPhase.rejected.value):
        return
    spec = body.get("spec", {})
    ref = spec.get("taskRef") or {}
    made = approval_name(ref.get("name", ""), ref.get("uid") or ref.get("name", ""), spec["stepId"])
    if meta.get("name") != made:
        return
    if status.get("phase", ApprovalPhase.pending.value) != ApprovalPhase.pending.value:
        return  # decided (or expired) before: a decision cannot be changed
    now = datetime.now(UTC)
    patch.status["phase"] = new
    patch.status["decidedAt"] = now.isoformat().replace("+00:00", "Z")
    # Who decided, as the API server recorded it (the chart's admission policies set and
    # check spec.decidedBy); absent without them.
    decided_by = body.get("spec", {}).get("decidedBy")
    if decided_by:
        patch.status["decidedBy"] = decided_by
    created = meta.get("creationTimestamp")
    if created:
        waited = now - datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        metrics.APPROVAL_SECONDS.observe(max(waited.total_seconds(), 0.0))
    reason = body.get("spec", {}).get("reason") or "no reason given"
    message = f"{new.lower()} by {decided_by}: {reason}" if decided_by else reason
    ctx: OperatorContext = memo["ctx"]
    step = body.get("spec", {}).get("stepId")
    ctx.post_event(body, Event(EventKind.approval_decided, f"Step{new}", message, step_id=step))
    ctx.wakers.wake(meta.get("labels", {}).get(LABEL_TASK_UID, ""))


@kopf.on.event(GROUP, VERSION, "approvalrequests")
def approval_changed(
    type: str | None,
    namespace: str | None,
    name: str,
    labels: kopf.Labels,
    spec: kopf.Spec,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    ctx: OperatorContext | None = memo.get("ctx")
    if ctx is not None:
        pending = (
            type != "DELETED"
            and not spec.get("decision")
            and status.get("phase", ApprovalPhase.pending.value) == ApprovalPhase.pending.value
        )
        ctx.pending_approvals.observe(namespace or "", name, pending)
        ctx.wakers.wake(labels.get(LABEL_TASK_UID, ""))


@kopf.on.event(GROUP, VERSION, "agentpools")
def pool_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A scaled pool takes effect at once: the tasks waiting on it look again."""
    ctx: OperatorContext | None = memo.get("ctx")
    if ctx is not None:
        for uid in ctx.ledger.wakeable((namespace or "", name)):
            ctx.wakers.wake(uid)


@kopf.timer(GROUP, VERSION, "agentpools", interval=POOL_STATUS_SECONDS)
def pool_status(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Replicas, running, queued and the selector the scale subresource reads."""
    ctx: OperatorContext | None = memo.get("ctx")
    if ctx is None:
        return
    running, queued, _waiting = ctx.ledger.usage((namespace or "", name))
    wanted = {
        "replicas": spec.get("replicas", 1),
        "running": running,
        "queued": queued,
        "selector": pool_selector(name),
        "observedGeneration": meta.get("generation"),
        "conditions": _pool_conditions(spec, meta, status),
    }
    changed = {k: v for k, v in wanted.items() if status.get(k) != v}
    if changed:
        patch.status.update(changed)


def _pool_conditions(spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status) -> list[Obj]:
    """The pool's Ready condition, as its status shows it: False when its spec does not
    parse (an API server without this CRD's schema let it in) or a rule does not compile."""
    try:
        old = [Condition.model_validate(c) for c in status.get("conditions", [])]
    except ValidationError:  # conditions someone else wrote: ours replace them
        old = []
    try:
        problems, reason = rule_problems(AgentPoolSpec.model_validate(dict(spec)), Safety()), None
    except ValidationError as error:
        problems, reason = [f"the AgentPool does not parse: {error}"], Reason.invalid_spec
    ready = pool_conditions(problems, old, meta.get("generation"), datetime.now(UTC), reason)
    return [c.wire() for c in ready]


@kopf.on.startup()
async def start_forgetting(memo: kopf.Memo, **_: Any) -> None:
    """Bound the store: at start and every hour, delete the history of the tasks that ended
    longer ago than settings.retention_days (0 keeps everything)."""
    memo["forgetting"] = asyncio.create_task(_forget_ended(memo))


@kopf.on.cleanup()
async def stop_forgetting(memo: kopf.Memo, **_: Any) -> None:
    forgetting: asyncio.Task[None] | None = memo.get("forgetting")
    if forgetting is not None:
        forgetting.cancel()


async def _forget_ended(memo: kopf.Memo) -> None:
    while True:
        ctx: OperatorContext | None = memo.get("ctx")
        days = ctx.settings.retention_days if ctx is not None else 0
        if ctx is not None and days:
            before = datetime.now(UTC) - timedelta(days=days)
            try:
                forgotten = await asyncio.to_thread(_forget_before, ctx, before)
            except StoreError as error:  # unreachable now: the next sweep tries again
                log.warning("could not delete the history of ended tasks: %s", error)
            else:
                if forgotten:
                    log.info(
                        "deleted the history of %d tasks that ended before %s", forgotten, before
                    )
        await asyncio.sleep(RETENTION_SWEEP_SECONDS)


def _forget_before(ctx: OperatorContext, before: datetime) -> int:
    return ctx.store().forget_ended(before)
