"""LLM planning: turn a task's goal into a validated plan, or say clearly why not.

The model only proposes. Every answer goes through the same validation as a hand-written
plan (`core.plan.build_plan`), so an LLM-made plan can never use a tool the pool does not
grant or skip the safety policy. An invalid answer is re-asked once with the problems found;
failures come back as a `PlanningResult` with a reason, never as an exception, so the caller
can set a condition on the task.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

import openai
from openai import Omit, omit
from openai.types.chat import ChatCompletionMessageParam
from openai.types.chat.completion_create_params import ResponseFormat
from pydantic import TypeAdapter, ValidationError

from agent_contract import API_KEY_ENV, ToolRegistry, ToolSpec, Usage, cost_usd
from agent_operator.api import AgentPoolSpec, AgentTaskSpec, PoolModel, Step
from agent_operator.core.plan import InvalidPlan, PlanningResult, build_plan, granted_tools
from agent_operator.core.reasons import Reason

log = logging.getLogger(__name__)

_T = TypeVar("_T")


_MESSAGE_LIMIT = 1000  # characters of a failure message; it ends up in a status condition


class PlanReason(StrEnum):
    """Why planning failed; the task's condition carries it."""

    invalid_plan = Reason.invalid_plan
    llm_error = Reason.llm_error
    llm_timeout = Reason.llm_timeout
    missing_api_key = Reason.missing_api_key


class _ResponseFormat(StrEnum):
    json_schema = "json_schema"
    json_object = "json_object"
    none = "none"


def api_key_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The key the embedded runner uses: `OPENAI_API_KEY`, unset or empty meaning none."""
    value = (os.environ if env is None else env).get(API_KEY_ENV, "")
    return value or None


def _without_extensions(schema: Any) -> Any:
    """A JSON schema minus Kubernetes extensions and titles, which models do not need."""
    if isinstance(schema, dict):
        return {
            key: _without_extensions(value)
            for key, value in schema.items()
            if not key.startswith("x-kubernetes-") and key != "title"
        }
    if isinstance(schema, list):
        return [_without_extensions(item) for item in schema]
    return schema


def plan_schema(tools: list[ToolSpec], max_steps: int) -> dict[str, Any]:
    """The JSON schema of an answer, `{"steps": [Step, ...]}`, from the Step model."""
    step = _without_extensions(Step.model_json_schema(by_alias=True))
    step["properties"]["tool"]["enum"] = [tool.name for tool in tools]
    return {
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": step, "minItems": 1, "maxItems": max_steps}
        },
        "required": ["steps"],
        "additionalProperties": False,
    }


def _system_prompt(schema: dict[str, Any], fmt: _ResponseFormat) -> str:
    prompt = (
        "You plan work for an automation agent. Break the user's goal into steps; each step "
        "calls exactly one of the offered tools with parameters valid for that tool's JSON "
        "schema. Use only offered tools. Step ids are short lowercase DNS labels, unique in "
        "the plan. A step runs after the previous one unless `dependsOn` lists the steps it "
        "needs ([] for none). Parameter strings may use ${inputs.<key>} for task inputs and "
        "${steps.<id>.outputs.<key>} for outputs of a step it depends on. `when` is an "
        "optional CEL condition on earlier outputs, e.g. `steps.check.outputs.count > 0`. "
        "Give each step a one-sentence `rationale`."
    )
    if fmt is _ResponseFormat.json_schema:
        return prompt
    return (
        f"{prompt}\nAnswer with one JSON object and nothing else (no prose, no code fence), "
        f"matching this JSON schema:\n{json.dumps(schema)}"
    )


def _request(spec: AgentTaskSpec, tools: list[ToolSpec]) -> str:
    return json.dumps(
        {
            "goal": spec.goal,
            "inputs": spec.inputs,
            "maxSteps": spec.limits.max_steps,
            "tools": [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "params": tool.params_schema,
                    "risk": tool.risk.value,
                }
                for tool in tools
            ],
        },
        indent=1,
    )


_STEPS = TypeAdapter(list[Step])


def _parse_steps(content: str | None) -> list[Step]:
    """The answer's steps, or InvalidPlan naming the step and field at fault."""
    if not content:
        raise InvalidPlan(['the answer was empty; expected a JSON object {"steps": [...]}'])
    text = content.strip()
    if text.startswith("```"):  # a code fence, common without structured output
        text = text.split("\n", 1)[-1].rsplit("```", 1)[0]
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidPlan([f"the answer is not valid JSON: {error}"]) from None
    if not isinstance(answer, dict) or not isinstance(answer.get("steps"), list):
        raise InvalidPlan(['the answer must be a JSON object {"steps": [...]}'])
    raw_steps: list[Any] = answer["steps"]
    try:
        return _STEPS.validate_python(raw_steps)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            index, *field = item["loc"]
            raw = raw_steps[index] if isinstance(index, int) else None
            step_id = raw.get("id") if isinstance(raw, dict) else None
            where = f"step {step_id!r} (steps[{index}])" if step_id else f"steps[{index}]"
            path = ".".join(str(part) for part in field)
            problems.append(f"{where}{'.' + path if path else ''}: {item['msg']}")
        raise InvalidPlan(problems) from None


def _given(value: _T | None) -> _T | Omit:
    """Leave unset settings out of the request, so the server's defaults apply."""
    return omit if value is None else value


