"""The resources, API group `agentoperator.io`, version `v1alpha1`.

These pydantic models are the single source of truth: the CRDs in `crds/` are
generated from them (`make crds`), the operator and the embedded runner parse
with them, and their field descriptions are what `kubectl explain` shows.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from agent_contract import Prices, RiskLevel, Usage
from agent_contract.mcp import MCPTransport

GROUP = "agentoperator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

STEP_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Durations the core adds to a time: bounded, so that no sum leaves the calendar.
MAX_DURATION_SECONDS = 366 * 24 * 3600
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

FreeForm = Annotated[
    dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
]

# Conditions are a map keyed by type, as the Kubernetes API conventions ask: one entry per type.
CONDITIONS_LIST: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=False
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- shared -----------------------------------------------------------------


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(ApiModel):
    """A condition as the Kubernetes API conventions define it."""

    type: str = Field(description="Kind of condition: Planned, Approved, Progressing or Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word a program can match on.")
    message: str = Field(default="", description="What happened, for a person.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation this condition was set from."
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: str = Field(description="Name of the object in the same namespace.")


class SecretKeyRef(ApiModel):
    """One key of a Secret in the same namespace."""

    name: str = Field(description="Name of a Secret in the same namespace.")
    key: str = Field(description="Key within the Secret.")


class RuleEffect(StrEnum):
    deny = "Deny"
    require_approval = "RequireApproval"
    raise_risk = "RaiseRisk"


class SafetyRule(ApiModel):
    """A safety rule: a CEL condition over a step, and what follows when it holds."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.effect != 'RaiseRisk' || has(self.risk)",
                    "message": "a RaiseRisk rule names the risk it raises to",
                    "fieldPath": ".risk",
                }
            ]
        }
    )

    name: str = Field(
        pattern=STEP_ID_PATTERN, max_length=63, description="Unique rule name (DNS label)."
    )
    condition: str = Field(
        min_length=1,
        max_length=4096,
        description="CEL over the step: `tool` (its name), `params` (after substitution when "
        "it starts), `namespace` and `host` (its target, empty when it has none), e.g. "
        "`tool == 'sql_execute' && params.statement.matches('(?i)\\\\bdrop\\\\b')`. "
        "A condition that cannot be evaluated for a step holds.",
    )
    effect: RuleEffect = Field(
        description="Deny: refuse the step; RequireApproval: a person approves it first; "
        "RaiseRisk: its risk is at least `risk`."
    )
    risk: RiskLevel | None = Field(default=None, description="RaiseRisk: the level raised to.")
    message: str | None = Field(
        default=None, max_length=1024, description="Why, for the person reading the plan."
    )

    @model_validator(mode="after")
    def _risk_for_raise(self) -> SafetyRule:
        if self.effect == RuleEffect.raise_risk and self.risk is None:
            raise ValueError("a RaiseRisk rule names the risk it raises to")
        return self


# A map list keyed by name: the API server refuses two entries of one name.
BY_NAME: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
}


class RuleMatch(ApiModel):
    """A safety rule that held for a step."""

    name: str = Field(description="The rule's name.")
    source: str = Field(description="pool (its spec.rules) or task (spec.safety.rules).")
    effect: RuleEffect = Field(description="What it does.")
    risk: RiskLevel | None = Field(default=None, description="RaiseRisk: the level raised to.")
    message: str | None = Field(default=None, description="The rule's message.")


class RiskAssessment(ApiModel):
    """The safety policy's verdict on one step."""

    level: RiskLevel = Field(description="Risk level: safe, low, medium, high or critical.")
    requires_approval: bool = Field(description="Whether a person must approve the step.")
    risks: list[str] = Field(default_factory=list, description="What could go wrong.")
    mitigations: list[str] = Field(default_factory=list, description="What limits the harm.")
    rules: list[RuleMatch] = Field(
        default_factory=list, description="The safety rules that held for the step."
    )


# --- AgentTask --------------------------------------------------------------


class SafetyLevel(StrEnum):
    strict = "strict"
    moderate = "moderate"
    permissive = "permissive"


class OnReject(StrEnum):
    skip = "skip"
    fail = "fail"


class Weekday(StrEnum):
    mon = "Mon"
    tue = "Tue"
    wed = "Wed"
    thu = "Thu"
    fri = "Fri"
    sat = "Sat"
    sun = "Sun"


