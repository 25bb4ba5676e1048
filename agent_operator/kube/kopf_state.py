"""What Kopf keeps on the objects it handles, kept small enough for any AgentTask."""

from __future__ import annotations

from collections.abc import Iterable

import kopf

from agent_operator.api import API_VERSION

__all__ = ["TaskFreeDiffBase"]


class TaskFreeDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf's diff base (the last-handled-configuration annotation), empty for AgentTasks.

    Kopf copies an object's spec into that annotation to tell what changed between two
    versions. An AgentTask's handlers (a daemon, on.event, on.delete) never ask, and the
    copy broke every Kopf patch of a task whose spec was over about 256 KiB (the API
    server's limit for all annotations together), the finalizer's removal included, so
    such a task could not be deleted. ApprovalRequests keep theirs: on.field(spec.decision)
    compares versions, and they are small.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        if body.get("apiVersion") == API_VERSION and body.get("kind") == "AgentTask":
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)