class _Planner:
    """One planning conversation: the client, the messages so far and the tokens spent."""

    def __init__(
        self, client: openai.AsyncOpenAI, model: PoolModel, schema: dict[str, Any], request: str
    ) -> None:
        self.client = client
        self.model = model
        self.schema = schema
        self.messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": request}]
        self.formats = list(_ResponseFormat)
        self.usage = Usage()

    def _response_format(self) -> ResponseFormat | Omit:
        fmt = self.formats[0]
        if fmt is _ResponseFormat.json_schema:
            # Not strict: OpenAI's strict mode cannot express free-form `params`.
            return {
                "type": "json_schema",
                "json_schema": {"name": "agent_plan", "schema": self.schema, "strict": False},
            }
        if fmt is _ResponseFormat.json_object:
            return {"type": "json_object"}
        return omit

    async def ask(self) -> str | None:
        """One answer; on a 400 while asking for a response format, retry with a plainer one."""
        while True:
            system: ChatCompletionMessageParam = {
                "role": "system",
                "content": _system_prompt(self.schema, self.formats[0]),
            }
            try:
                completion = await self.client.chat.completions.create(
                    model=self.model.model,
                    messages=[system, *self.messages],
                    response_format=self._response_format(),
                    temperature=_given(self.model.temperature),
                    max_tokens=_given(self.model.max_tokens),
                )
            except openai.BadRequestError:
                if self.formats[0] is _ResponseFormat.none:
                    raise
                log.info("model endpoint refused response format %s", self.formats.pop(0))
                continue
            if completion.usage is not None:
                prompt, done = completion.usage.prompt_tokens, completion.usage.completion_tokens
                cost = cost_usd(self.model.model, prompt, done, self.model.prices)
                self.usage += Usage(tokens=prompt + done, cost_usd=cost)
            if not completion.choices:
                return None
            choice = completion.choices[0]
            content = choice.message.content
            self.messages.append({"role": "assistant", "content": content or ""})
            if choice.message.refusal:
                raise InvalidPlan([f"the model refused: {choice.message.refusal}"])
            if choice.finish_reason == "length":
                raise InvalidPlan(
                    ["the answer was cut off at the completion token limit (spec.model.maxTokens)"]
                )
            return content

    def tell(self, problems: list[str]) -> None:
        """Send the problems back so the re-ask can fix them."""
        listed = "\n".join(f"- {problem}" for problem in problems)
        self.messages.append(
            {
                "role": "user",
                "content": f"That plan was rejected:\n{listed}\n"
                "Answer again with the complete corrected plan.",
            }
        )


def _redact(text: str, api_key: str) -> str:
    return text.replace(api_key, "***")[:_MESSAGE_LIMIT]


async def plan_with_llm(
    spec: AgentTaskSpec,
    pool: AgentPoolSpec,
    registry: ToolRegistry,
    *,
    api_key: str | None,
    model: PoolModel,
) -> PlanningResult:
    """Ask the pool's model for a plan for `spec.goal`, validated like a hand-written one."""
    if not api_key:
        return PlanningResult(
            plan=None,
            usage=Usage(),
            reason=PlanReason.missing_api_key,
            message="no API key for the model endpoint: set the pool's "
            f"spec.model.apiKeySecretRef (or {API_KEY_ENV} when running locally)",
        )
    tools = granted_tools(pool, registry)
    if not tools:
        return PlanningResult(
            plan=None,
            usage=Usage(),
            reason=PlanReason.invalid_plan,
            message="the pool grants no registered tool, so no plan can run; "
            "check the pool's spec.tools and spec.capabilities",
        )
    planner = _Planner(
        openai.AsyncOpenAI(
            base_url=model.base_url,
            api_key=api_key,
            timeout=model.timeout_seconds,
            max_retries=1,
        ),
        model,
        plan_schema(tools, spec.limits.max_steps),
        _request(spec, tools),
    )
    endpoint = model.base_url or "the OpenAI API"
    problems: list[str] = []
    async with planner.client:
        for _ in range(2):
            if problems:
                planner.tell(problems)
            try:
                steps = _parse_steps(await planner.ask())
                plan = build_plan(steps, spec, pool, registry)
            except InvalidPlan as invalid:
                problems = invalid.problems
                continue
            except openai.APITimeoutError:
                return PlanningResult(
                    plan=None,
                    usage=planner.usage,
                    reason=PlanReason.llm_timeout,
                    message=f"{endpoint} did not answer within {model.timeout_seconds:g}s "
                    "(tried twice); raise the pool's spec.model.timeoutSeconds or check the "
                    "endpoint",
                )
            except openai.APIError as error:
                return PlanningResult(
                    plan=None,
                    usage=planner.usage,
                    reason=PlanReason.llm_error,
                    message=_redact(f"planning with {endpoint} failed: {error.message}", api_key),
                )
            log.info("planned %d steps (%d tokens)", len(plan), planner.usage.tokens)
            return PlanningResult(plan=plan, usage=planner.usage)
    return PlanningResult(
        plan=None,
        usage=planner.usage,
        reason=PlanReason.invalid_plan,
        message=_redact(
            "the model's plan was invalid after one re-ask: " + "; ".join(problems), api_key
        ),
    )
