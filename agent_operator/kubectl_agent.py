"""`kubectl agent`: tasks, their steps and their approvals, for a person at a terminal.

A kubectl plugin (the `kubectl-agent` executable): it reads the user's kubeconfig and
context and makes every request with the user's own credentials (`--as` impersonates, as
kubectl does), so the API server's admission policies judge and record the real user. It
only reads what `kubectl get` would and patches a decision as `kubectl patch` would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import urllib3
import yaml
from kubernetes import client, config, watch
from pydantic import ValidationError

from agent_contract import RiskLevel
from agent_operator.api import (
    GROUP,
    VERSION,
    AgentPool,
    AgentTaskStatus,
    ApprovalPhase,
    MCPServer,
    StepPhase,
    TaskPhase,
)
from agent_operator.core.safety import APPROVAL_MITIGATION
from agent_operator.kube.manifests import LABEL_ATTEMPT, LABEL_STEP, LABEL_TASK_UID

__all__ = ["describe_request", "main", "paint", "plan_rows", "step_rows", "table", "task_row"]

Obj = dict[str, Any]
DONE = (StepPhase.succeeded, StepPhase.skipped)
DECISIONS = {"approve": "Approved", "reject": "Rejected"}
MAX_CELL = 60  # characters of a message in a table
FOLLOW_SECONDS = 1.0  # how often `logs -f` looks for new pods
COLOURS = {  # ANSI SGR codes
    StepPhase.succeeded: "32",
    StepPhase.failed: "31",
    StepPhase.waiting_approval: "33",
    StepPhase.running: "36",
    StepPhase.retrying: "35",
    TaskPhase.cancelled: "2",
    RiskLevel.high: "31",
    RiskLevel.critical: "1;31",
    "needs approval": "33",
}


class Refused(Exception):
    """What to tell the user in one line (the API server's refusal, a missing object)."""


# --- what is shown: pure functions of the objects ---------------------------------------


def _status(task: Obj) -> AgentTaskStatus:
    """The task's status as the operator wrote it; an unreadable one shows as empty."""
    try:
        return AgentTaskStatus.model_validate(task.get("status") or {})
    except ValidationError:
        return AgentTaskStatus()


def _age(since: datetime | None, now: datetime) -> str:
    """As kubectl shows ages: 45s, 12m, 3h, 2d."""
    if since is None:
        return "-"
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _created(obj: Obj) -> datetime | None:
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def _cell(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def task_row(task: Obj, now: datetime) -> list[str]:
    """NAME, PHASE, PROGRESS (steps done of planned), STEP (running or waiting), AGE."""
    status = _status(task)
    planned = len(status.plan or [])
    done = sum(1 for step in status.steps if step.phase in DONE)
    by_id = {step.id: step for step in status.steps}
    current = [
        f"{sid} ({by_id[sid].phase})" if sid in by_id else sid
        for sid in (status.current_step or "").split(",")
        if sid
    ]
    return [
        task["metadata"]["name"],
        status.phase,
        f"{done}/{planned}" if planned else "-",
        ", ".join(current) or "-",
        _age(_created(task), now),
    ]


def _approval_state(request: Obj | None, requires: bool) -> str:
    if request is None:
        return "needed" if requires else "-"
    status = request.get("status") or {}
    phase = status.get("phase") or ApprovalPhase.pending
    by = status.get("decidedBy") or request["spec"].get("decidedBy")
    return f"{phase} by {by}" if by else str(phase)


def step_rows(task: Obj, approvals: Sequence[Obj], now: datetime) -> list[list[str]]:
    """The plan as a tree, each step under the first step it depends on (`after` names
    the others): STEP, PHASE, ATTEMPT, DURATION, RISK, APPROVAL, MESSAGE."""
    status = _status(task)
    plan = status.plan or []
    runs = {step.id: step for step in status.steps}
    requests = {a["spec"]["stepId"]: a for a in approvals}
    children: dict[str | None, list[str]] = {}
    for step in plan:
        children.setdefault(step.depends_on[0] if step.depends_on else None, []).append(step.id)
    by_id = {step.id: step for step in plan}
    rows: list[list[str]] = []

    def draw(step_id: str, lead: str, branch: str) -> None:
        step, run = by_id[step_id], runs.get(step_id)
        started = run.started_at if run else None
        ended = (run.finished_at if run else None) or now
        after = step.depends_on[1:]
        rows.append(
            [
                f"{lead}{branch}{step_id}" + (f" (after {', '.join(after)})" if after else ""),
                run.phase if run else StepPhase.pending,
                str(run.attempt) if run and run.attempt else "-",
                _age(started, ended) if started else "-",
                step.risk.level,
                _approval_state(requests.get(step_id), step.risk.requires_approval),
                _cell(run.message if run else None),
            ]
        )
        kids = children.get(step_id, [])
        below = lead + ("" if not branch else "   " if branch == "└─ " else "│  ")
        for index, kid in enumerate(kids):
            draw(kid, below, "└─ " if index == len(kids) - 1 else "├─ ")

    for root in children.get(None, []):
        draw(root, "", "")
    return rows


def paint(cell: str) -> str:
    """A phase or risk in its colour (ANSI), anything else as it is."""
    colour = COLOURS.get(cell.strip())
    return f"\033[{colour}m{cell}\033[0m" if colour else cell


def _line(row: Sequence[str], widths: Sequence[int], colour: Callable[[str], str] | None) -> str:
    cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
    return "   ".join(colour(c) if colour else c for c in cells).rstrip()


def _widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    colour: Callable[[str], str] | None = None,
) -> str:
    """Columns padded as kubectl pads them, three spaces apart; `colour` paints the cells
    of the rows."""
    widths = _widths(header, rows)
    return "\n".join([_line(header, widths, None), *(_line(r, widths, colour) for r in rows)])


def _painter(out: TextIO) -> Callable[[str], str] | None:
    """Colours on a terminal only, and never with NO_COLOR set (no-color.org)."""
    return paint if out.isatty() and not os.environ.get("NO_COLOR") else None


def describe_request(request: Obj, rationale: str | None, now: datetime) -> str:
    """What an approver reads before deciding (the params as the operator redacted them)."""
    spec = request["spec"]
    risk = spec.get("risk", {})
    lines = [
        f"ApprovalRequest {request['metadata']['name']}: step {spec['stepId']} of task "
        f"{spec['taskRef']['name']}",
        f"  tool:        {spec['tool']}",
        f"  params:      {json.dumps(spec.get('params', {}), sort_keys=True)}",
        f"  risk:        {risk.get('level', '?')}",
    ]
    for title in ("risks", "mitigations"):
        for index, item in enumerate(risk.get(title, [])):
            lines.append(f"  {title + ':':<12} {item}" if index == 0 else f"{'':15}{item}")
    if rationale:
        lines.append(f"  rationale:   {rationale}")
    expires = spec.get("expiresAt")
    if expires:
        at = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        lines.append(f"  expires:     {expires} (in {_age(now, at)})")
    return "\n".join(lines)


# --- the API server, with the user's credentials ------------------------------------------


@dataclass
class Session:
    """The user's kubeconfig, context and identity, and the requests the plugin makes."""

    api: client.ApiClient
    namespace: str

    @classmethod
    def connect(cls, args: argparse.Namespace) -> Session:
        config_file = args.kubeconfig
        try:
            contexts, active = config.list_kube_config_contexts(config_file)
            chosen = next((c for c in contexts if c["name"] == args.context), active)
            api = config.new_client_from_config(config_file, context=args.context)
        except (config.ConfigException, OSError) as error:
            raise Refused(f"cannot read the kubeconfig: {error}") from None
        if args.as_user:
            api.set_default_header("Impersonate-User", args.as_user)
        if args.as_group:
            api.set_default_header("Impersonate-Group", args.as_group)
        namespace = (
            args.namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
        )
        return cls(api, namespace)

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except client.ApiException as error:
            raise Refused(f"{what}: {_api_message(error)}") from None
        except (OSError, urllib3.exceptions.HTTPError) as error:
            raise Refused(f"{what}: cannot reach the API server: {error}") from None

    def _custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def _task_list(self, all_namespaces: bool) -> tuple[Callable[..., Any], tuple[str, ...]]:
        custom = self._custom()
        if all_namespaces:
            return custom.list_cluster_custom_object, (GROUP, VERSION, "agenttasks")
        return custom.list_namespaced_custom_object, (GROUP, VERSION, self.namespace, "agenttasks")

    def tasks(self, all_namespaces: bool, name: str | None = None) -> tuple[list[Obj], str]:
        """The tasks (of one namespace or all; `name`: that one only), sorted, and the
        list's resourceVersion to watch from."""
        where = "any namespace" if all_namespaces else self.namespace
        call, scope = self._task_list(all_namespaces)
        selector = {"field_selector": f"metadata.name={name}"} if name else {}
        found = self._call(f"list AgentTasks in {where}", lambda: call(*scope, **selector))
        items: list[Obj] = found["items"]
        items.sort(key=lambda t: (t["metadata"]["namespace"], t["metadata"]["name"]))
        return items, str(found["metadata"].get("resourceVersion", ""))

    def task_events(
        self, all_namespaces: bool, name: str | None, since: str
    ) -> Iterator[tuple[str, Obj]]:
        """Every change to the tasks after `since`, for as long as the caller reads:
        a watch the server ends is resumed, one too old to resume starts from a new list."""
        call, scope = self._task_list(all_namespaces)
        selector = {"field_selector": f"metadata.name={name}"} if name else {}
        version = since
        while True:
            try:
                for event in watch.Watch().stream(
                    call, *scope, resource_version=version, **selector
                ):
                    obj = event["object"]
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    yield event["type"], obj
            except urllib3.exceptions.ProtocolError:
                continue  # the stream broke off: resumed from the last change seen
            except client.ApiException as error:
                if error.status != 410:
                    raise Refused(f"watch AgentTasks: {_api_message(error)}") from None
                # Too old to resume: what the new list holds may have changed meanwhile.
                items, version = self.tasks(all_namespaces, name)
                for item in items:
                    yield "MODIFIED", item
                if name is not None and not items:
                    yield "DELETED", {"metadata": {"name": name, "namespace": self.namespace}}

    def task(self, name: str) -> Obj | None:
        """The AgentTask, or None when there is none of that name."""
        tasks, _version = self.tasks(False, name)
        return tasks[0] if tasks else None

    def approvals(self, task: Obj) -> list[Obj]:
        custom = self._custom()
        selector = f"{LABEL_TASK_UID}={task['metadata']['uid']}"
        found = self._call(
            f"list ApprovalRequests of {task['metadata']['name']}",
            lambda: custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "approvalrequests", label_selector=selector
            ),
        )
        return list(found["items"])

    def approval(self, name: str) -> Obj:
        custom = self._custom()
        found: Obj = self._call(
            f"get ApprovalRequest {name}",
            lambda: custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "approvalrequests", name
            ),
        )
        return found

    def decide(self, name: str, decision: str, reason: str | None) -> Obj:
        custom = self._custom()
        spec: Obj = {"decision": decision}
        if reason:
            spec["reason"] = reason
        patched: Obj = self._call(
            f"ApprovalRequest {name}",
            lambda: custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "approvalrequests", name, {"spec": spec}
            ),
        )
        return patched

    def pool(self, name: str) -> AgentPool:
        custom = self._custom()
        found = self._call(
            f"get AgentPool {name}",
            lambda: custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "agentpools", name
            ),
        )
        try:
            return AgentPool.model_validate(found)
        except ValidationError as error:
            raise Refused(f"AgentPool {name} does not parse: {error}") from None

    def mcp_servers(self) -> list[MCPServer]:
        """The MCPServers of the namespace with the tools the operator listed (one that
        does not parse offers no tool, as for the operator)."""
        custom = self._custom()
        found = self._call(
            f"list MCPServers in {self.namespace}",
            lambda: custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "mcpservers"
            ),
        )
        servers = []
        for item in found["items"]:
            with contextlib.suppress(ValidationError):
                servers.append(MCPServer.model_validate(item))
        return servers

    def step_pods(self, task: Obj, step: str | None) -> list[Obj]:
        core = client.CoreV1Api(self.api)
        selector = f"{LABEL_TASK_UID}={task['metadata']['uid']}"
        if step:
            selector += f",{LABEL_STEP}={step}"
        found = self._call(
            f"list the pods of {task['metadata']['name']}",
            lambda: core.list_namespaced_pod(self.namespace, label_selector=selector),
        )
        return [self.api.sanitize_for_serialization(p) for p in found.items]

    def follow_log(self, pod: str) -> Iterator[str]:
        """The pod's log as it is written, until its container ends."""
        core = client.CoreV1Api(self.api)
        response = self._call(
            f"follow the log of pod {pod}",
            lambda: core.read_namespaced_pod_log(
                pod, self.namespace, follow=True, _preload_content=False
            ),
        )
        try:
            for chunk in response.stream(decode_content=True):
                yield chunk.decode(errors="replace")
        finally:
            response.release_conn()

    def log(self, pod: str) -> str:
        core = client.CoreV1Api(self.api)
        text: str = self._call(
            f"read the log of pod {pod}",
            lambda: core.read_namespaced_pod_log(pod, self.namespace),
        )
        return text


