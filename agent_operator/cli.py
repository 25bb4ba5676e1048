"""`agent-operator`: run an AgentTask file on this machine (the embedded default)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import BaseModel, ValidationError

from agent_contract import ToolRegistry
from agent_contract.mcp_client import MCPUnavailable
from agent_operator.api import (
    AgentPool,
    AgentTask,
    AgentTaskStatus,
    MCPServer,
    MCPServerStatus,
    TaskPhase,
)
from agent_operator.core.decide import Observed, decide
from agent_operator.core.mcp import granted_servers, pool_registry, secret_headers
from agent_operator.embedded import (
    EmbeddedRun,
    RunnerStopped,
    approve_all,
    default_pool,
    new_uid,
    refuse_unattended,
    resume_state,
    terminal_approver,
)
from agent_operator.local import LocalExecutor
from agent_operator.mcp_sync import list_offered
from agent_operator.store import DEFAULT_RETENTION_DAYS, Store, StoreError, default_sqlite_path

DSN_ENV = "AGENT_OPERATOR_DSN"

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """The user's file or flags are wrong; the message says what to fix."""


def _allowed_fields(schema: dict[str, Any], loc: tuple[int | str, ...]) -> list[str]:
    """The field names the schema allows at `loc` (the parent of an unknown field)."""
    defs = schema.get("$defs", {})
    node: dict[str, Any] = schema
    for part in loc:
        node = _deref(node, defs)
        node = (
            node.get("items", {})
            if isinstance(part, int)
            else node.get("properties", {}).get(part, {})
        )
    return sorted(_deref(node, defs).get("properties", {}))


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in node:
            node = next((n for n in node["anyOf"] if n.get("type") != "null"), {})
        else:
            return node


