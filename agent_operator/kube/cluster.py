"""The few Kubernetes API calls the operator makes, level-based (404 and 409 are answers,
not errors) and with every other failure classified once: a 5xx, a 429 or a dropped
connection is `Transient`; any other refusal is `Permanent`, naming the request and the
API server's message."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from agent_contract import MAX_RESULT_BYTES
from agent_operator.api import GROUP, VERSION
from agent_operator.core.reasons import Reason
from agent_operator.driver import Permanent, Transient
from agent_operator.kube.manifests import CONTAINER

__all__ = ["Cluster", "Obj"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
T = TypeVar("T")
PING_TIMEOUT_SECONDS = 5  # a hung API server must not hold the probe for good


class Cluster:
    """Create-or-adopt, delete-if-present, status patches and reads."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def create_job(self, job: Obj) -> Obj:
        """The Job as created, or as it already was (a restart, a retried call: adopted)."""
        meta = job["metadata"]
        body: Any = job  # the client accepts the plain manifest
        what = f"create Job {meta['namespace']}/{meta['name']}"
        created = _create(what, lambda: self.batch.create_namespaced_job(meta["namespace"], body))
        if created is None:
            created = _call(
                what, lambda: self.batch.read_namespaced_job(meta["name"], meta["namespace"])
            )
        return dict(self.api.sanitize_for_serialization(created))

    def patch_job(self, namespace: str, name: str, patch: Obj) -> Obj | None:
        """The Job as patched, or None when it is gone."""
        patched = _ignore_missing(
            f"patch Job {namespace}/{name}",
            lambda: self.batch.patch_namespaced_job(name, namespace, patch),
        )
        return None if patched is None else dict(self.api.sanitize_for_serialization(patched))

    def delete_job(self, namespace: str, name: str) -> None:
        _ignore_missing(
            f"delete Job {namespace}/{name}",
            lambda: self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background"
            ),
        )

    def create_approval(self, approval: Obj) -> None:
        meta = approval["metadata"]
        _create(
            f"create ApprovalRequest {meta['namespace']}/{meta['name']}",
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], "approvalrequests", approval
            ),
        )

    def delete_approval(self, namespace: str, name: str) -> None:
        _ignore_missing(
            f"delete ApprovalRequest {namespace}/{name}",
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, "approvalrequests", name
            ),
        )

    def patch_status(self, plural: str, namespace: str, name: str, status: Obj) -> None:
        """Merge-patch the status subresource (no resourceVersion: the operator owns status)."""
        _ignore_missing(
            f"patch {plural}/{name} status in {namespace}",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status}
            ),
        )

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, or None when the Secret or the key is missing."""
        secret = _ignore_missing(
            f"read Secret {namespace}/{name}",
            lambda: self.core.read_namespaced_secret(name, namespace),
        )
        if secret is None:
            return None
        data = (secret.data or {}).get(key)
        return base64.b64decode(data).decode() if data is not None else None

    def step_log_tail(self, namespace: str, pod: str) -> str | None:
        """The last line of a step pod's log, where the runtime writes its full result.

        Bounded: one byte over the largest result (and its newline) is enough to tell that
        the line is too long. None when the pod or its log is gone.
        """
        try:
            # Raw bytes: the client would parse a log line that is JSON into a Python repr.
            response: Any = _call(
                f"read the log of pod {namespace}/{pod}",
                lambda: self.core.read_namespaced_pod_log(
                    pod,
                    namespace,
                    container=CONTAINER,
                    tail_lines=1,
                    limit_bytes=MAX_RESULT_BYTES + 2,
                    _preload_content=False,
                ),
            )
        except Permanent as error:
            cause = error.__cause__
            if isinstance(cause, ApiException) and cause.status in (400, 404):
                return None  # the pod, or its container's log, is gone
            raise
        return str(response.data.decode(errors="replace"))

    def ping(self) -> None:
        """Raise unless the API server is ready now: /readyz (anyone may read it), which a
        restarting server answers only once it serves every resource again; its /version
        answers earlier, and a pass roused then would fail again."""
        _call("read the API server's readiness", self._ready)

    def _ready(self) -> None:
        method, url, headers, body, post = self.api.param_serialize(
            method="GET", resource_path="/readyz", auth_settings=["BearerToken"]
        )
        response = self.api.call_api(
            method, url, headers, body, post, _request_timeout=PING_TIMEOUT_SECONDS
        )
        if response.status != 200:
            raise ApiException(status=response.status, reason="not ready")

    def approvals_of_task(self, namespace: str, task_uid: str) -> list[Obj]:
        listing: Any = _call(
            f"list ApprovalRequests of task {task_uid} in {namespace}",
            lambda: self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "approvalrequests",
                label_selector=f"agentoperator.io/task-uid={task_uid}",
            ),
        )
        return list(listing["items"])


def _call(what: str, call: Callable[[], T]) -> T:
    """Make one request; a failure comes out as Transient or Permanent, naming `what`."""
    try:
        return call()
    except ApiException as error:
        status = error.status or 0
        message = _server_message(error)
        detail = f"{what}: {status} {message}"
        # 401: credentials being rotated; a quota refusal (403) passes when usage falls.
        quota = status == 403 and "exceeded quota" in message
        if status >= 500 or status in (0, 401, 429) or quota:
            raise Transient(detail) from error
        raise Permanent(Reason.request_refused, f"the API server refused to {detail}") from error
    except urllib3.exceptions.HTTPError as error:  # refused, reset, timed out
        raise Transient(f"{what}: {error}") from error
    except ValidationError as error:  # the client checks a body before sending it
        raise Permanent(
            Reason.request_refused, f"the kubernetes client refused to {what}: {_problems(error)}"
        ) from error


def _problems(error: ValidationError) -> str:
    """Each invalid field of a request body as `path: problem` (the path into the object,
    without the client's argument position)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'][1:])}: {problem['msg']}"
        for problem in error.errors()[:3]
    )


def _server_message(error: ApiException) -> str:
    """The Status message the API server sent, else the HTTP reason."""
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or error.reason or "")


def _create(what: str, call: Callable[[], T]) -> T | None:
    """The created object, or None when it exists already (409: adopt it)."""
    try:
        return _call(what, call)
    except Permanent as error:
        cause = error.__cause__
        if isinstance(cause, ApiException) and cause.status == 409:
            return None
        raise


def _ignore_missing(what: str, call: Callable[[], T]) -> T | None:
    try:
        return _call(what, call)
    except Permanent as error:
        cause = error.__cause__
        if isinstance(cause, ApiException) and cause.status == 404:
            return None
        raise