class TimeWindow(ApiModel):
    """A recurring window (in UTC) in which critical steps may start."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.start != self.end",
                    "message": "a time window's start and end must differ",
                },
            ]
        }
    )

    start: str = Field(
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$", max_length=5, description="Opening time, HH:MM UTC."
    )
    end: str = Field(
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        max_length=5,
        description="Closing time, HH:MM UTC; before start: the window spans midnight.",
    )
    days: list[Weekday] = Field(
        default_factory=lambda: list(Weekday),
        min_length=1,
        description="Weekdays the window opens on (at least one).",
    )


class Step(ApiModel):
    """One step of a plan: a tool called with parameters."""

    id: str = Field(
        pattern=STEP_ID_PATTERN,
        max_length=40,
        description="Unique step name (DNS label); outputs are referenced by it.",
    )
    tool: str = Field(min_length=1, description="Name of a tool the pool grants.")
    params: FreeForm = Field(
        default_factory=dict,
        description="Tool parameters; strings may use ${steps.<id>.outputs.<key>} "
        "and ${inputs.<key>}.",
    )
    depends_on: list[str] | None = Field(
        default=None,
        description="Steps that must finish first. Omitted: the previous step. Empty: none.",
    )
    when: str | None = Field(
        default=None,
        description="CEL condition on earlier results, e.g. `steps.check.outputs.count > 0`; "
        "false skips the step.",
    )
    retries: int = Field(default=0, ge=0, le=10, description="Extra attempts after a failure.")
    timeout_seconds: int | None = Field(
        default=None, ge=1, le=86400, description="Per-attempt limit; default: the tool's."
    )
    rationale: str | None = Field(default=None, description="Why this step is in the plan.")


class Safety(ApiModel):
    """Which steps need a person's approval, and what a rejection does."""

    level: SafetyLevel = Field(
        default=SafetyLevel.moderate,
        description="strict: approve medium risk and above; moderate: high and above; "
        "permissive: critical only.",
    )
    require_approval_for: list[str] = Field(
        default_factory=list,
        description="Tool names, or risk levels (that level and above), that always need approval.",
    )
    on_reject: OnReject = Field(
        default=OnReject.fail, description="A rejected step: skip it, or fail the task."
    )
    protected_namespaces: list[str] = Field(
        default_factory=lambda: ["kube-system", "kube-public", "kube-node-lease"],
        description="Namespaces that steps able to change things may touch only with approval.",
    )
    protected_targets: list[str] = Field(
        default_factory=list,
        description="Other targets (hosts, tables, resource names) treated the same way.",
    )
    critical_window: TimeWindow | None = Field(
        default=None, description="If set, critical steps start only inside this window."
    )
    approval_timeout_seconds: int = Field(
        default=3600,
        ge=1,
        le=MAX_DURATION_SECONDS,
        description="How long an approval request stays open (at most a year).",
    )
    rules: list[SafetyRule] = Field(
        default_factory=list,
        max_length=64,
        description="Rules for this task's steps, on top of its pool's (which a task cannot "
        "loosen: every effect only tightens).",
        json_schema_extra=BY_NAME,
    )


class Limits(ApiModel):
    """Budgets; exceeding one fails the task with a reason."""

    max_steps: int = Field(default=50, ge=1, le=500, description="Most steps a plan may have.")
    max_parallel: int | None = Field(
        default=None, ge=1, description="Most steps running at once (the pool also limits)."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="LLM token budget.")
    max_cost_usd: float | None = Field(
        default=None, alias="maxCostUSD", ge=0, description="LLM cost budget in US dollars."
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DURATION_SECONDS,
        description="Wall-clock limit for the whole task (at most a year).",
    )
    backoff_seconds: float = Field(
        default=10, ge=0, le=3600, description="First retry delay; doubles each attempt (max 10m)."
    )


