"""Keep secrets out of everything the operator writes down.

Every JSON document the checkpoint store writes, and every free-text message,
goes through here first: a secret that reaches a row, a status, an event or a
log line cannot be taken back. Matching is by key name (and by a few shapes
inside strings), so it errs on the side of hiding too much.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import TypeVar, cast

REDACTED = "***REDACTED***"

T = TypeVar("T")

# Stems that make a key secret wherever they appear in it ("PGPASSWORD", "clientSecret").
_SECRET_STEMS = ("password", "passwd", "passphrase", "secret", "credential", "apikey", "privatekey")
# Whole words that make a key secret: "token" but not "tokens" or "tokenizer".
_SECRET_WORDS = frozenset({"token", "pwd", "authorization", "dsn", "cookie"})
# Adjacent word pairs that together make a key secret ("api_key", "X-Api-Key", "privateKey").
_SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("private", "key"),
        ("access", "key"),
        ("connection", "string"),
        ("conn", "str"),
    }
)
# A key ending in one of these names a Kubernetes object holding a secret, not the secret.
_REFERENCE_WORDS = frozenset({"ref", "refs"})

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")

_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://user:***REDACTED***@host
    (
        re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#@]+(?=@)", re.I),
        rf"\g<head>{REDACTED}",
    ),
    # password=..., "token": "...", Authorization: Bearer ... in messages and keyword DSNs.
    (
        re.compile(
            r"(?<![a-z0-9])(?P<key>password|passwd|pwd|secret|token|api[_-]?key|authorization)"
            r"(?P<sep>['\"]?\s*[=:]\s*)(?P<scheme>(?:bearer|basic|token)\s+)?"
            r"(?!\*\*\*REDACTED)(?P<quote>['\"]?)[^\s'\",;&]+(?P=quote)",
            re.I,
        ),
        rf"\g<key>\g<sep>\g<scheme>{REDACTED}",
    ),
    # A bearer token quoted on its own.
    (re.compile(r"\bbearer\s+(?!\*\*\*REDACTED)[a-z0-9._~+/=-]{8,}", re.I), f"Bearer {REDACTED}"),
)


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret value (by its words, in any casing style)."""
    words = _NON_ALNUM.split(_CAMEL_BOUNDARY.sub("_", key).lower())
    words = [w for w in words if w]
    if not words or words[-1] in _REFERENCE_WORDS:
        return False
    if any(w in _SECRET_WORDS or any(stem in w for stem in _SECRET_STEMS) for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in pairwise(words))


def redact_text(text: str) -> str:
    """Mask credentials inside free text: URL userinfo, auth headers, key=value secrets."""
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(value: T) -> T:
    """A deep copy of a JSON-like value with secret-looking keys and credentials masked."""
    return cast(T, _redact(value))


def _redact(value: object) -> object:
    if isinstance(value, dict):
        return _redact_mapping(value)
    if isinstance(value, list | tuple):
        return type(value)(_redact(item) for item in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def _redact_mapping(mapping: dict[object, object]) -> dict[object, object]:
    # {"name": "DB_PASSWORD", "value": "..."}: the shape of Kubernetes env vars.
    name = mapping.get("name")
    named_secret = isinstance(name, str) and is_secret_key(name)
    out: dict[object, object] = {}
    for key, item in mapping.items():
        secret = is_secret_key(str(key)) or (named_secret and key == "value")
        out[key] = REDACTED if secret and item is not None else _redact(item)
    return out
