"""Why a task or a step is where it is: one documented enum of the CamelCase words in
`status.reason`, a step's `reason`, the Ready and Progressing conditions and the Events.

Alerts, dashboards, `kubectl wait` and the code itself match on these, so each is
spelled once, here (as cert-manager keeps its condition reasons). A step that exited
with a code the runtime did not explain has the reason `ExitCode<N>` (`exit_code`).
"""

from __future__ import annotations

from enum import StrEnum

from agent_contract import TIMED_OUT

__all__ = ["Reason", "exit_code"]


class Reason(StrEnum):
    # --- a task ended -----------------------------------------------------------------
    succeeded = "Succeeded"  # every step succeeded or was skipped
    cancelled = "Cancelled"  # the AgentTask was deleted
    step_failed = "StepFailed"  # a step failed after its retries
    approval_rejected = "ApprovalRejected"  # a person rejected a step (onReject: fail)
    approval_expired = "ApprovalExpired"  # nobody decided before the request's expiresAt
    deadline_exceeded = "DeadlineExceeded"  # spec.limits.activeDeadlineSeconds passed
    budget_exceeded = "BudgetExceeded"  # spec.limits.maxTokens or maxCostUSD spent
    invalid_plan = "InvalidPlan"  # the steps, or the LLM's plan, break a rule (named)
    planning_failed = "PlanningFailed"  # the planner gave no plan and no reason
    no_model = "NoModel"  # a goal, but the pool has no spec.model
    missing_api_key = "MissingAPIKey"  # the pool's apiKeySecretRef names no such Secret/key
    llm_error = "LLMError"  # the model's endpoint refused or failed
    llm_timeout = "LLMTimeout"  # the model's endpoint did not answer in time
    pool_not_found = "PoolNotFound"  # spec.poolRef names no AgentPool
    invalid_pool_template = "InvalidPoolTemplate"  # the pool's template makes no safe pod
    request_refused = "RequestRefused"  # the API server refused a request for good (4xx)
    invalid_spec = "InvalidSpec"  # the object is not an AgentTask the operator can read
    # --- an AgentPool -------------------------------------------------------------------
    rules_valid = "RulesValid"  # every safety rule of the pool compiles
    invalid_rules = "InvalidRules"  # a rule's condition does not compile: its tasks fail
    # --- an MCPServer -------------------------------------------------------------------
    tools_listed = "ToolsListed"  # the server answered tools/list
    server_unreachable = "ServerUnreachable"  # cannot connect, refused (HTTP 4xx/5xx), broke
    missing_secret = "MissingSecret"  # a header's secretKeyRef names no such Secret or key
    mcp_server_not_found = "MCPServerNotFound"  # a step's tool names a server that is gone
    invocation_too_large = "InvocationTooLarge"  # a step's invocation outgrows its pod's env
    # --- a task goes on -----------------------------------------------------------------
    steps_running = "StepsRunning"
    waiting_for_approval = "WaitingForApproval"
    suspended = "Suspended"  # spec.suspend: running steps finish, nothing new starts
    store_unavailable = "StoreUnavailable"  # held until the checkpoint store is back
    # --- a step -------------------------------------------------------------------------
    starting = "Starting"
    waiting_for_dependencies = "WaitingForDependencies"
    waiting_for_capacity = "WaitingForCapacity"  # queued for a slot of its pool
    outside_change_window = "OutsideChangeWindow"  # critical: waits for criticalWindow
    condition_false = "ConditionFalse"  # its `when` was false: skipped
    backing_off = "BackingOff"  # failed; the next attempt starts after the backoff
    when_error = "WhenError"  # its `when` could not be evaluated
    missing_output = "MissingOutput"  # a ${steps...} reference names no such output
    params_too_large = "ParamsTooLarge"  # substituted params over the step's limit
    approval_stale = "ApprovalStale"  # approved for other params than it would start with
    denied_by_rule = "DeniedByRule"  # a Deny safety rule holds for its substituted params
    tool_not_granted = "ToolNotGranted"  # its filled-in params let it call a tool not granted
    timed_out = TIMED_OUT  # ran into its timeout (the runtime's word, or the operator's)
    lost = "Lost"  # started, then its Job or process vanished with no outcome recorded
    unrecorded = "Unrecorded"  # its Job was made, but never recorded nor let run: removed
    evicted = "Evicted"  # its pod was evicted, preempted or drained
    pod_deleted = "PodDeleted"  # its pod was deleted while it ran
    image_unavailable = "ImageUnavailable"  # its pod's image cannot be found or pulled
    task_ended = "TaskEnded"  # stopped because the task ended (deleted, limits)
    task_failed = "TaskFailed"  # stopped because the task failed for a shell's reason
    failed = "Failed"  # failed, with no more telling cause


def exit_code(code: object) -> str:
    """The reason of a step that exited with `code` and said nothing more."""
    return f"ExitCode{code}"
