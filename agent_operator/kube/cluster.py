"""The few Kubernetes API calls the operator makes, with 404/409 treated as level-based."""

from __future__ import annotations

import base64
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agent_contract import MAX_RESULT_BYTES
from agent_operator.api import GROUP, VERSION
from agent_operator.kube.manifests import CONTAINER

__all__ = ["Cluster"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class Cluster:
    """Create-or-adopt, delete-if-present, and status patches."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def create_job(self, job: Obj) -> bool:
        """True when created; False when a Job of that name exists already (adopted)."""
        body: Any = job  # the client accepts the plain manifest
        return _create(lambda: self.batch.create_namespaced_job(job["metadata"]["namespace"], body))

    def delete_job(self, namespace: str, name: str) -> None:
        _ignore_missing(
            lambda: self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background"
            )
        )

    def create_approval(self, approval: Obj) -> bool:
        namespace = approval["metadata"]["namespace"]
        return _create(
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "approvalrequests", approval
            )
        )

    def delete_approval(self, namespace: str, name: str) -> None:
        _ignore_missing(
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, "approvalrequests", name
            )
        )

    def patch_status(self, plural: str, namespace: str, name: str, status: Obj) -> None:
        """Merge-patch the status subresource (no resourceVersion: the operator owns status)."""
        _ignore_missing(
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status}
            )
        )

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, or None when the Secret or the key is missing."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        data = (secret.data or {}).get(key)
        return base64.b64decode(data).decode() if data is not None else None

    def step_log_tail(self, namespace: str, pod: str) -> str | None:
        """The last line of a step pod's log, where the runtime writes its full result.

        Bounded: one byte over the largest result (and its newline) is enough to tell that
        the line is too long. None when the pod or its log is gone.
        """
        try:
            # Raw bytes: the client would parse a log line that is JSON into a Python repr.
            response: Any = self.core.read_namespaced_pod_log(
                pod,
                namespace,
                container=CONTAINER,
                tail_lines=1,
                limit_bytes=MAX_RESULT_BYTES + 2,
                _preload_content=False,
            )
        except ApiException as error:
            if error.status in (400, 404):  # the pod, or its container's log, is gone
                return None
            raise
        return str(response.data.decode(errors="replace"))

    def jobs_of_task(self, namespace: str, task_uid: str) -> list[Obj]:
        """Jobs of a task, read from the API (the finalizer uses it; the loop uses the cache)."""
        listing = self.batch.list_namespaced_job(
            namespace, label_selector=f"agentoperator.io/task-uid={task_uid}"
        )
        return [self.api.sanitize_for_serialization(job) for job in listing.items]

    def approvals_of_task(self, namespace: str, task_uid: str) -> list[Obj]:
        listing: Any = self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "approvalrequests",
            label_selector=f"agentoperator.io/task-uid={task_uid}",
        )
        return list(listing["items"])


def _create(call: Any) -> bool:
    try:
        call()
        return True
    except ApiException as error:
        if error.status == 409:
            return False  # created before (a restart, a retried call): adopt it
        raise


def _ignore_missing(call: Any) -> None:
    try:
        call()
    except ApiException as error:
        if error.status != 404:
            raise