class AgentTaskSpec(ApiModel):
    """What to do: a goal for the planner, or explicit steps."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.goal) || (has(self.steps) && size(self.steps) > 0)",
                    "message": "spec needs a goal or at least one step",
                },
                {
                    # Equality of a map list ignores order in Kubernetes; the ids compare it.
                    "rule": "has(self.steps) == has(oldSelf.steps) && (!has(self.steps) "
                    "|| (self.steps == oldSelf.steps "
                    "&& self.steps.map(s, s.id) == oldSelf.steps.map(s, s.id)))",
                    "message": "the plan cannot be changed once the task is created; "
                    "create a new AgentTask",
                    "fieldPath": ".steps",  # the error names spec.steps, not spec
                },
            ]
        }
    )

    goal: str | None = Field(default=None, description="Plain-language goal, planned by the LLM.")
    steps: list[Step] | None = Field(
        default=None,
        max_length=500,
        description="Explicit plan; with a goal too, the steps are the plan and the goal context. "
        "Step ids are unique. Fixed once the task is created.",
        # A map list keyed by id: the API server refuses duplicate ids itself, at no CEL cost
        # (a CEL uniqueness check is quadratic and exceeds the per-call budget near 500 steps).
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
    )
    pool_ref: LocalObjectReference = Field(
        default_factory=lambda: LocalObjectReference(name="default"),
        description="The AgentPool that supplies image, model, tools and capacity.",
    )
    safety: Safety = Field(default_factory=Safety, description="Approval policy.")
    limits: Limits = Field(default_factory=Limits, description="Budgets and deadlines.")
    inputs: FreeForm = Field(
        default_factory=dict, description="Free-form values for the planner and the steps."
    )
    suspend: bool = Field(default=False, description="Start nothing new while true.")


class TaskPhase(StrEnum):
    pending = "Pending"
    planning = "Planning"
    waiting_approval = "WaitingApproval"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"
    cancelled = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskPhase.succeeded, TaskPhase.failed, TaskPhase.cancelled)


class StepPhase(StrEnum):
    pending = "Pending"
    waiting_approval = "WaitingApproval"
    queued = "Queued"
    running = "Running"
    retrying = "Retrying"
    succeeded = "Succeeded"
    failed = "Failed"
    skipped = "Skipped"

    @property
    def done(self) -> bool:
        return self in (StepPhase.succeeded, StepPhase.failed, StepPhase.skipped)


class PlannedStep(Step):
    """A validated step: dependencies made explicit and the safety verdict attached."""

    depends_on: list[str] = Field(default_factory=list, description="Steps that must finish first.")
    timeout_seconds: int = Field(ge=1, description="Per-attempt limit in seconds.")
    risk: RiskAssessment = Field(description="The safety policy's verdict.")


class StepStatus(ApiModel):
    """Where one step stands; the full record is in the checkpoint store."""

    id: str = Field(description="The step's id.")
    phase: StepPhase = Field(description="Where the step stands.")
    attempt: int = Field(default=0, description="Attempts started so far.")
    job_name: str | None = Field(default=None, description="The Job running the current attempt.")
    started_at: datetime | None = Field(default=None, description="When the first attempt started.")
    finished_at: datetime | None = Field(default=None, description="When the step finished.")
    reason: str | None = Field(default=None, description="One CamelCase word: why the phase.")
    message: str | None = Field(default=None, description="Short result or error summary.")


class CheckpointRef(ApiModel):
    """The last checkpoint written to the store; a restarted operator resumes from it."""

    id: int = Field(description="Increases with every checkpoint.")
    step: str | None = Field(default=None, description="The step that completed last.")
    time: datetime = Field(description="When the checkpoint was written.")


class AgentTaskStatus(ApiModel):
    """What the operator observed; written by the operator only."""

    model_config = ConfigDict(extra="ignore")

    phase: TaskPhase = Field(default=TaskPhase.pending, description="Where the task stands.")
    reason: str | None = Field(default=None, description="One CamelCase word: why the phase.")
    message: str | None = Field(default=None, description="Why the phase, for a person.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation this status was computed from."
    )
    current_step: str | None = Field(default=None, description="Running or waiting steps.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Planned, Approved, Progressing and Ready.",
        json_schema_extra=CONDITIONS_LIST,
    )
    plan: list[PlannedStep] | None = Field(
        default=None, description="The validated plan, with each step's risk and approval need."
    )
    steps: list[StepStatus] = Field(default_factory=list, description="Progress of each step.")
    checkpoint: CheckpointRef | None = Field(default=None, description="The last checkpoint.")
    usage: Usage = Field(default_factory=Usage, description="Tokens and cost, planning included.")
    planning_usage: Usage | None = Field(default=None, description="What planning spent.")
    outputs: FreeForm = Field(default_factory=dict, description="Outputs of the final steps.")
    start_time: datetime | None = Field(default=None, description="When the task started.")
    completion_time: datetime | None = Field(default=None, description="When the task finished.")


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", alias_generator=to_camel)

    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    namespace: str = "default"
    uid: str | None = None
    generation: int = 1
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class AgentTask(ApiModel):
    """A unit of agent work: planned, checked against policy, run step by step as Jobs."""

    api_version: Literal["agentoperator.io/v1alpha1"] = "agentoperator.io/v1alpha1"
    kind: Literal["AgentTask"] = "AgentTask"
    metadata: ObjectMeta
    spec: AgentTaskSpec
    status: AgentTaskStatus = Field(default_factory=AgentTaskStatus)


# --- ApprovalRequest --------------------------------------------------------


class ApprovalDecision(StrEnum):
    approved = "Approved"
    rejected = "Rejected"


class ApprovalPhase(StrEnum):
    pending = "Pending"
    approved = "Approved"
    rejected = "Rejected"
    expired = "Expired"


class TaskRef(ApiModel):
    """The AgentTask a request belongs to."""

    name: str = Field(description="Name of the AgentTask in the same namespace.")
    uid: str | None = Field(
        default=None, description="Its uid, so a recreated task is not confused."
    )


class ApprovalRequestSpec(ApiModel):
    """A step waiting for a person. The operator fills all but decision, reason and decidedBy."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(oldSelf.decision) || (has(self.decision) "
                    "&& self.decision == oldSelf.decision)",
                    "message": "a decision cannot be changed once made",
                },
                {
                    "rule": "self.taskRef == oldSelf.taskRef && self.stepId == oldSelf.stepId "
                    "&& self.tool == oldSelf.tool && self.risk == oldSelf.risk "
                    "&& self.expiresAt == oldSelf.expiresAt "
                    "&& has(self.params) == has(oldSelf.params) "
                    "&& (!has(self.params) || self.params == oldSelf.params) "
                    "&& has(self.paramsDigest) == has(oldSelf.paramsDigest) "
                    "&& (!has(self.paramsDigest) || self.paramsDigest == oldSelf.paramsDigest)",
                    "message": "only spec.decision, spec.reason and spec.decidedBy may be set; "
                    "what is being approved cannot change",
                },
                {
                    "rule": "!has(self.decidedBy) || has(self.decision)",
                    "message": "spec.decidedBy is set together with spec.decision",
                },
                {
                    "rule": "!has(oldSelf.decidedBy) || (has(self.decidedBy) "
                    "&& self.decidedBy == oldSelf.decidedBy)",
                    "message": "who decided cannot be changed",
                },
            ]
        }
    )

    task_ref: TaskRef = Field(description="The AgentTask the step belongs to.")
    step_id: str = Field(description="The step waiting for approval.")
    tool: str = Field(description="The tool the step calls.")
    params: FreeForm = Field(default_factory=dict, description="Parameters, secrets redacted.")
    params_digest: str | None = Field(
        default=None,
        max_length=64,
        description="SHA-256 of the params before redaction: the decision holds for "
        "those params only.",
    )
    risk: RiskAssessment = Field(description="Why approval is needed.")
    expires_at: datetime = Field(description="After this time the step fails (ApprovalExpired).")
    decision: ApprovalDecision | None = Field(
        default=None, description="Set by a person: Approved or Rejected."
    )
    reason: str | None = Field(default=None, description="Why, in the approver's words.")
    decided_by: str | None = Field(
        default=None,
        max_length=253,
        description="Who set the decision, as the API server authenticated them: the Helm "
        "chart's admission policies fill it in from the request and refuse any other name.",
    )


