"""Reading the cluster back: a step Job (with its pod) as a StepRun, an ApprovalRequest as
an ApprovalView.

Pure: the shell hands in objects as the API server returns them (camelCase dicts, RFC 3339
times). The step's result is read the way the local executor reads it: the runtime's JSON
StepResult, from the termination message, or from the last line of the step's log when
the message is a summary of a larger result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from agent_contract import StepResult, full_result
from agent_operator.api import ApprovalPhase
from agent_operator.core.decide import ApprovalView, RunState, StepRun
from agent_operator.core.reasons import Reason, exit_code
from agent_operator.kube.manifests import (
    ANNOTATION_PREPARED,
    CONTAINER,
    LABEL_ATTEMPT,
    LABEL_STEP,
)
from agent_operator.redact import redact_text

__all__ = ["LoadResult", "approval_view", "run_from_job"]

Obj = Mapping[str, Any]
# The last line of a step pod's log: (namespace, pod name) -> the line, None when gone.
LoadResult = Callable[[str, str], str | None]

TAIL_CHARS = 500  # of a garbled termination message (pod logs), kept as the step's message
_JOB_SUCCEEDED = ("Complete", "SuccessCriteriaMet")
_STARTING = ("ContainerCreating", "PodInitializing")
# Waiting reasons of a container whose image will not come by itself: the kubelet was told
# never to pull it, cannot parse its name, or has already retried the pull and backs off.
_IMAGE_UNAVAILABLE = ("ErrImageNeverPull", "InvalidImageName", "ImagePullBackOff")


@dataclass(frozen=True)
class _Ending:
    """How an attempt ended, before its result is read."""

    ok: bool
    finished_at: datetime | None
    reason: str | None = None
    message: str = ""


def run_from_job(job: Obj, pod: Obj | None, load_result: LoadResult | None) -> StepRun:
    """The attempt a step Job runs, as decide() sees it.

    A Job still prepared (made suspended, not yet let run) has run nothing. The Job's
    conditions decide first; a pod that has ended decides while the Job
    controller has yet to catch up. `load_result` reads a large result from the pod's log.
    """
    meta = job["metadata"]
    labels = meta.get("labels") or {}
    run = StepRun(
        step_id=labels[LABEL_STEP],
        attempt=int(labels[LABEL_ATTEMPT]),
        state=RunState.running,
        started_at=_started_at(job),
        job_name=meta["name"],
    )
    if ANNOTATION_PREPARED in (meta.get("annotations") or {}):
        return replace(run, state=RunState.prepared)
    status = _container_status(pod)
    terminated = (status.get("state") or {}).get("terminated")
    ending = _job_ending(job, pod, terminated) or _pod_ending(pod, terminated)
    if ending is None:
        if _image_unavailable(status):
            return replace(
                run,
                state=RunState.failed,
                finished_at=datetime.now(UTC),
                reason=Reason.image_unavailable,
                message=_waiting_message(pod, status),
                lingering=True,
            )
        return replace(run, message=_waiting_message(pod, status))
    if ending.ok and terminated is None:  # the pod's status lags the Job's in our view
        return replace(run, message="the Job completed; waiting for its pod's result")
    code = terminated.get("exitCode") if terminated else None
    result = _result(terminated.get("message") if terminated else None, code, pod, load_result)
    if ending.ok:
        result = result or StepResult(ok=False, message=f"exited {code} without a result")
        if result.ok:
            return replace(
                run,
                state=RunState.succeeded,
                finished_at=ending.finished_at,
                outputs=result.outputs,
                message=result.message,
                usage=result.usage,
            )
        reason: str | None = result.reason or exit_code(code)
        message = result.message
    else:
        reason = (result.reason if result else None) or ending.reason
        message = result.message if result and result.message else ending.message
    return replace(
        run,
        state=RunState.failed,
        finished_at=ending.finished_at,
        outputs=result.outputs if result else {},
        message=message,
        reason=reason,
        usage=result.usage if result else run.usage,
    )


def approval_view(obj: Obj) -> ApprovalView:
    """An ApprovalRequest as decide() sees it.

    A person's `spec.decision` counts as soon as it is written, before the operator has
    mirrored it into status; an Expired status wins over a decision that came too late.
    """
    spec, status = obj["spec"], obj.get("status") or {}
    created = obj["metadata"].get("creationTimestamp")
    if status.get("phase") == ApprovalPhase.expired:
        phase = ApprovalPhase.expired
    elif spec.get("decision"):
        phase = ApprovalPhase(spec["decision"])
    else:
        phase = ApprovalPhase.pending
    return ApprovalView(
        step_id=spec["stepId"],
        phase=phase,
        expires_at=_time(spec["expiresAt"]),
        decided_by=status.get("decidedBy") or spec.get("decidedBy"),
        reason=spec.get("reason"),
        params_digest=spec.get("paramsDigest"),
        requested_at=_time(created)
        if (created := obj["metadata"].get("creationTimestamp"))
        else None,
    )


def _job_ending(job: Obj, pod: Obj | None, terminated: Obj | None) -> _Ending | None:
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        when = _maybe_time(status.get("completionTime")) or _maybe_time(
            condition.get("lastTransitionTime")
        )
        if condition.get("type") in _JOB_SUCCEEDED:
            return _Ending(ok=True, finished_at=when or _finished_at(terminated))
        if condition.get("type") == "Failed":
            reason: str
            if condition.get("reason") == "DeadlineExceeded":  # the Job controller's word
                reason, message = Reason.timed_out, condition.get("message", "")
            else:
                reason, message = _pod_failure(pod, terminated) or (
                    condition.get("reason") or Reason.failed,
                    condition.get("message", ""),
                )
            return _Ending(False, when or _finished_at(terminated), reason, message)
    return None


def _pod_ending(pod: Obj | None, terminated: Obj | None) -> _Ending | None:
    """The pod's word, for a Job whose controller has not yet written a condition."""
    if pod is None:
        return None
    if terminated is not None and terminated.get("exitCode") == 0:
        return _Ending(ok=True, finished_at=_finished_at(terminated))
    if terminated is None and (pod.get("status") or {}).get("phase") != "Failed":
        return None  # still running, or being deleted but not yet stopped
    reason, message = _pod_failure(pod, terminated) or (Reason.failed, "the pod failed")
    return _Ending(False, _finished_at(terminated), reason, message)


