"""Short summaries that keep the status small (etcd objects are limited to ~1.5 MB)."""

from __future__ import annotations

import json
from typing import Any

SUMMARY_CHARS = 200


def summarize(value: Any, limit: int = SUMMARY_CHARS) -> str:
    """A one-line JSON rendering, cut to `limit` characters."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
