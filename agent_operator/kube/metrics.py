"""Prometheus metrics: what an operator of the operator watches.

Gauges are set from state (the phases of the tasks known, the ApprovalRequests seen
pending), never moved up and down by actions, so a restart or a conflict cannot skew
them; counters count once per event recorded for the first time.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASKS = Gauge("agent_operator_tasks", "AgentTasks by phase", ["phase"])
STEP_SECONDS = Histogram(
    "agent_operator_step_duration_seconds",
    "Time a step attempt ran, from start to finish",
    ["tool", "outcome"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
HANDOFF_SECONDS = Histogram(
    "agent_operator_step_handoff_seconds",
    "From a step's last dependency finishing to the step's Job being created",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
APPROVALS_PENDING = Gauge("agent_operator_approvals_pending", "ApprovalRequests awaiting a person")
APPROVAL_SECONDS = Histogram(
    "agent_operator_approval_decision_seconds",
    "From an ApprovalRequest's creation to its decision",
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 14400, 86400),
)
RETRIES = Counter("agent_operator_step_retries_total", "Step attempts that will be retried")
LLM_TOKENS = Counter("agent_operator_llm_tokens_total", "LLM tokens spent (planning and steps)")
LLM_COST = Counter("agent_operator_llm_cost_usd_total", "LLM cost in US dollars")
API_ERRORS = Counter(
    "agent_operator_api_errors_total",
    "Task passes that failed and are made again after a backoff, by cause "
    "(kubernetes, store, unexpected)",
    ["operation"],
)
NOTIFICATIONS = Counter(
    "agent_operator_notifications_total",
    "Notice delivery attempts, by kind (ApprovalRequested, ApprovalReminder, ...) and "
    "outcome (delivered, failed)",
    ["kind", "outcome"],
)
