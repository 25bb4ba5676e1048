"""Keep secret values out of results, termination messages and logs.

Secrets reach a step only through environment variables (filled from Kubernetes Secrets);
params name the variables, never hold the values. A tool can still echo a value back (a
server's error message quoting the API key, `env` in a shell), so every result is scrubbed of
the values of the variables that hold secrets before it leaves the process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from agent_contract import StepInvocation

__all__ = ["MASK", "redact", "referenced_variables", "secret_values", "variables_named_in"]

MASK = "***"
# Shorter values would mask ordinary words in outputs and protect little.
MIN_SECRET_LENGTH = 6
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|DSN|CREDENTIAL|AUTH", re.IGNORECASE)
DEFAULT_SECRET_VARIABLES = ("AGENT_SQL_DSN", "AGENT_OPERATOR_DSN", "OPENAI_API_KEY")


def referenced_variables(invocation: StepInvocation) -> set[str]:
    """Environment variables the step names as holding secrets (and the usual ones)."""
    names = set(DEFAULT_SECRET_VARIABLES) | variables_named_in(invocation.params)
    if invocation.model is not None:
        names.add(invocation.model.api_key_env)
    return names


def variables_named_in(params: Any) -> set[str]:
    """Variables that params name as holding secrets, at any depth.

    By convention a param `…Env` names one variable (`dsnEnv`) and a param `…FromEnv` maps
    names to variables (`headersFromEnv`).
    """
    names: set[str] = set()
    if isinstance(params, dict):
        for key, item in params.items():
            if key.endswith("FromEnv") and isinstance(item, dict):
                names.update(v for v in item.values() if isinstance(v, str))
            elif key.endswith("Env") and isinstance(item, str):
                names.add(item)
            else:
                names |= variables_named_in(item)
    elif isinstance(params, list):
        for item in params:
            names |= variables_named_in(item)
    return names


def secret_values(env: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """Values to mask: those of `names` and of variables whose name says secret.

    A URL's password is masked on its own too, since drivers quote URLs without the rest.
    Longest first, so a DSN is masked whole before its password is.
    """
    wanted = set(names)
    values: set[str] = set()
    for name, value in env.items():
        if name in wanted or _SECRET_NAME.search(name):
            values.add(value)
            if "://" in value:
                try:
                    password = urlsplit(value).password
                except ValueError:
                    password = None
                if password:
                    values.update({password, unquote(password)})
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def redact(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret replaced by the mask, in every string nested in it."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item, secrets) for item in value]
    return value
