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


MAX_ERROR_CHARS = 120


class CelError(Exception):
    """An expression does not compile, cannot be evaluated, or is not true or false."""


@lru_cache(maxsize=512)
def _program(expression: str) -> celpy.Runner:
    env = celpy.Environment()
    try:
        return env.program(env.compile(expression))
    except CELParseError as error:
        raise CelError("does not parse as CEL: " + " ".join(str(error).split())) from None
    except RecursionError:
        raise CelError("does not parse as CEL: nested too deeply") from None


def check(expression: str) -> None:
    """Raise CelError when the expression does not compile."""
    _program(expression)


def holds(expression: str, variables: Mapping[str, Any]) -> bool:
    """The expression's value for `variables` (JSON values), which must be true or false.

    Whatever goes wrong is a CelError: values CEL cannot hold (an int beyond 64 bits),
    nesting too deep to evaluate, an unknown name. Its message is short and shows none of
    the variables (celpy's own text can quote them all, secrets included)."""
    program = _program(expression)
    try:
        result = program.evaluate({name: json_to_cel(v) for name, v in variables.items()})
    except Exception as error:  # celpy raises more than CELEvalError (overflow, recursion)
        raise CelError(f"cannot be evaluated: {_first_clause(error)}") from None
    if isinstance(result, CELEvalError):
        raise CelError(f"cannot be evaluated: {_first_clause(result)}")
    if not isinstance(result, celtypes.BoolType):
        raise CelError(f"must be true or false, got a {type(result).__name__}")
    return bool(result)


def _first_clause(error: BaseException) -> str:
    """What went wrong, without the values involved: the error's first clause, bounded."""
    text = str(error.args[0] if error.args else error) or type(error).__name__
    clause = text.split(" (in activation", 1)[0].split(",", 1)[0].split("\n", 1)[0]
    return clause[:MAX_ERROR_CHARS]
