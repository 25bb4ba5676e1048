"""Pieces of the built-in tools' schemas, so every tool refuses unknown params the same way."""

from __future__ import annotations

from typing import Any

ENV_NAME: dict[str, Any] = {
    "type": "string",
    "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
    "description": "name of an environment variable",
}
TIMEOUT: dict[str, Any] = {
    "type": "number",
    "exclusiveMinimum": 0,
    "description": "seconds; the step's deadline still applies",
}


def obj(
    properties: dict[str, Any],
    *,
    required: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A closed object schema: unknown params are refused, not ignored."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    schema.update(extra or {})
    return schema
