"""`kubectl agent`: tasks, their steps and their approvals, for a person at a terminal.

A kubectl plugin (the `kubectl-agent` executable): it reads the user's kubeconfig and
context and makes every request with the user's own credentials (`--as` impersonates, as
kubectl does), so the API server's admission policies judge and record the real user. It
only reads what `kubectl get` would and patches a decision as `kubectl patch` would.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO, cast

import yaml
from kubernetes import client, config
from pydantic import ValidationError

from agent_operator.api import GROUP, VERSION, AgentTaskStatus, ApprovalPhase, StepPhase
from agent_operator.kube.manifests import LABEL_ATTEMPT, LABEL_STEP, LABEL_TASK_UID

__all__ = ["main", "step_rows", "task_row"]

Obj = dict[str, Any]
DONE = (StepPhase.succeeded, StepPhase.skipped)
DECISIONS = {"approve": "Approved", "reject": "Rejected"}
MAX_CELL = 60  # characters of a message in a table


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


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded as kubectl pads them: three spaces apart, the last one unpadded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "   ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


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
        except OSError as error:  # urllib3's connection errors are OSErrors
            raise Refused(f"{what}: cannot reach the API server: {error}") from None

    def _custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def tasks(self, all_namespaces: bool) -> list[Obj]:
        custom = self._custom()
        if all_namespaces:
            found = self._call(
                "list AgentTasks",
                lambda: custom.list_cluster_custom_object(GROUP, VERSION, "agenttasks"),
            )
        else:
            found = self._call(
                f"list AgentTasks in {self.namespace}",
                lambda: custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "agenttasks"
                ),
            )
        items: list[Obj] = found["items"]
        return sorted(items, key=lambda t: (t["metadata"]["namespace"], t["metadata"]["name"]))

    def task(self, name: str) -> Obj | None:
        custom = self._custom()
        try:
            found = cast(
                Obj,
                custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "agenttasks", name
                ),
            )
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise Refused(f"get AgentTask {name}: {_api_message(error)}") from None
        return found

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


def _get(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    now = datetime.now(UTC)
    if args.task is None:
        tasks = session.tasks(args.all_namespaces)
        if args.output:
            _output({"apiVersion": "v1", "kind": "List", "items": tasks}, args.output, out)
            return 0
        if not tasks:
            where = "any namespace" if args.all_namespaces else f"namespace {session.namespace}"
            print(f"No AgentTasks found in {where}.", file=out)
            return 0
        header = ["NAME", "PHASE", "PROGRESS", "STEP", "AGE"]
        rows = [task_row(t, now) for t in tasks]
        if args.all_namespaces:
            header = ["NAMESPACE", *header]
            rows = [[t["metadata"]["namespace"], *row] for t, row in zip(tasks, rows, strict=True)]
        print(table(header, rows), file=out)
        return 0
    task = session.task(args.task)
    if task is None:
        raise Refused(f"AgentTask {args.task} not found in namespace {session.namespace}")
    if args.output:
        _output(task, args.output, out)
        return 0
    status = _status(task)
    said = f" ({status.reason})" if status.reason else ""
    print(f"AgentTask {args.task}: {status.phase}{said}", file=out)
    if status.message:
        print(f"  {status.message}", file=out)
    rows = step_rows(task, session.approvals(task), now)
    if rows:
        header = ["STEP", "PHASE", "ATTEMPT", "DURATION", "RISK", "APPROVAL", "MESSAGE"]
        print(table(header, rows), file=out)
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
        chosen = [r for r in requests if not r["spec"].get("decision")]
        if not chosen:
            raise Refused(f"no step of AgentTask {target} waits for a decision")
        if len(chosen) > 1:
            steps = ", ".join(sorted(r["spec"]["stepId"] for r in chosen))
            raise Refused(f"several steps of AgentTask {target} wait ({steps}): name one")
    request = chosen[0]
    plan = _status(task).plan or []
    rationale = next((s.rationale for s in plan if s.id == request["spec"]["stepId"]), None)
    return request, rationale


def _decide(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    decision = DECISIONS[args.command]
    request, rationale = _request_of(session, args.task, args.step)
    spec = request["spec"]
    print(describe_request(request, rationale, datetime.now(UTC)), file=out)
    if spec.get("decision"):
        by = spec.get("decidedBy") or "someone"
        raise Refused(f"already decided: {spec['decision']} by {by}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise Refused(f"stdin is not a terminal: pass --yes to {args.command} without asking")
        answer = input(f"{args.command.capitalize()} step {spec['stepId']}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing changed.", file=out)
            return 1
    decided = session.decide(request["metadata"]["name"], decision, args.reason)
    by = decided["spec"].get("decidedBy")
    print(f"{decision} step {spec['stepId']}" + (f" as {by}" if by else "") + ".", file=out)
    return 0


def _logs(session: Session, args: argparse.Namespace, out: TextIO) -> int:
    task = session.task(args.task)
    if task is None:
        raise Refused(f"AgentTask {args.task} not found in namespace {session.namespace}")
    order = {step.id: i for i, step in enumerate(_status(task).plan or [])}

    def key(pod: Obj) -> tuple[int, int, str]:
        labels = pod["metadata"].get("labels", {})
        attempt = labels.get(LABEL_ATTEMPT, "0")
        step = labels.get(LABEL_STEP, "")
        return order.get(step, len(order)), int(attempt) if attempt.isdigit() else 0, step

    pods = sorted(session.step_pods(task, args.step), key=key)
    if not pods:
        which = f"step {args.step} of " if args.step else ""
        print(f"No pods of {which}AgentTask {args.task} (yet, or any more).", file=out)
        return 0
    for pod in pods:
        labels = pod["metadata"].get("labels", {})
        name = pod["metadata"]["name"]
        print(
            f"==> step {labels.get(LABEL_STEP, '?')}, attempt {labels.get(LABEL_ATTEMPT, '?')} "
            f"(pod {name}) <==",
            file=out,
        )
        print(session.log(name).rstrip("\n"), file=out)
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
    return top


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    run = {"get": _get, "approve": _decide, "reject": _decide, "logs": _logs}[args.command]
    try:
        session = Session.connect(args)
        return run(session, args, out)
    except Refused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
