"""Operator settings, from the environment (the Helm chart's ConfigMap sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, Field

from agent_operator.core.notify import DEFAULT_CHANNEL, NotifyPolicy, make_policy
from agent_operator.store import DEFAULT_RETENTION_DAYS


class LogFormat(StrEnum):
    plain = "plain"
    json = "json"


class OperatorSettings(BaseModel):
    """What `python -m agent_operator` / `kopf run` reads at start-up."""

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty: the whole cluster."
    )
    dsn: str | None = Field(default=None, description="Checkpoint store; None: SQLite.")
    metrics_port: int = Field(default=8080, description="Prometheus metrics; 0: off.")
    health_port: int = Field(default=8081, description="Liveness endpoint /healthz; 0: off.")
    log_format: LogFormat = LogFormat.plain
    peering: bool = Field(default=False, description="Kopf peering, for more than one replica.")
    peering_lifetime_seconds: int = Field(
        default=10,
        ge=2,
        description="How long a silent peer counts as alive: a standby takes over at most "
        "this long after the working replica died (Kopf's default is 60 s).",
    )
    store_retry_seconds: float = Field(
        default=5.0, description="Retry delay while the store is down."
    )
    api_retry_seconds: float = Field(
        default=2.0, description="Retry delay after a failed Kubernetes API call."
    )
    idle_requeue_seconds: float = Field(default=60.0, description="Longest wait between looks.")
    retention_days: float = Field(
        default=DEFAULT_RETENTION_DAYS,
        ge=0,
        description="Days the store keeps the history of a task after it ended; 0: forever.",
    )
    workers: int = Field(
        default=16,
        ge=1,
        description="Threads for task passes (Kubernetes, store and LLM calls); a waiting "
        "task holds none, and passes beyond this number wait their turn.",
    )

    notify_dir: str | None = Field(
        default=None,
        description="Directory of the default notification channel: files `urls` and "
        "`escalationUrls` with Apprise URLs (the chart mounts its Secret there); None: no "
        "defaults (pools with spec.notifications are still told).",
    )
    notify_remind_seconds: int = Field(default=0, ge=0, description="Default reminders; 0: none.")
    notify_escalate_seconds: int = Field(
        default=0, ge=0, description="Default escalation delay; 0: none."
    )
    notify_task_finished: bool = Field(default=False, description="Default: tell task ends.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        return cls(
            namespaces=[n for n in env.get("AGENT_OPERATOR_NAMESPACES", "").split(",") if n],
            dsn=env.get("AGENT_OPERATOR_DSN") or None,
            metrics_port=int(env.get("AGENT_OPERATOR_METRICS_PORT", "8080")),
            health_port=int(env.get("AGENT_OPERATOR_HEALTH_PORT", "8081")),
            log_format=LogFormat(env.get("AGENT_OPERATOR_LOG_FORMAT", "plain")),
            peering=_flag(env.get("AGENT_OPERATOR_PEERING", "false")),
            peering_lifetime_seconds=int(env.get("AGENT_OPERATOR_PEERING_LIFETIME_SECONDS", "10")),
            workers=int(env.get("AGENT_OPERATOR_WORKERS", "16")),
            retention_days=float(
                env.get("AGENT_OPERATOR_RETENTION_DAYS", str(DEFAULT_RETENTION_DAYS))
            ),
            notify_dir=env.get("AGENT_OPERATOR_NOTIFY_DIR") or None,
            notify_remind_seconds=int(env.get("AGENT_OPERATOR_NOTIFY_REMIND_SECONDS", "0")),
            notify_escalate_seconds=int(env.get("AGENT_OPERATOR_NOTIFY_ESCALATE_SECONDS", "0")),
            notify_task_finished=_flag(env.get("AGENT_OPERATOR_NOTIFY_TASK_FINISHED", "false")),
        )

    def notify_defaults(self) -> NotifyPolicy | None:
        """Where notices of a pool without channels of its own go (None: nowhere)."""
        if self.notify_dir is None:
            return None
        return make_policy(
            DEFAULT_CHANNEL,
            remind_every_seconds=self.notify_remind_seconds,
            escalate_after_seconds=self.notify_escalate_seconds,
            task_finished=self.notify_task_finished,
        )


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")
