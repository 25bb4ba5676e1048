"""The built-in tool set, custom tools through entry points, and the deadline executor."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from agent_contract import RiskLevel, ToolRegistry, ToolSpec
from agent_contract.builtin import builtin_specs
from agent_runtime.executor import run_tool
from agent_runtime.registry import Tool, Toolbox, ToolContext, ToolOutcome, ToolTimeout
from agent_runtime.tools import builtin_tools
from tests.runtime.helpers import context

BUILTINS = {
    "noop",
    "sleep",
    "fail",
    "http_request",
    "sql_query",
    "sql_execute",
    "kubernetes_get",
    "kubernetes_list",
    "kubernetes_apply",
    "kubernetes_delete",
    "shell",
    "llm_complete",
    "react_agent",
}
OPEN_BY_DESIGN = {"noop"}  # returns whatever it is given


def test_builtins_are_all_there() -> None:
    assert {spec.name for spec in builtin_specs()} == BUILTINS
    # Each runtime tool runs exactly the spec the operator validates against.
    assert [tool.spec for tool in builtin_tools()] == builtin_specs()


@pytest.mark.parametrize("tool", builtin_specs(), ids=lambda tool: tool.name)
def test_builtin_metadata_is_complete(tool: ToolSpec) -> None:
    Draft202012Validator.check_schema(tool.params_schema)
    assert tool.params_schema["type"] == "object"
    if tool.name not in OPEN_BY_DESIGN:
        assert tool.params_schema["additionalProperties"] is False
    assert re.fullmatch(r"[a-z_]+", tool.name)  # also a valid OpenAI function name
    assert tool.description and 0 < tool.timeout_seconds <= 3600
    if tool.name not in {"noop", "sleep", "fail"}:
        assert tool.capabilities


def test_param_errors_name_every_field() -> None:
    tool = ToolRegistry.default().get("sleep")
    assert tool is not None
    assert tool.param_errors({"seconds": -1, "extra": 1}) == [
        "params: Additional properties are not allowed ('extra' was unexpected) "
        "(allowed: outputs, seconds)",
        "params.seconds: -1 is less than the minimum of 0",
    ]
    assert tool.param_errors("not an object") == ["params: 'not an object' is not of type 'object'"]


def test_static_risk_is_the_default_effective_risk() -> None:
    registry = ToolRegistry.default()
    shell = registry.get("shell")
    assert shell is not None
    assert shell.effective_risk({"command": "true"}, registry) == RiskLevel.high


# --- custom tools through the entry-point group -------------------------------

# A custom tool package: specs apart from the implementations, so the operator can load
# the metadata (`agent_contract.tools`) without the code (`agent_runtime.tools`).
PLUGIN_SPECS = """
from agent_contract import RiskLevel, ToolSpec

TEXT = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}
SHOUT = ToolSpec(name="shout", description="Upper-cases.", params_schema=TEXT, risk=RiskLevel.safe)
WHISPER = ToolSpec(name="whisper", description="Lower.", params_schema=TEXT, risk=RiskLevel.low)
CRASH = ToolSpec(name="crash", description="A bug.", params_schema={}, risk=RiskLevel.safe)


def more_specs():
    return [WHISPER, CRASH]
"""

PLUGIN_TOOLS = """
import shout_specs
from agent_runtime.registry import Tool, ToolOutcome


def _shout(params, ctx):
    return ToolOutcome(outputs={"text": params["text"].upper()})


def _whisper(params, ctx):
    return ToolOutcome(outputs={"text": params["text"].lower()})


def _crash(params, ctx):
    raise RuntimeError("cannot use " + ctx.env["AGENT_SQL_DSN"])


SHOUT = Tool(shout_specs.SHOUT, _shout)


def more_tools():
    return [Tool(shout_specs.WHISPER, _whisper), Tool(shout_specs.CRASH, _crash)]
"""

ENTRY_POINTS = (
    "[agent_contract.tools]\nshout = shout_specs:SHOUT\nwhisper = shout_specs:more_specs\n"
    "[agent_runtime.tools]\nshout = shout_tools:SHOUT\nwhisper = shout_tools:more_tools\n"
)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution `shout-tools` publishing specs and tools, one and a factory."""
    (tmp_path / "shout_specs.py").write_text(textwrap.dedent(PLUGIN_SPECS))
    (tmp_path / "shout_tools.py").write_text(textwrap.dedent(PLUGIN_TOOLS))
    info = tmp_path / "shout_tools-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-tools\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_tools_join_the_default_toolbox(plugin: Path) -> None:
    toolbox = Toolbox.default()
    assert set(toolbox.names()) == BUILTINS | {"shout", "whisper", "crash"}
    shout = toolbox.get("shout")
    assert shout is not None
    outcome = shout.run({"text": "hi"}, context("shout", toolbox=toolbox))
    assert outcome.outputs == {"text": "HI"}