def _pod_failure(pod: Obj | None, terminated: Obj | None) -> tuple[str, str] | None:
    """Why the pod failed, the most telling cause first."""
    if pod is None:
        return None
    status = pod.get("status") or {}
    disruption = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        ),
        None,
    )
    if status.get("reason") == "Evicted":  # the kubelet's word
        return Reason.evicted, status.get("message") or "the pod was evicted"
    if disruption is not None:  # eviction API, preemption, node drain or taint
        return Reason.evicted, f"{disruption.get('reason')}: {disruption.get('message', '')}"
    if pod["metadata"].get("deletionTimestamp"):
        return Reason.pod_deleted, "the step's pod was deleted while it ran"
    container = _container_status(pod)
    if _image_unavailable(container):  # a node that fails such a pod rather than wait
        return Reason.image_unavailable, _waiting_message(pod, container)
    if terminated is not None:
        code = terminated.get("exitCode")
        why = terminated.get("reason")
        detail = f" ({why})" if why and why != "Error" else ""
        return exit_code(code), f"exited {code}{detail}"
    if status.get("reason"):
        return status["reason"], status.get("message", "")
    return None


def _result(
    text: str | None, code: int | None, pod: Obj | None, load_result: LoadResult | None
) -> StepResult | None:
    """The runtime's report; anything else (log lines, cut JSON) becomes a clear failure."""
    if not text:
        return None
    try:
        result = StepResult.model_validate_json(text)
    except ValidationError:
        # Logs may hold what the runtime would have hidden; redact before cutting, so a cut
        # cannot separate a secret from the key name that marks it.
        tail = redact_text(text)[-TAIL_CHARS:].strip()
        return StepResult(ok=False, message=f"exited {code} without a result: {tail}")
    if not result.in_log or pod is None or load_result is None:
        return result
    meta = pod["metadata"]
    return full_result(result, load_result(meta["namespace"], meta["name"]))


def _waiting_message(pod: Obj | None, container: Obj) -> str:
    """Why a started attempt is not running yet, when Kubernetes says."""
    if pod is None:
        return ""
    if pod["metadata"].get("deletionTimestamp"):
        return "the pod is being deleted; waiting for the step to stop"
    waiting = (container.get("state") or {}).get("waiting") or {}
    if waiting.get("reason") and waiting["reason"] not in _STARTING:
        return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason', 'Unschedulable')}: {condition.get('message', '')}"
    return ""


def _image_unavailable(container: Obj) -> bool:
    waiting = (container.get("state") or {}).get("waiting") or {}
    return waiting.get("reason") in _IMAGE_UNAVAILABLE


def _container_status(pod: Obj | None) -> Obj:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == CONTAINER), {})


def _started_at(job: Obj) -> datetime:
    """When the Job started running: its startTime, set by the Job controller once it is
    let run. Before that (just let run, the controller not yet seen), now: not its
    creation, which for a Job prepared before a store outage can be minutes earlier and
    would time the attempt out before it ran."""
    when = (job.get("status") or {}).get("startTime")
    return _time(when) if when else datetime.now(UTC)


def _finished_at(terminated: Obj | None) -> datetime | None:
    return _maybe_time((terminated or {}).get("finishedAt"))


def _maybe_time(value: str | None) -> datetime | None:
    return _time(value) if value else None


def _time(value: str) -> datetime:
    """An RFC 3339 time as an aware UTC datetime."""
    parsed = datetime.fromisoformat(value)
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
