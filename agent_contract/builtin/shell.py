"""The spec of `shell`: run one command, a list of arguments or a string for `/bin/sh -c`."""

from __future__ import annotations

from agent_contract.builtin._schema import ENV_NAME, TIMEOUT, obj
from agent_contract.tool import RiskLevel, ToolSpec

__all__ = ["DEFAULT_TIMEOUT", "SHELL", "SPECS"]

DEFAULT_TIMEOUT = 300.0


SHELL = ToolSpec(
    name="shell",
    description=(
        "Run a command: a list of arguments, or a string run by /bin/sh -c. Returns exitCode, "
        "stdout and stderr (truncated); a non-zero exit fails the step."
    ),
    params_schema=obj(
        {
            "command": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ]
            },
            "cwd": {"type": "string", "minLength": 1},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "inheritEnv": {
                "type": "array",
                "items": ENV_NAME,
                "description": "variables of the step's environment the command may see",
            },
            "stdin": {"type": "string"},
            "timeoutSeconds": TIMEOUT,
            "maxOutputBytes": {"type": "integer", "minimum": 1, "maximum": 1024 * 1024},
        },
        required=["command"],
    ),
    risk=RiskLevel.high,
    capabilities=frozenset({"shell"}),
    timeout_seconds=DEFAULT_TIMEOUT,
)

SPECS = [SHELL]
