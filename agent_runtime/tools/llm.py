"""LLM tools over the OpenAI API (any compatible server): one completion, and a ReAct agent.

Both use the pool's model (`StepInvocation.model`); the API key is read from the environment
variable it names, so the key never appears in params, results or logs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from agent_contract import ModelSettings, Usage, cost_usd
from agent_contract.builtin import llm as specs
from agent_contract.builtin.llm import REACT_AGENT
from agent_contract.mcp import SEPARATOR, granted
from agent_runtime.executor import run_tool
from agent_runtime.redaction import redact, referenced_variables, secret_values, variables_named_in
from agent_runtime.registry import Tool, ToolContext, ToolFailure, ToolOutcome, ToolTimeout

__all__ = ["LLM_COMPLETE", "REACT_AGENT_TOOL", "TOOLS"]

if TYPE_CHECKING:  # openai is imported when an LLM tool runs: it slows every start
    from openai import OpenAI
    from openai.types.chat import ChatCompletion, ChatCompletionMessageToolCallUnion

DEFAULT_SYSTEM = (
    "You are an agent working towards the user's goal. Call the tools you are given when they "
    "help; each tool's answer comes back to you as JSON, or as an error to correct. When you "
    "know the answer, reply with it as plain text and call no tool."
)
MAX_OBSERVATION_CHARS = 8000  # what one tool result may add to the conversation
MAX_PREVIEW_CHARS = 300  # what one trace entry keeps of arguments and results
MAX_CALLS_PER_TURN = 8
FUNCTION_CHARS = re.compile(r"[^A-Za-z0-9_-]")  # what a function name may not hold
MAX_FUNCTION_NAME = 64


def _client(ctx: ToolContext, tool: str) -> tuple[OpenAI, ModelSettings]:
    from openai import OpenAI

    settings = ctx.invocation.model
    if settings is None:
        raise ToolFailure(f"{tool} needs a model: set spec.model on the AgentPool")
    key = ctx.env.get(settings.api_key_env)
    if not key:
        raise ToolFailure(f"{tool}: environment variable {settings.api_key_env} (API key) is unset")
    client = OpenAI(api_key=key, base_url=settings.base_url, max_retries=2)
    return client, settings


def _complete(
    client: OpenAI, settings: ModelSettings, ctx: ToolContext, params: dict[str, Any], **extra: Any
) -> ChatCompletion:
    """One chat completion; transport and API errors become readable tool failures."""
    from openai import APIConnectionError, APIStatusError, APITimeoutError

    temperature = params.get("temperature", settings.temperature)
    max_tokens = params.get("maxTokens", settings.max_tokens)
    if temperature is not None:
        extra["temperature"] = temperature
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens
    try:
        completion: ChatCompletion = client.chat.completions.create(
            model=settings.model, timeout=ctx.budget(settings.timeout_seconds), **extra
        )
    except APITimeoutError:
        raise ToolTimeout(f"the model at {client.base_url} did not answer in time") from None
    except APIConnectionError:
        raise ToolFailure(f"cannot reach the model at {client.base_url}") from None
    except APIStatusError as exc:
        raise ToolFailure(
            f"the model at {client.base_url} answered HTTP {exc.status_code}: {_reason(exc)}"
        ) from None
    return completion


def _reason(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(exc.message)


def _usage(completion: ChatCompletion, settings: ModelSettings) -> Usage:
    """Tokens and their cost at the pool's prices, so steps count against maxCostUSD."""
    if completion.usage is None:
        return Usage()
    used = completion.usage
    cost = cost_usd(settings.model, used.prompt_tokens, used.completion_tokens, settings.prices)
    return Usage(tokens=used.total_tokens, cost_usd=cost)


