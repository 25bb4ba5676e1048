"""References between steps: `${steps.<id>.outputs.<key>}` in params, CEL in `when`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from agent_operator.core import cel

PLACEHOLDER = re.compile(
    r"\$\{\s*(?:steps\.(?P<step>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.outputs\.(?P<key>[A-Za-z0-9_.-]+)"
    r"|inputs\.(?P<input>[A-Za-z0-9_.-]+))\s*\}"
)
WHEN_STEP_REF = re.compile(r"steps\s*(?:\.\s*([a-z0-9_]+)|\[\s*[\"']([a-z0-9-]+)[\"']\s*\])")


class MissingReference(Exception):
    """A placeholder names an output or input that does not exist."""


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def referenced_steps(params: Any) -> set[str]:
    """Step ids whose outputs the params use."""
    return {m["step"] for s in _strings(params) for m in PLACEHOLDER.finditer(s) if m["step"]}


def referenced_inputs(params: Any) -> set[str]:
    """Top-level keys of spec.inputs the params use."""
    return {
        m["input"].split(".")[0]
        for s in _strings(params)
        for m in PLACEHOLDER.finditer(s)
        if m["input"]
    }


def steps_in_condition(expression: str) -> set[str]:
    """Step ids a `when` expression reads (`steps.a...` or `steps["a-b"]...`)."""
    return {a or b for a, b in WHEN_STEP_REF.findall(expression)}


def is_placeholder(value: Any) -> bool:
    """True for a string that contains a placeholder: its type is known only at run time."""
    return isinstance(value, str) and PLACEHOLDER.search(value) is not None


def _lookup(root: Any, path: str, what: str) -> Any:
    value = root
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise MissingReference(f"{what} has no key {path!r}")
        value = value[part]
    return value


def substitute(
    params: Any, outputs: Mapping[str, Mapping[str, Any]], inputs: Mapping[str, Any]
) -> Any:
    """Params with every placeholder replaced; a whole-string placeholder keeps the value's type."""

    def resolve(match: re.Match[str]) -> Any:
        if match["step"]:
            step = match["step"]
            if step not in outputs:
                raise MissingReference(f"step {step!r} has no outputs (it did not succeed)")
            return _lookup(outputs[step], match["key"], f"the outputs of step {step!r}")
        return _lookup(inputs, match["input"], "spec.inputs")

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            whole = PLACEHOLDER.fullmatch(value.strip())
            if whole:
                return resolve(whole)
            return PLACEHOLDER.sub(lambda m: _as_text(resolve(m)), value)
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(params)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def evaluate_condition(
    expression: str,
    outputs: Mapping[str, Mapping[str, Any]],
    phases: Mapping[str, str],
    inputs: Mapping[str, Any],
) -> bool:
    """Evaluate a `when` expression against earlier steps' outputs and phases and the inputs;
    raise CelError."""
    steps = {
        sid: {"phase": phases.get(sid, ""), "outputs": dict(outputs.get(sid, {}))} for sid in phases
    }
    return cel.holds(expression, {"steps": steps, "inputs": dict(inputs)})
