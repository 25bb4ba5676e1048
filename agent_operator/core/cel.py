"""CEL, compiled once per expression: a step's `when` and the safety rules share it."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

__all__ = ["CelError", "check", "holds"]


class CelError(Exception):
    """An expression does not compile, cannot be evaluated, or is not true or false."""


@lru_cache(maxsize=512)
def _program(expression: str) -> celpy.Runner:
    env = celpy.Environment()
    try:
        return env.program(env.compile(expression))
    except CELParseError as error:
        raise CelError("does not parse as CEL: " + " ".join(str(error).split())) from None


def check(expression: str) -> None:
    """Raise CelError when the expression does not compile."""
    _program(expression)


def holds(expression: str, variables: Mapping[str, Any]) -> bool:
    """The expression's value for `variables` (JSON values), which must be true or false."""
    activation = {name: json_to_cel(value) for name, value in variables.items()}
    try:
        result = _program(expression).evaluate(activation)
    except CELEvalError as error:
        raise CelError(f"cannot be evaluated: {error.args[0] if error.args else error}") from None
    if isinstance(result, CELEvalError):
        raise CelError(f"cannot be evaluated: {result.args[0] if result.args else result}")
    if not isinstance(result, celtypes.BoolType):
        raise CelError(f"must be true or false, got {result!r}")
    return bool(result)