def _llm_complete(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    client, settings = _client(ctx, "llm_complete")
    messages: list[Any] = []
    if "system" in params:
        messages.append({"role": "system", "content": params["system"]})
    if "prompt" in params:
        messages.append({"role": "user", "content": params["prompt"]})
    messages.extend(params.get("messages", []))
    extra: dict[str, Any] = {"messages": messages}
    if params.get("json"):
        extra["response_format"] = {"type": "json_object"}
    with client:
        completion = _complete(client, settings, ctx, params, **extra)
    usage = _usage(completion, settings)
    choice = completion.choices[0]
    outputs: dict[str, Any] = {
        "text": choice.message.content or "",
        "finishReason": choice.finish_reason,
        "model": completion.model,
    }
    if params.get("json"):
        try:
            outputs["json"] = json.loads(outputs["text"])
        except ValueError:
            raise ToolFailure("the model's answer is not JSON", outputs, usage) from None
    return ToolOutcome(outputs=outputs, usage=usage)


def function_names(tools: Iterable[str]) -> list[str]:
    """A function name for each tool, as the OpenAI API allows them (letters, digits, `_`
    and `-`, at most 64): an MCP tool `<server>/<tool>` is offered as `<server>__<tool>`,
    and a name still too long or taken gets a hash of the tool's name."""
    taken: list[str] = []
    for name in tools:
        function = FUNCTION_CHARS.sub("_", name.replace(SEPARATOR, "__"))
        if len(function) > MAX_FUNCTION_NAME or function in taken:
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            function = f"{function[: MAX_FUNCTION_NAME - 9]}_{digest}"
        taken.append(function)
    return taken


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PREVIEW_CHARS else text[: MAX_PREVIEW_CHARS - 1] + "…"


class _Agent:
    """One ReAct run: the conversation, the tools it may call, and what it spent and did."""

    def __init__(self, params: dict[str, Any], ctx: ToolContext) -> None:
        self.params = params
        self.ctx = ctx
        allowed = ctx.invocation.allowed_tools
        callable_tools = [
            tool
            for name in specs.REACT_AGENT_TOOL.calls(params)
            if granted(name, allowed) and (tool := ctx.toolbox.get(name)) is not None
        ]
        # By the function name the model knows each tool by.
        names = function_names(tool.spec.name for tool in callable_tools)
        self.tools = dict(zip(names, callable_tools, strict=True))
        if not self.tools:
            raise ToolFailure(
                f"react_agent has no tool to call: params.tools {params['tools']} are unknown, "
                f"itself, or not in allowedTools {allowed}"
            )
        # Tool results go to the model endpoint: secrets in them are masked first.
        self.secret_names = referenced_variables(ctx.invocation)
        self.usage = Usage()
        self.trace: list[dict[str, Any]] = []
        user = params["goal"]
        if "context" in params:
            user += "\n\nContext (JSON):\n" + json.dumps(params["context"])
        self.messages: list[Any] = [
            {"role": "system", "content": params.get("system", DEFAULT_SYSTEM)},
            {"role": "user", "content": user},
        ]

    def specs(self) -> list[Any]:
        return [
            {
                "type": "function",
                "function": {
                    "name": function,
                    "description": tool.spec.description,
                    "parameters": tool.spec.params_schema,
                },
            }
            for function, tool in self.tools.items()
        ]

    def run(self) -> ToolOutcome:
        client, settings = _client(self.ctx, REACT_AGENT)
        limit = int(self.params.get("maxIterations", 5))
        with client:
            for iteration in range(1, limit + 1):
                completion = self._turn(client, settings)
                message = completion.choices[0].message
                if not message.tool_calls:
                    outputs = {
                        "answer": message.content or "",
                        "iterations": iteration,
                        "trace": self.trace,
                    }
                    return ToolOutcome(outputs=outputs, usage=self.usage)
                self.messages.append(
                    {
                        "role": "assistant",
                        "content": message.content,
                        "tool_calls": [call.model_dump(mode="json") for call in message.tool_calls],
                    }
                )
                for index, call in enumerate(message.tool_calls):
                    reply = self._observe(call, over_limit=index >= MAX_CALLS_PER_TURN)
                    self.messages.append(
                        {"role": "tool", "tool_call_id": call.id, "content": reply}
                    )
        raise ToolFailure(
            f"react_agent gave no final answer within maxIterations={limit}",
            {"iterations": limit, "trace": self.trace},
            self.usage,
        )

    def _turn(self, client: OpenAI, settings: ModelSettings) -> ChatCompletion:
        try:
            completion = _complete(
                client, settings, self.ctx, self.params, messages=self.messages, tools=self.specs()
            )
        except ToolFailure as exc:
            exc.outputs.setdefault("trace", self.trace)
            exc.usage = self.usage
            raise
        self.usage += _usage(completion, settings)
        return completion

    def _observe(self, call: ChatCompletionMessageToolCallUnion, *, over_limit: bool) -> str:
        """Run one tool call; the answer (or the error to correct) goes back to the model."""
        if call.type != "function":
            return self._record(call.type, "", error="only function tools are available")
        function, raw = call.function.name, call.function.arguments
        tool = self.tools.get(function)
        name = function if tool is None else tool.spec.name
        if over_limit:
            return self._record(name, raw, error=f"at most {MAX_CALLS_PER_TURN} calls per turn")
        if tool is None:
            return self._record(name, raw, error=f"no tool {name!r}; use one of {list(self.tools)}")
        try:
            arguments = json.loads(raw or "{}")
        except ValueError as exc:
            return self._record(name, raw, error=f"arguments are not valid JSON: {exc}")
        errors = tool.spec.param_errors(arguments)
        if errors:
            return self._record(name, raw, error="invalid arguments: " + "; ".join(errors))
        named = variables_named_in(arguments)
        try:
            outcome = run_tool(tool, arguments, self.ctx, tool.spec.timeout_seconds)
        except ToolFailure as exc:
            self.usage += exc.usage
            return self._record(name, raw, error=exc.message, named=named)
        self.usage += outcome.usage
        return self._record(name, raw, result=outcome.outputs, named=named)

    def _record(
        self,
        name: str,
        arguments: str,
        *,
        error: str | None = None,
        result: Any = None,
        named: Iterable[str] = (),
    ) -> str:
        """Add a trace entry and return the reply for the model, both with secrets masked."""
        secrets = secret_values(self.ctx.env, self.secret_names.union(named))
        entry: dict[str, Any] = {"tool": name, "arguments": _preview(redact(arguments, secrets))}
        if error is not None:
            error = redact(error, secrets)
            entry.update(ok=False, error=_preview(error))
            reply = json.dumps({"error": error})
        else:
            result = redact(result, secrets)
            entry.update(ok=True, result=_preview(result))
            reply = json.dumps(result, default=str)
        self.trace.append(entry)
        if len(reply) > MAX_OBSERVATION_CHARS:
            reply = reply[:MAX_OBSERVATION_CHARS] + "… (truncated)"
        return reply


def _react_agent(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
    return _Agent(params, ctx).run()


LLM_COMPLETE = Tool(specs.LLM_COMPLETE, _llm_complete)
REACT_AGENT_TOOL = Tool(specs.REACT_AGENT_TOOL, _react_agent)

TOOLS = [LLM_COMPLETE, REACT_AGENT_TOOL]
