"""What a step attempt is told: the same StepInvocation for a Job and a local process."""

from __future__ import annotations

from collections.abc import Sequence

from agent_contract import API_KEY_ENV, ModelSettings, StepInvocation
from agent_contract.mcp import MCPEndpoint
from agent_operator.api import AgentPoolSpec, AgentTask
from agent_operator.core.decide import StartStep


def step_invocation(
    task: AgentTask,
    pool: AgentPoolSpec,
    start: StartStep,
    mcp_tools: Sequence[MCPEndpoint] = (),
) -> StepInvocation:
    """The invocation for one attempt; secrets stay out (the key comes through API_KEY_ENV,
    an MCP server's headers from files). `mcp_tools`: how to reach the MCP tools the step
    calls (`core.mcp.step_endpoints`)."""
    meta, model = task.metadata, pool.model
    return StepInvocation(
        task=meta.name,
        namespace=meta.namespace,
        task_uid=meta.uid or meta.name,
        step_id=start.step_id,
        attempt=start.attempt,
        tool=start.tool,
        params=start.params,
        timeout_seconds=start.timeout_seconds,
        requires_approval=start.requires_approval,
        approved_by=start.approved_by,
        allowed_tools=pool.tools,
        allowed_hosts=pool.allowed_hosts,
        model=(
            ModelSettings(
                base_url=model.base_url,
                model=model.model,
                api_key_env=API_KEY_ENV,
                temperature=model.temperature,
                max_tokens=model.max_tokens,
                timeout_seconds=model.timeout_seconds,
                prices=model.prices,
            )
            if model
            else None
        ),
        mcp_tools=list(mcp_tools),
    )