class ApprovalRequestStatus(ApiModel):
    """The outcome of the request."""

    model_config = ConfigDict(extra="ignore")

    phase: ApprovalPhase = Field(default=ApprovalPhase.pending, description="Where it stands.")
    decided_by: str | None = Field(default=None, description="Recorded by the API server.")
    decided_at: datetime | None = Field(default=None, description="When the decision was made.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Conditions.", json_schema_extra=CONDITIONS_LIST
    )


class ApprovalRequest(ApiModel):
    """A request for a person to approve or reject one step."""

    api_version: Literal["agentoperator.io/v1alpha1"] = "agentoperator.io/v1alpha1"
    kind: Literal["ApprovalRequest"] = "ApprovalRequest"
    metadata: ObjectMeta
    spec: ApprovalRequestSpec
    status: ApprovalRequestStatus = Field(default_factory=ApprovalRequestStatus)


# --- AgentPool --------------------------------------------------------------


class PoolModel(ApiModel):
    """The OpenAI-compatible endpoint agents of this pool use."""

    base_url: str | None = Field(
        default=None, alias="baseURL", description="API base URL; default: OpenAI's."
    )
    model: str = Field(default="gpt-4o-mini", description="Model name.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key."
    )
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int | None = Field(default=None, ge=1, description="Completion token cap.")
    timeout_seconds: float = Field(default=60, gt=0, description="Per-request timeout.")
    prices: Prices | None = Field(
        default=None,
        description=(
            "What the model's tokens cost, for spec.limits.maxCostUSD; omitted: the built-in "
            "prices of OpenAI's models, and 0 for any other model."
        ),
    )