def test_entry_point_specs_join_the_registry_without_their_implementations(
    plugin: Path,
) -> None:
    """What the operator loads to validate plans: the specs, never the tools' code."""
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from agent_contract import ToolRegistry as R; "
            "print(json.dumps(R.default().names())); print('shout_tools' in sys.modules)",
        ],
        env={**os.environ, "PYTHONPATH": str(plugin)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert set(json.loads(found[0])) == BUILTINS | {"shout", "whisper", "crash"}
    assert found[1] == "False"


def run_plugin_step(plugin: Path, tool: str, params: dict[str, Any]) -> tuple[int, str, str]:
    """Run a step as a custom image would; returns exit code, termination message, stderr."""
    step = {"task": "t", "taskUID": "u", "stepId": "s", "tool": tool, "params": params}
    log = plugin / "termination-log"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "agent-runtime"),
            "run-step",
            "--termination-log",
            str(log),
        ],
        env={
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(plugin),
            "AGENT_STEP": json.dumps(step),
            "AGENT_SQL_DSN": "postgresql://agent:pl41nt3xt@db/agents",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, log.read_text(), done.stderr


def test_a_custom_image_runs_its_tool_as_a_step(plugin: Path) -> None:
    code, message, _ = run_plugin_step(plugin, "whisper", {"text": "QUIET"})
    assert code == 0
    assert json.loads(message)["outputs"] == {"text": "quiet"}


def test_a_crashing_tool_is_reported_with_secrets_masked(plugin: Path) -> None:
    code, message, stderr = run_plugin_step(plugin, "crash", {})
    assert code == 1
    assert json.loads(message)["message"] == "internal error: RuntimeError('cannot use ***')"
    assert "Traceback" in stderr and "_crash" in stderr
    assert "pl41nt3xt" not in message + stderr


def test_a_name_taken_twice_is_refused(plugin: Path) -> None:
    (plugin / "shout_tools-1.0.dist-info" / "entry_points.txt").write_text(
        "[agent_runtime.tools]\nshout = shout_tools:SHOUT\nagain = shout_tools:SHOUT\n"
    )
    with pytest.raises(ValueError, match="'shout' is registered twice"):
        Toolbox.default()


# --- the deadline executor ----------------------------------------------------


def _tool(run: Any) -> Tool:
    return Tool(ToolSpec(name="probe", description="", params_schema={}, risk=RiskLevel.safe), run)


def test_a_tool_that_ignores_its_deadline_is_abandoned() -> None:
    def stuck(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        time.sleep(60)
        return ToolOutcome(outputs={})

    with pytest.raises(ToolTimeout, match=r"^probe timed out after 0\.1s$"):
        run_tool(_tool(stuck), {}, context(), 0.1)


def test_a_tool_stopping_at_its_deadline_keeps_its_outputs() -> None:
    def polite(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        while True:
            try:
                ctx.budget(1.0)
            except ToolTimeout as exc:
                exc.outputs["progress"] = "half"
                raise
            time.sleep(0.01)

    with pytest.raises(ToolTimeout, match=r"^probe timed out after 0\.1s$") as failure:
        run_tool(_tool(polite), {}, context(), 0.1)
    assert failure.value.outputs == {"progress": "half"}


def test_an_outer_deadline_bounds_an_inner_call() -> None:
    seen: list[float] = []

    def measure(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        seen.append(ctx.budget(100.0))
        return ToolOutcome(outputs={})

    outer = context()
    bounded = ToolContext(
        invocation=outer.invocation, toolbox=outer.toolbox, deadline=time.monotonic() + 5
    )
    run_tool(_tool(measure), {}, bounded, 100.0)
    assert 0 < seen[0] <= 5


def test_errors_other_than_failures_propagate() -> None:
    def broken(params: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        raise KeyError("bug")

    with pytest.raises(KeyError, match="bug"):
        run_tool(_tool(broken), {}, context(), 5)
