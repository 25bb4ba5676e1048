"""Patches between two versions of a JSON document.

A JSON merge patch (RFC 7386) is what a Kubernetes status patch takes; it
replaces a changed list whole. A JSON Patch (RFC 6902) names list items by
position, so the store's checkpoints, whose `steps` list changes one item at a
time, keep only what changed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["apply_json_patch", "json_patch", "merge_patch"]


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The smallest merge patch that turns `old` into `new` (null removes a key)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif value != before or key not in old:
            patch[key] = value
    return patch


def json_patch(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """JSON Patch operations that turn `old` into `new`: objects key by key, lists of the
    same length item by item, anything else replaced whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = [
            {"op": "remove", "path": f"{path}/{_escape(key)}"} for key in old if key not in new
        ]
        for key, value in new.items():
            where = f"{path}/{_escape(key)}"
            if key in old:
                ops += json_patch(old[key], value, where)
            else:
                ops.append({"op": "add", "path": where, "value": value})
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            op
            for index, pair in enumerate(zip(old, new, strict=True))
            for op in json_patch(*pair, f"{path}/{index}")
        ]
    if type(old) is type(new) and old == new:  # type first: in JSON, 1 and true differ
        return []
    return [{"op": "replace", "path": path, "value": new}]


def apply_json_patch(document: Any, ops: list[dict[str, Any]]) -> Any:
    """`document` with the operations `json_patch` makes applied, in place where it can."""
    for op in ops:
        if op["path"] == "":
            document = op["value"]
            continue
        *parents, last = [_unescape(token) for token in op["path"].split("/")[1:]]
        target = document
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        key: Any = int(last) if isinstance(target, list) else last
        if op["op"] == "remove":
            del target[key]
        else:
            target[key] = op["value"]
    return document


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")
