"""Where a notice's channel leads: the Apprise URLs, read when it is delivered.

`default` is the operator's own channel, a directory the chart mounts its Secret in;
`secret:<namespace>/<name>` a pool's Secret, read through the API (the operator's RBAC
for Secrets applies). Either holds `urls` and, optionally, `escalationUrls`.
"""

from __future__ import annotations

from pathlib import Path

from agent_operator.core.notify import DEFAULT_CHANNEL, ESCALATION_KEY, URLS_KEY
from agent_operator.driver import Permanent, Transient
from agent_operator.kube.cluster import Cluster
from agent_operator.notifier import DeliveryFailed, Resolve

__all__ = ["kube_channels"]


def kube_channels(cluster: Cluster, notify_dir: str | None) -> Resolve:
    def resolve(channel: str, escalation: bool) -> str:
        key = ESCALATION_KEY if escalation else URLS_KEY
        if channel == DEFAULT_CHANNEL:
            if notify_dir is None:
                raise DeliveryFailed(
                    "the operator has no notification channel of its own (chart value "
                    "notifications)"
                )
            try:
                urls = (Path(notify_dir) / key).read_text()
            except OSError:
                raise DeliveryFailed(
                    f"the operator's notification Secret has no key {key!r}"
                ) from None
            where = f"the operator's notification key {key!r}"
        elif channel.startswith("secret:"):
            namespace, _, name = channel.removeprefix("secret:").partition("/")
            try:
                found = cluster.secret_value(namespace, name, key)
            except (Transient, Permanent) as error:
                raise DeliveryFailed(str(error)) from None
            if found is None:
                raise DeliveryFailed(
                    f"Secret {namespace}/{name} (the pool's spec.notifications.secretName) "
                    f"or its key {key!r} does not exist"
                )
            urls, where = found, f"key {key!r} of Secret {namespace}/{name}"
        else:
            raise DeliveryFailed(f"unknown notification channel {channel!r}")
        if not urls.strip():
            raise DeliveryFailed(f"{where} holds no URL")
        return urls

    return resolve