class JobTemplate(ApiModel):
    """The parts of the step Job's pod the pool decides."""

    image: str = Field(default="agent-runtime:latest", description="The agent runtime image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="When the kubelet pulls the image."
    )
    service_account_name: str | None = Field(
        default=None, description="The service account step pods run as."
    )
    resources: FreeForm | None = Field(
        default=None, description="Container resources (requests, limits), as in a Pod."
    )
    env: list[FreeForm] | None = Field(default=None, description="Container env, as in a Pod.")
    env_from: list[FreeForm] | None = Field(
        default=None, description="Container envFrom, as in a Pod."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels step pods must match."
    )
    tolerations: list[FreeForm] | None = Field(default=None, description="Pod tolerations.")
    security_context: FreeForm | None = Field(
        default=None, description="Container securityContext, as in a Pod."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=3600, ge=0, description="Finished Jobs are deleted after this many seconds."
    )


class Notifications(ApiModel):
    """Where the pool's approvers are told that a step waits for them, and how often
    they are reminded; the channels are Apprise URLs (Slack, Teams, email, Matrix, JSON
    webhooks, ...) kept in a Secret, since they carry tokens."""

    secret_name: str = Field(
        min_length=1,
        max_length=253,
        description="Secret in the pool's namespace: key `urls` holds the Apprise URLs "
        "(one or more, separated by spaces, commas or lines) every notice goes to; key "
        "`escalationUrls` those an escalation goes to.",
    )
    remind_every_seconds: int = Field(
        default=0, ge=0, le=604800, description="Remind while a request waits; 0: never."
    )
    escalate_after_seconds: int = Field(
        default=0,
        ge=0,
        le=604800,
        description="Tell the escalation URLs once a request has waited this long; 0: never.",
    )
    task_finished: bool = Field(
        default=False, description="Also tell when a task of the pool succeeds or fails."
    )


class AgentPoolSpec(ApiModel):
    """Capacity, Job template, model and tools of the pool."""

    replicas: int = Field(default=1, ge=0, description="Most step Jobs of this pool at once.")
    template: JobTemplate = Field(default_factory=JobTemplate, description="Step Job template.")
    model: PoolModel | None = Field(
        default=None, description="LLM settings for planning and tools."
    )
    tools: list[str] | None = Field(
        default=None, description="Tools agents of this pool may use; omitted: all registered."
    )
    capabilities: list[str] | None = Field(
        default=None,
        description="Capabilities granted; omitted: all. A tool needing more is refused.",
    )
    allowed_hosts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description=(
            "Hosts that network tools (http_request) may reach: host, host:port or *.domain. "
            "Omitted or empty: none, and plans that use such a tool are refused."
        ),
    )
    rules: list[SafetyRule] = Field(
        default_factory=list,
        max_length=64,
        description="Safety rules for every step of the pool's tasks.",
        json_schema_extra=BY_NAME,
    )
    notifications: Notifications | None = Field(
        default=None,
        description="Who is told about the pool's approval requests (and, opt-in, its "
        "tasks' ends); omitted: the operator's defaults (the chart's notifications values).",
    )


class AgentPoolStatus(ApiModel):
    """Capacity in use, as the operator last saw it."""

    model_config = ConfigDict(extra="ignore")

    replicas: int = Field(default=0, description="Step Jobs of this pool now running (scale).")
    running: int = Field(default=0, description="Steps running.")
    queued: int = Field(default=0, description="Steps waiting for capacity.")
    selector: str | None = Field(
        default=None, description="Label selector of the pool's step pods (scale)."
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation this status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Conditions.", json_schema_extra=CONDITIONS_LIST
    )


class AgentPool(ApiModel):
    """Capacity, Job template, model and tools for the steps of AgentTasks."""

    api_version: Literal["agentoperator.io/v1alpha1"] = "agentoperator.io/v1alpha1"
    kind: Literal["AgentPool"] = "AgentPool"
    metadata: ObjectMeta
    spec: AgentPoolSpec = Field(default_factory=AgentPoolSpec)
    status: AgentPoolStatus = Field(default_factory=AgentPoolStatus)


