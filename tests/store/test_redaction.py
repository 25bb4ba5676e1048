"""Secrets never reach a row: the redaction every written document goes through."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_operator.redact import REDACTED, is_secret_key, redact, redact_text

SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "PGPASSWORD",
        "passwd",
        "secret",
        "clientSecret",
        "token",
        "accessToken",
        "refresh_token",
        "api_key",
        "apiKey",
        "APIKEY",
        "X-Api-Key",
        "Authorization",
        "credentials",
        "aws_credential",
        "private_key",
        "privateKey",
        "dsn",
        "DATABASE_DSN",
        "connection_string",
        "connectionString",
    ],
)
def test_secret_looking_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)
    assert redact({key: SECRET}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key",
    [
        "tokens",
        "max_tokens",
        "prompt_tokens",
        "maxTokens",
        "key",
        "monkey",
        "name",
        "goal",
        "secretKeyRef",
        "apiKeySecretRef",
        "secretRef",
        "passthrough",
        "keyboard",
    ],
)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert redact({key: 42}) == {key: 42}


def test_nested_documents_are_redacted_as_a_deep_copy() -> None:
    document: dict[str, Any] = {
        "step": "query",
        "params": {
            "sql": "select 1",
            "connection": {"host": "db", "password": SECRET, "port": 5432},
            "headers": [{"Authorization": f"Bearer {SECRET}"}, {"Accept": "text/plain"}],
        },
        "usage": {"tokens": 120, "costUSD": 0.01},
        "env": [
            {"name": "DB_PASSWORD", "value": SECRET},
            {"name": "LOG_LEVEL", "value": "debug"},
        ],
        "credentials": {"user": "ada", "key": SECRET},
        "nothing": None,
        "apiKey": None,
    }
    original = copy.deepcopy(document)

    redacted = redact(document)

    assert document == original  # the input is untouched
    assert SECRET not in json.dumps(redacted)
    assert redacted["params"]["connection"] == {"host": "db", "password": REDACTED, "port": 5432}
    assert redacted["params"]["headers"] == [{"Authorization": REDACTED}, {"Accept": "text/plain"}]
    assert redacted["usage"] == {"tokens": 120, "costUSD": 0.01}
    assert redacted["env"] == [
        {"name": "DB_PASSWORD", "value": REDACTED},
        {"name": "LOG_LEVEL", "value": "debug"},
    ]
    assert redacted["credentials"] == REDACTED
    assert redacted["apiKey"] is None  # no value, nothing to hide
    redacted["params"]["sql"] = "changed"
    assert document["params"]["sql"] == "select 1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"postgresql://agent:{SECRET}@db.example:5432/agents",
            f"postgresql://agent:{REDACTED}@db.example:5432/agents",
        ),
        (
            f"fetching https://bot:{SECRET}@git.example/repo.git failed",
            f"fetching https://bot:{REDACTED}@git.example/repo.git failed",
        ),
        ("https://user@git.example/repo.git", "https://user@git.example/repo.git"),
        ("http://localhost:8080/path?q=a@b", "http://localhost:8080/path?q=a@b"),
        (
            f"host=db user=agent password={SECRET} dbname=x",
            f"host=db user=agent password={REDACTED} dbname=x",
        ),
        (f'DB_PASSWORD="{SECRET}"', f"DB_PASSWORD={REDACTED}"),
        (f'{{"api_key": "{SECRET}", "n": 1}}', f'{{"api_key": {REDACTED}, "n": 1}}'),
        (f"Authorization: Bearer {SECRET}", f"Authorization: Bearer {REDACTED}"),
        (f"curl -H 'X: bearer {SECRET}'", f"curl -H 'X: Bearer {REDACTED}'"),
        ("used 1200 tokens: 3 steps", "used 1200 tokens: 3 steps"),
        ("a basic understanding", "a basic understanding"),
    ],
)
def test_credentials_inside_text_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact(text) == expected


json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values, st.sampled_from(["password", "apiKey", "X-Auth-Token", "dsn"]))
def test_a_secret_under_a_secret_key_never_survives(value: Any, key: str) -> None:
    document = {"outer": [value, {"deeper": {key: SECRET}}], key: {"nested": SECRET}}
    assert SECRET not in json.dumps(redact(document))


@given(json_values)
def test_redaction_is_idempotent_and_keeps_the_shape(value: Any) -> None:
    once = redact(value)
    assert redact(once) == once
    assert type(once) is type(value)
    if isinstance(value, dict):
        assert list(once) == list(value)