def _path(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _field_errors(model: type[BaseModel], name: str, error: ValidationError) -> str:
    """One line per problem: the field's path and what is allowed there."""
    schema = model.model_json_schema(by_alias=True)
    lines = [f"{model.__name__} {name!r} is not valid:"]
    for problem in error.errors():
        loc = problem["loc"]
        if problem["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_fields(schema, loc[:-1]))
            lines.append(f"  {_path(loc)}: unknown field; allowed here: {allowed}")
        else:
            lines.append(f"  {_path(loc)}: {problem['msg']}")
    return "\n".join(lines)


KINDS: dict[str, type[AgentTask] | type[AgentPool] | type[MCPServer]] = {
    "AgentTask": AgentTask,
    "AgentPool": AgentPool,
    "MCPServer": MCPServer,
}


@dataclass(frozen=True)
class Documents:
    """What a task file holds: the task, the pool it names (if the file defines it), and
    the MCP servers whose tools that pool may grant."""

    task: AgentTask
    pool: AgentPool | None
    servers: list[MCPServer]


def load_documents(path: Path) -> Documents:
    """The AgentTask (and optional AgentPool and MCPServers) in a YAML file."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as error:
        raise BadInput(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise BadInput(f"{path} is not valid YAML: {error}") from None
    loaded: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    for number, doc in enumerate(documents, start=1):
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        if kind not in KINDS:
            expected = "expected " + ", ".join(KINDS)
            raise BadInput(f"{path}: document {number} has kind {kind!r}; {expected}")
        metadata = doc.get("metadata")
        name = str(
            metadata.get("name", f"document {number}")
            if isinstance(metadata, dict)
            else f"document {number}"
        )
        model = KINDS[kind]
        try:
            loaded[kind].append(model.model_validate(doc))
        except ValidationError as error:
            raise BadInput(f"{path}: " + _field_errors(model, name, error)) from None
    tasks: list[AgentTask] = loaded["AgentTask"]
    pools: list[AgentPool] = loaded["AgentPool"]
    if len(tasks) != 1:
        raise BadInput(f"{path} holds {len(tasks)} AgentTasks; expected exactly one")
    task = tasks[0]
    wanted = task.spec.pool_ref.name
    pool = next((p for p in pools if p.metadata.name == wanted), None)
    if pools and pool is None:
        defined = ", ".join(repr(p.metadata.name) for p in pools)
        raise BadInput(f"{path}: spec.poolRef names pool {wanted!r}; the file defines {defined}")
    return Documents(task, pool, loaded["MCPServer"])


def discover(servers: list[MCPServer], pool: AgentPool) -> list[MCPServer]:
    """The servers the pool grants tools of, each with its tools listed now (as the
    operator's discovery lists them); a server the pool grants but cannot be reached
    is bad input, since no plan could use it."""
    granted = granted_servers(pool.spec)
    missing = sorted(granted - {s.metadata.name for s in servers})
    if missing:
        raise BadInput(
            f"the pool grants tools of MCPServer {missing[0]!r}, which the file does not define"
        )
    listed = []
    for server in servers:
        if server.metadata.name not in granted:
            continue
        if secret_headers(server.spec):
            raise BadInput(
                f"MCPServer {server.metadata.name!r} takes headers from Secrets, which the "
                "embedded runner cannot read yet; run the task on a cluster"
            )
        try:
            tools = asyncio.run(list_offered(server, {}))
        except MCPUnavailable as error:
            raise BadInput(f"MCPServer {server.metadata.name!r}: {error}") from None
        status = MCPServerStatus(tools=tools, tool_count=len(tools))
        listed.append(server.model_copy(update={"status": status}))
    return listed


def check_plan(task: AgentTask, pool: AgentPool, registry: ToolRegistry) -> AgentTaskStatus:
    """The status the core gives the task before anything runs: its plan with each step's
    risk assessment (None for a goal, which the LLM plans when it runs). A plan the core
    refuses is bad input."""
    checked = decide(
        Observed(
            task=task.model_copy(
                update={"metadata": task.metadata.model_copy(update={"uid": "dry-run"})}
            ),
            now=datetime.now(UTC),
            pool=pool.spec,
            registry=registry,
        )
    )
    if checked.status.phase == TaskPhase.failed:
        raise BadInput(f"the plan is not valid: {checked.status.message}")
    return checked.status


def _print_plan(task: AgentTask, out: TextIO) -> None:
    print(f"plan for {task.metadata.name}:", file=out)
    for step in task.status.plan or []:
        deps = ", ".join(step.depends_on) or "-"
        gate = "needs approval" if step.risk.requires_approval else "runs unattended"
        print(
            f"  {step.id:<20} {step.tool:<16} after: {deps:<20} {step.risk.level:<8} {gate}",
            file=out,
        )


def _print_result(task: AgentTask, out: TextIO) -> None:
    status = task.status
    print(
        f"\n{task.metadata.name}: {status.phase.value} ({status.reason}): {status.message}",
        file=out,
    )
    for step in status.steps:
        print(
            f"  {step.id:<20} {step.phase.value:<10} attempt {step.attempt}  {step.message or ''}",
            file=out,
        )
    if status.outputs:
        print("outputs:", file=out)
        print(yaml.safe_dump(status.outputs, sort_keys=False, indent=2).rstrip(), file=out)
    print(f"usage: {status.usage.tokens} tokens, ${status.usage.cost_usd:.4f}", file=out)


def run(args: argparse.Namespace, out: TextIO) -> int:
    documents = load_documents(Path(args.file))
    task = documents.task
    pool = documents.pool or default_pool(task.metadata.namespace)
    servers = discover(documents.servers, pool)
    registry = pool_registry(ToolRegistry.default(), pool.spec, servers)
    # Every run is checked first as a dry run is: a spec the core refuses is bad input.
    checked = check_plan(task, pool, registry)
    if args.dry_run:
        if checked.plan is None:
            print(
                "dry run: this task has a goal; its plan comes from the LLM when it runs", file=out
            )
            return EXIT_OK
        _print_plan(task.model_copy(update={"status": checked}), out)
        return EXIT_OK
    store = Store.open(args.dsn)
    try:
        if args.retention_days:
            store.forget_ended(datetime.now(UTC) - timedelta(days=args.retention_days))
        if args.resume:
            previous = store.latest_task(task.metadata.namespace, task.metadata.name)
            if previous is None:
                raise BadInput(
                    f"nothing to resume: no earlier run of {task.metadata.name!r} in the store"
                )
            task.metadata.uid = previous.uid
            task = resume_state(store, task)
            if task.status.phase.terminal:
                _print_result(task, out)
                return EXIT_OK if task.status.phase == TaskPhase.succeeded else EXIT_FAILED
        else:
            task.metadata.uid = new_uid()
        approver = (
            approve_all
            if args.approve_all
            else (terminal_approver(input) if sys.stdin.isatty() else refuse_unattended)
        )
        workdir = Path(args.workdir) / task.metadata.uid  # type: ignore[operator]
        # Steps get the user's environment but never the store's DSN: they report through
        # their result and log files, and the store is this process's alone.
        env = {name: value for name, value in os.environ.items() if name != DSN_ENV}
        executor = LocalExecutor(workdir, env=env)
        embedded = EmbeddedRun(task, pool, store, executor, approver, out, servers=servers)
        try:
            task = embedded.run()
        except RunnerStopped as error:
            executor.stop_all("Interrupted")
            print(
                f"\nstopped: {error}\ncontinue with: agent-operator run -f {args.file} --resume",
                file=out,
            )
            return EXIT_FAILED
        except KeyboardInterrupt:
            executor.stop_all("Interrupted")
            print(
                f"\ninterrupted; continue with: agent-operator run -f {args.file} --resume",
                file=out,
            )
            return EXIT_FAILED
        _print_result(task, out)
        return EXIT_OK if task.status.phase == TaskPhase.succeeded else EXIT_FAILED
    finally:
        store.close()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="agent-operator", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="run an AgentTask file here, without a cluster")
    run_cmd.add_argument(
        "-f", "--file", required=True, help="YAML with one AgentTask and optionally its AgentPool"
    )
    run_cmd.add_argument("--approve-all", action="store_true", help="approve every step that asks")
    run_cmd.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan; run nothing"
    )
    run_cmd.add_argument("--resume", action="store_true", help="continue the last run of this task")
    run_cmd.add_argument(
        "--dsn",
        default=os.environ.get(DSN_ENV),
        help="checkpoint store (default: SQLite)",
    )
    run_cmd.add_argument(
        "--retention-days",
        type=float,
        default=os.environ.get("AGENT_OPERATOR_RETENTION_DAYS", str(DEFAULT_RETENTION_DAYS)),
        help="delete the store's history of tasks that ended longer ago (0: keep everything)",
    )
    run_cmd.add_argument(
        "--workdir", default=str(default_sqlite_path().parent / "runs"), help="where step logs go"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args, sys.stdout)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as error:
        print(f"error: checkpoint store: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