def _api_message(error: client.ApiException) -> str:
    """The API server's own sentence (a Status message), else the HTTP reason."""
    try:
        body = json.loads(error.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"HTTP {error.status} {error.reason}"


# --- commands ----------------------------------------------------------------------------


def _output(data: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        print(json.dumps(data, indent=2), file=out)
    else:
        print(yaml.safe_dump(data, sort_keys=False).rstrip(), file=out)


TASK_HEADER = ["NAME", "PHASE", "PROGRESS", "STEP", "AGE"]
STEP_HEADER = ["STEP", "PHASE", "ATTEMPT", "DURATION", "RISK", "APPROVAL", "MESSAGE"]


def _task_rows(tasks: Sequence[Obj], all_namespaces: bool) -> tuple[list[str], list[list[str]]]:
    now = datetime.now(UTC)
    rows = [task_row(t, now) for t in tasks]
    if not all_namespaces:
        return TASK_HEADER, rows
    rows = [[t["metadata"]["namespace"], *row] for t, row in zip(tasks, rows, strict=True)]
    return ["NAMESPACE", *TASK_HEADER], rows


def _show_task(session: Session, task: Obj, out: TextIO) -> None:
    session.namespace = task["metadata"]["namespace"]  # `-A NAME`: where it was found
    status = _status(task)
    said = f" ({status.reason})" if status.reason else ""
    print(f"AgentTask {task['metadata']['name']}: {status.phase}{said}", file=out)
    if status.message:
        print(f"  {status.message}", file=out)
    rows = step_rows(task, session.approvals(task), datetime.now(UTC))
    if rows:
        print(table(STEP_HEADER, rows, _painter(out)), file=out)
    out.flush()


def _get(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    """Tasks as a table, or one task as the tree of its steps; `-w`: again on each change
    (one task: until it ends, as `argo watch` does)."""
    tasks, version = session.tasks(args.all_namespaces, args.task)
    if args.task is not None and not tasks:
        raise Refused(f"AgentTask {args.task} not found in namespace {session.namespace}")
    if args.output:
        data = tasks[0] if args.task else {"apiVersion": "v1", "kind": "List", "items": tasks}
        _output(data, args.output, out)
        return 0
    if args.task is not None:
        _show_task(session, tasks[0], out)
        if not args.watch or _status(tasks[0]).phase.terminal:
            return 0
        for kind, task in session.task_events(False, args.task, version):
            if kind == "DELETED":
                print(f"AgentTask {args.task} was deleted.", file=out)
                return 0
            print(file=out)
            _show_task(session, task, out)
            if _status(task).phase.terminal:
                return 0
    if not tasks and not args.watch:
        where = "any namespace" if args.all_namespaces else f"namespace {session.namespace}"
        print(f"No AgentTasks found in {where}.", file=out)
        return 0
    header, rows = _task_rows(tasks, args.all_namespaces)
    colour = _painter(out)
    print(table(header, rows, colour), file=out, flush=True)
    if args.watch:  # a row for each change, as `kubectl get -w` prints them
        widths = _widths(header, rows)
        for _kind, task in session.task_events(args.all_namespaces, None, version):
            [row] = _task_rows([task], args.all_namespaces)[1]
            print(_line(row, widths, colour), file=out, flush=True)
    return 0


def _request_of(session: Session, target: str, step: str | None) -> tuple[Obj, str | None]:
    """The ApprovalRequest meant (`target`: a task, with `step` or its one undecided
    request; or the request's own name) and the step's rationale."""
    task = session.task(target)
    if task is None:
        if step is not None:
            raise Refused(f"AgentTask {target} not found in namespace {session.namespace}")
        return session.approval(target), None
    requests = session.approvals(task)
    if step is not None:
        chosen = [r for r in requests if r["spec"]["stepId"] == step]
        if not chosen:
            raise Refused(f"step {step} of AgentTask {target} has no ApprovalRequest")
    else:
        chosen = [r for r in requests if _waiting(r)]
        if not chosen:
            raise Refused(f"no step of AgentTask {target} waits for a decision")
        if len(chosen) > 1:
            steps = ", ".join(sorted(r["spec"]["stepId"] for r in chosen))
            raise Refused(f"several steps of AgentTask {target} wait ({steps}): name one")
    request = chosen[0]
    plan = _status(task).plan or []
    rationale = next((s.rationale for s in plan if s.id == request["spec"]["stepId"]), None)
    return request, rationale


def _waiting(request: Obj) -> bool:
    """Undecided and not expired: a decision on it would count."""
    phase = (request.get("status") or {}).get("phase", ApprovalPhase.pending)
    return not request["spec"].get("decision") and phase == ApprovalPhase.pending


def _decide(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    decision = DECISIONS[args.command]
    request, rationale = _request_of(session, args.task, args.step)
    spec = request["spec"]
    print(describe_request(request, rationale, datetime.now(UTC)), file=out)
    if spec.get("decision"):
        by = spec.get("decidedBy") or "someone"
        raise Refused(f"already decided: {spec['decision']} by {by}")
    if not _waiting(request):
        raise Refused(f"the request has {request['status']['phase'].lower()}: it takes no decision")
    if not args.yes:
        if not sys.stdin.isatty():
            raise Refused(f"stdin is not a terminal: pass --yes to {args.command} without asking")
        try:
            answer = input(f"{args.command.capitalize()} step {spec['stepId']}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing changed.", file=out)
            return 1
    decided = session.decide(request["metadata"]["name"], decision, args.reason)
    by = decided["spec"].get("decidedBy")
    print(f"{decision} step {spec['stepId']}" + (f" as {by}" if by else "") + ".", file=out)
    return 0


def _logs(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    """The step pods' logs in plan order, attempt by attempt; `-f`: each running pod's as
    it is written, and the pods to come, until the task ends."""
    task = session.task(args.task)
    if task is None:
        raise Refused(f"AgentTask {args.task} not found in namespace {session.namespace}")
    order = {step.id: i for i, step in enumerate(_status(task).plan or [])}

    def key(pod: Obj) -> tuple[int, int, str]:
        labels = pod["metadata"].get("labels", {})
        attempt = labels.get(LABEL_ATTEMPT, "0")
        step = labels.get(LABEL_STEP, "")
        return order.get(step, len(order)), int(attempt) if attempt.isdigit() else 0, step

    shown: set[str] = set()
    while True:
        ended = _status(task).phase.terminal
        for pod in sorted(session.step_pods(task, args.step), key=key):
            name, labels = pod["metadata"]["name"], pod["metadata"].get("labels", {})
            phase = (pod.get("status") or {}).get("phase")
            if name in shown or phase == "Pending":
                continue  # no log yet (`-f`: looked at again next round)
            print(
                f"==> step {labels.get(LABEL_STEP, '?')}, attempt "
                f"{labels.get(LABEL_ATTEMPT, '?')} (pod {name}) <==",
                file=out,
                flush=True,
            )
            if args.follow and phase == "Running":
                for chunk in session.follow_log(name):
                    out.write(chunk)
                    out.flush()
            else:
                print(session.log(name).rstrip("\n"), file=out, flush=True)
            shown.add(name)
        if not args.follow or ended:
            break
        time.sleep(FOLLOW_SECONDS)
        found = session.task(args.task)
        if found is None:
            break
        task = found
    if not shown:
        which = f"step {args.step} of " if args.step else ""
        print(f"No pods of {which}AgentTask {args.task} (yet, or any more).", file=out)
    return 0


def plan_rows(status: AgentTaskStatus) -> list[list[str]]:
    """STEP, TOOL, AFTER, RISK, GATE, WHY: what the operator would plan and ask for."""
    rows = []
    for step in status.plan or []:
        risk = step.risk
        asked = [
            m.removeprefix(APPROVAL_MITIGATION)
            for m in risk.mitigations
            if m.startswith(APPROVAL_MITIGATION)
        ]
        rows.append(
            [
                step.id,
                step.tool,
                ", ".join(step.depends_on) or "-",
                risk.level,
                "needs approval" if risk.requires_approval else "runs unattended",
                _cell("; ".join(asked or risk.risks) or "-"),
            ]
        )
    return rows


def _plan(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    # The planning code (and the MCP and OpenAI clients under it) loads in a second:
    # only this command needs it.
    from agent_contract import ToolRegistry
    from agent_operator.cli import BadInput, check_plan, load_documents
    from agent_operator.core.mcp import granted_servers, pool_registry

    try:
        documents = load_documents(Path(args.file))
    except BadInput as error:
        raise Refused(str(error)) from None
    task = documents.task
    if "namespace" in task.metadata.model_fields_set:
        if args.namespace and args.namespace != task.metadata.namespace:
            raise Refused(
                f"the file's namespace {task.metadata.namespace!r} is not the namespace "
                f"{args.namespace!r} given with -n"
            )
        session.namespace = task.metadata.namespace
    pool_name = task.spec.pool_ref.name
    pool = documents.pool or session.pool(pool_name)
    # As the operator sees them: the cluster's, with the tools their status lists.
    servers = session.mcp_servers() if granted_servers(pool.spec) else []
    registry = pool_registry(ToolRegistry.default(), pool.spec, servers)
    try:
        status = check_plan(task, pool, registry)
    except BadInput as error:
        raise Refused(str(error)) from None
    if status.plan is None:
        print(
            f"AgentTask {task.metadata.name} has a goal: the operator's LLM planner makes its "
            "plan when it runs (with the pool's model and key), so there is none to show here",
            file=out,
        )
        return 0
    if args.output:
        _output([step.wire() for step in status.plan], args.output, out)
        return 0
    print(
        f"AgentTask {task.metadata.name} on pool {pool_name} (namespace {session.namespace}): "
        f"{len(status.plan)} step{'' if len(status.plan) == 1 else 's'}, nothing run",
        file=out,
    )
    header = ["STEP", "TOOL", "AFTER", "RISK", "GATE", "WHY"]
    print(table(header, plan_rows(status), _painter(out)), file=out)
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="the namespace (default: the context's)")
    common.add_argument("--context", help="the kubeconfig context to use")
    common.add_argument("--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG)")
    common.add_argument("--as", dest="as_user", help="the user to impersonate")
    common.add_argument("--as-group", help="the group to impersonate")
    top = argparse.ArgumentParser(prog="kubectl agent", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True)
    get = commands.add_parser("get", parents=[common], help="tasks, or one task's steps")
    get.add_argument("task", nargs="?", help="one task: its steps as a tree")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=["json", "yaml"])
    get.add_argument("-w", "--watch", action="store_true", help="print again on every change")
    for verb in DECISIONS:
        decide = commands.add_parser(
            verb, parents=[common], help=f"{verb} a step waiting for approval"
        )
        decide.add_argument("task", help="the AgentTask (or the ApprovalRequest's name)")
        decide.add_argument("step", nargs="?", help="the step (default: the one waiting)")
        decide.add_argument("--reason", help="why, in your words (kept in the request)")
        decide.add_argument("-y", "--yes", action="store_true", help="do not ask to confirm")
    logs = commands.add_parser("logs", parents=[common], help="the step pods' logs")
    logs.add_argument("task")
    logs.add_argument("step", nargs="?")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="follow new output until the task ends"
    )
    plan = commands.add_parser(
        "plan", parents=[common], help="the plan and risks the operator would make; runs nothing"
    )
    plan.add_argument("-f", "--file", required=True, help="the AgentTask's YAML")
    plan.add_argument("-o", "--output", choices=["json", "yaml"])
    return top


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    commands = {"get": _get, "approve": _decide, "reject": _decide, "logs": _logs, "plan": _plan}
    run = commands[args.command]
    try:
        session = Session.connect(args)
        return run(session, args, out)
    except Refused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