# --- MCPServer --------------------------------------------------------------

MCP_TOOL_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"  # the MCP specification's tool names
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~\-]+$"  # an HTTP token (RFC 9110)


class MCPHeader(ApiModel):
    """A header sent with every request to the server, its value from a Secret."""

    name: str = Field(pattern=HEADER_NAME_PATTERN, max_length=256, description="Header name.")
    secret_key_ref: SecretKeyRef = Field(description="The Secret key holding the value.")
    prefix: str = Field(
        default="", max_length=64, description="Put before the Secret's value (e.g. 'token ')."
    )


class MCPToolOverride(ApiModel):
    """What the operator holds of one tool, whatever the server says of it."""

    name: str = Field(pattern=MCP_TOOL_NAME_PATTERN, description="The tool's name on the server.")
    risk: RiskLevel | None = Field(
        default=None, description="Its risk level, in place of the one its annotations give."
    )
    capabilities: list[str] | None = Field(
        default=None, description="Capabilities it needs; omitted: ['mcp']."
    )
    requires_approval: bool = Field(
        default=False, description="Every call needs a person's approval."
    )


class MCPServerSpec(ApiModel):
    """Where an MCP tool server is and how its tools are held."""

    url: str = Field(
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="The server's endpoint, e.g. http://tools.team.svc:8080/mcp.",
    )
    transport: MCPTransport = Field(
        default=MCPTransport.streamable_http,
        description="StreamableHTTP (the MCP default) or SSE (older servers).",
    )
    headers: list[MCPHeader] = Field(
        default_factory=list,
        max_length=16,
        description="Headers from Secrets.",
        json_schema_extra=BY_NAME,
    )
    bearer_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="A Secret key sent as 'Authorization: Bearer <value>'."
    )
    timeout_seconds: float = Field(
        default=30, gt=0, le=3600, description="Per request, and a tool call's default timeout."
    )
    refresh_seconds: int = Field(
        default=300,
        ge=10,
        le=MAX_DURATION_SECONDS,
        description="How often the tool list is read again (also on tools/list_changed).",
    )
    tools: list[Annotated[str, Field(pattern=MCP_TOOL_NAME_PATTERN)]] | None = Field(
        default=None,
        max_length=256,
        description="Only these of the server's tools are offered; omitted: all of them.",
    )
    overrides: list[MCPToolOverride] = Field(
        default_factory=list,
        max_length=256,
        description="Per-tool risk, capabilities, approval.",
        json_schema_extra=BY_NAME,
    )


class MCPToolHints(ApiModel):
    """The MCP annotations a server gives a tool (hints: a server may say anything)."""

    read_only_hint: bool | None = Field(default=None, description="It changes nothing.")
    destructive_hint: bool | None = Field(default=None, description="It may destroy things.")
    idempotent_hint: bool | None = Field(default=None, description="Calling it again is harmless.")
    open_world_hint: bool | None = Field(default=None, description="It reaches beyond the server.")


class MCPToolStatus(ApiModel):
    """A tool the server listed, as plans see it."""

    name: str = Field(description="The tool's name on the server; plans call '<server>/<name>'.")
    description: str = Field(default="", description="What the server says it does.")
    input_schema: FreeForm = Field(default_factory=dict, description="Its params' JSON schema.")
    hints: MCPToolHints = Field(default_factory=MCPToolHints, description="Its annotations.")
    risk: RiskLevel = Field(description="The risk the policy gives it.")
    why: str = Field(default="", description="Where that risk comes from.")


class MCPServerStatus(ApiModel):
    """The tools last listed, and whether the server answers."""

    model_config = ConfigDict(extra="ignore")

    tools: list[MCPToolStatus] = Field(
        default_factory=list, description="The tools offered.", json_schema_extra=BY_NAME
    )
    tool_count: int = Field(default=0, description="How many tools are offered.")
    last_sync_time: datetime | None = Field(default=None, description="When they were listed.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation this status was made from."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Conditions.", json_schema_extra=CONDITIONS_LIST
    )


class MCPServer(ApiModel):
    """An MCP tool server whose tools pools may grant as '<server>/<tool>'."""

    api_version: Literal["agentoperator.io/v1alpha1"] = "agentoperator.io/v1alpha1"
    kind: Literal["MCPServer"] = "MCPServer"
    metadata: ObjectMeta
    spec: MCPServerSpec
    status: MCPServerStatus = Field(default_factory=MCPServerStatus)
