"""The runner's checks, message fitting and secret masking, in-process (the CLI tests run it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_contract import MAX_RESULT_BYTES, MESSAGE_LIMIT, ModelSettings, StepResult, full_result
from agent_runtime.cli import InvalidInvocation, check_invocation, fit_message, load_invocation
from agent_runtime.redaction import (
    MASK,
    redact,
    referenced_variables,
    secret_values,
    variables_named_in,
)
from agent_runtime.registry import Toolbox
from tests.runtime.helpers import invocation

REGISTRY = Toolbox.default()
STEP = {"task": "demo", "taskUID": "uid-1", "stepId": "s1", "tool": "noop"}


def test_step_from_a_yaml_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "step.yaml"
    path.write_text("task: demo\ntaskUID: u\nstepId: from-file\ntool: noop\n")
    env = {"AGENT_STEP": json.dumps({**STEP, "stepId": "from-env"})}
    assert load_invocation(path, env).step_id == "from-file"
    assert load_invocation(None, env).step_id == "from-env"


@pytest.mark.parametrize(
    ("step_file", "env", "message"),
    [
        ("missing.yaml", {}, "cannot read --step-file .*missing.yaml: No such file"),
        (None, {}, "no step given: set AGENT_STEP or pass --step-file"),
        (None, {"AGENT_STEP": json.dumps({**STEP, "taskUID": None})}, "taskUID: Input should be"),
        (None, {"AGENT_STEP": json.dumps({"tool": "noop"})}, "task: Field required"),
        (None, {"AGENT_STEP": json.dumps({**STEP, "secret": 1})}, "secret: Extra inputs are not"),
        (None, {"AGENT_STEP": "[1, 2]"}, "step: Input should be a valid dictionary"),
    ],
)
def test_unusable_steps_say_why(
    tmp_path: Path, step_file: str | None, env: dict[str, str], message: str
) -> None:
    path = tmp_path / step_file if step_file else None
    with pytest.raises(InvalidInvocation, match=message):
        load_invocation(path, env)


def test_unknown_tool_lists_what_exists() -> None:
    with pytest.raises(InvalidInvocation, match=r"tool: 'teleport' is not in .*available: fail, "):
        check_invocation(invocation("teleport"), REGISTRY)


def test_an_empty_allowlist_allows_nothing() -> None:
    with pytest.raises(InvalidInvocation, match=r"\(allowed: none\)"):
        check_invocation(invocation("noop", allowed_tools=[]), REGISTRY)


def test_approval_recorded_lets_the_step_run() -> None:
    step = invocation("noop", requires_approval=True, approved_by="alice")
    check_invocation(step, REGISTRY)  # raises nothing


def _document(outputs: dict[str, Any]) -> dict[str, Any]:
    return StepResult(ok=True, outputs=outputs).model_dump(mode="json", by_alias=True)


def _size(document: dict[str, Any]) -> int:
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())


def test_a_small_result_is_kept_whole() -> None:
    document = _document({"a": "x" * 1000})
    assert fit_message(document) == (document, document)


def test_a_large_result_leaves_a_summary_and_goes_whole_to_the_log() -> None:
    outputs = {"small": 1, "rows": ["y" * 100] * 100}
    message, full = fit_message(_document(outputs))
    assert full == _document(outputs)
    assert _size(message) <= MESSAGE_LIMIT
    assert message["inLog"] is True
    assert message["outputs"] == {"small": 1, "rows": "<truncated: 10301 bytes in the log>"}
    # What the operator does with the two: the full result, from the log's last line.
    line = json.dumps(full) + "\n"
    assert full_result(StepResult.model_validate(message), line).outputs == outputs


def test_a_result_with_many_large_keys_keeps_only_the_marker() -> None:
    outputs = {f"key{i}": "y" * 300 for i in range(100)}
    message, full = fit_message(_document(outputs))
    assert message["outputs"] == {} and message["inLog"] is True
    assert full["outputs"] == outputs


def test_a_result_over_the_limit_fails_the_step_and_names_the_largest_outputs() -> None:
    outputs = {"small": 1, "big": "z" * MAX_RESULT_BYTES}
    message, full = fit_message(_document(outputs))
    assert message == full and full["ok"] is False
    assert f"a step may report at most {MAX_RESULT_BYTES}" in full["message"]
    assert "largest outputs: big, small" in full["message"]


def test_a_log_line_that_is_not_the_summarized_result_is_a_failure() -> None:
    summary = StepResult(ok=True, in_log=True)
    for line, why in [
        (None, "its log is gone"),
        ("a tool's stray print", "is not a result"),
        ('{"ok": false}', "not the result the step summarized"),
        ('{"ok": true, "message": "' + "m" * MAX_RESULT_BYTES + '"}', "over the limit"),
    ]:
        result = full_result(summary, line)
        assert not result.ok and why in result.message


# --- secrets --------------------------------------------------------------------


def test_variables_named_by_the_step_are_secret() -> None:
    step = invocation(
        "react_agent",
        {"goal": "g", "tools": ["sql_query"], "context": {"dsnEnv": "REPORTS_DB"}},
        model=ModelSettings(api_key_env="LLM_KEY"),
    )
    names = referenced_variables(step)
    assert {"REPORTS_DB", "LLM_KEY", "AGENT_SQL_DSN", "OPENAI_API_KEY"} <= names
    http = invocation("http_request", {"url": "http://a/", "headersFromEnv": {"X-A": "HDR"}})
    assert "HDR" in referenced_variables(http)


def test_secret_values_cover_names_patterns_and_url_passwords() -> None:
    env = {
        "HDR": "header-value-1",
        "GITHUB_TOKEN": "ghp_abcdef",
        "AGENT_SQL_DSN": "postgresql://u:p%40ss-word@db/x",
        "HOME": "/home/agent",
        "SHORT_KEY": "abc",
    }
    values = secret_values(env, {"HDR"})
    assert "header-value-1" in values
    assert "ghp_abcdef" in values
    assert {"postgresql://u:p%40ss-word@db/x", "p%40ss-word", "p@ss-word"} <= set(values)
    assert "/home/agent" not in values
    assert "abc" not in values  # too short to mask safely
    assert values == sorted(values, key=len, reverse=True)


def test_redact_masks_nested_strings_and_keys() -> None:
    secrets = ["postgresql://u:hunter22@db/x", "hunter22"]
    value = {"msg": "connect postgresql://u:hunter22@db/x failed", "list": ["pw=hunter22", 3]}
    assert redact(value, secrets) == {
        "msg": f"connect {MASK} failed",
        "list": [f"pw={MASK}", 3],
    }


def test_variables_are_found_at_any_depth() -> None:
    params = {"a": [{"dsnEnv": "ONE"}], "headersFromEnv": {"X": "TWO"}, "env": "not-a-name"}
    assert variables_named_in(params) == {"ONE", "TWO"}
