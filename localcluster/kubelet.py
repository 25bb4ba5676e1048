"""A local kubelet: a Node whose pods' containers run as processes on this machine.

There is no container runtime here, so the e2e tier needs a stand-in for the kubelet. This
one registers a Node, keeps its Lease and Ready condition fresh, watches the pods bound to it
and runs each container's command as a local process with the pod's env (secrets, config
maps, downward API), a service-account token from the TokenRequest API, and the termination
message file. It reports pod status the way a kubelet does, so the Job, Deployment and
garbage-collector controllers see real pod lifecycles. It talks to the API server as
`system:node:<name>` (group `system:nodes`), so the Node authorizer and NodeRestriction
apply to it as to a real kubelet. What it does not do is listed in docs/e2e.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client
import kubernetes.config
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from localcluster import container as runtime
from localcluster.controlplane import NodeCredentials, die_with_parent
from localcluster.images import Image, ImageStore, default_store

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT_SECONDS = 10.0
LEASE_DURATION_SECONDS = 40
WATCH_SECONDS = 5  # the API server ends each watch after this long; then we resume it
MAX_GRACE_SECONDS = 3.0  # cap on terminationGracePeriodSeconds, to keep tests fast
BACKOFF_SECONDS = (1.0, 10.0)  # first and longest wait before restarting a container
CONFIG_RETRY_SECONDS = 1.0
TOKEN_SECONDS = 3607  # what a real kubelet asks for
MESSAGE_LIMIT = 4096  # bytes of a termination message the kubelet keeps
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
POLL_SECONDS = 0.1
STATUS_ATTEMPTS = 5
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
PATCH = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"


def project_kubelet(credentials: NodeCredentials, work_dir: Path, node: str) -> LocalKubelet:
    """A local kubelet for `node` that runs containers from the images `make images` made."""
    return LocalKubelet(
        credentials.kubeconfig,
        work_dir,
        ImageStore(default_store()),
        node_name=node,
        serving=(credentials.serving_cert, credentials.serving_key),
        client_ca=credentials.client_ca,
    )


class ContainerConfigError(Exception):
    """The container cannot be configured yet (missing Secret key, ...); retried."""


class ImageUnavailable(Exception):
    """The node does not have the image, and pulls nothing: the container cannot start."""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`,
    anything else stays as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            end = text.find(")", i + 2) if nxt == "(" else -1
            if end != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, f"$({name})"))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _exit_code(returncode: int) -> int:
    """A container runtime's exit code: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _read_tail(path: Path, lines: int, limit: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = b"".join(data.splitlines(keepends=True)[-lines:])[-limit:]
    return text.decode(errors="replace")


class Api:
    """JSON calls through the `kubernetes` client's connection and credentials.

    Objects stay plain dicts, as on the wire: the client's generated models would reshape
    them, and a kubelet must send back fields it does not know about untouched.
    """

    def __init__(self, kubeconfig: Path) -> None:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration
        )
        configuration.connection_pool_maxsize = 32  # one connection per busy thread
        self.client = kubernetes.client.ApiClient(configuration)

    def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] = 30.0,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()  # type: ignore[no-untyped-call]
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; the decoded response body."""
        return json.loads(self._send(method, path, body, query, content_type).data)

    def watch(self, path: str, query: Mapping[str, str], timeout: int) -> Iterator[Any]:
        """The events of one watch that the server ends after `timeout` seconds."""
        query = {**query, "watch": "true", "timeoutSeconds": str(timeout)}
        response = self._send("GET", path, query=query, timeout=(5.0, timeout + 10.0))
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if line:
                    yield json.loads(line)
        finally:
            response.close()
            response.release_conn()

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return str(error)


def _host_facts() -> dict[str, str]:
    """Capacity and node info of this machine."""

    def read(path: str, default: str = "") -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return default

    memory_kib = next(
        (
            line.split()[1]
            for line in read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        "0",
    )
    os_image = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in read("/etc/os-release").splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.system(),
    )
    machine = platform.machine()
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib}Ki",
        "machineID": read("/etc/machine-id", uuid.uuid4().hex),
        "bootID": read("/proc/sys/kernel/random/boot_id"),
        "kernelVersion": platform.release(),
        "osImage": os_image,
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine),
    }


class LocalKubelet:
    """A kubelet for one Node whose containers are local processes (see the module doc).

    `images` are the images the node has (it pulls none). `serving` (cert, key) and
    `client_ca` enable the kubelet API for `kubectl logs`.
    """

    def __init__(
        self,
        kubeconfig: Path,
        root: Path,
        images: ImageStore,
        *,
        node_name: str = "e2e-node",
        serving: tuple[Path, Path] | None = None,
        client_ca: Path | None = None,
    ) -> None:
        self.node_name = node_name
        self.root = root
        self.images = images
        self.kubeconfig = kubeconfig
        self.server, self.ca_data = _cluster_of(kubeconfig)
        self.service_port = urlsplit(self.server).port or 443
        self.api = Api(kubeconfig)
        self._serving = serving
        self._client_ca = client_ca
        self._log_server: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._workers: dict[str, _PodWorker] = {}  # by pod uid, while the pod runs here
        self._finished: set[str] = set()  # pod uids whose workers are done
        # Done workers whose last status the API server never got (it was away), by pod uid.
        self._unsent: dict[str, _PodWorker] = {}
        self._by_name: dict[tuple[str, str], _PodWorker] = {}  # newest worker per pod name
        self._threads: list[threading.Thread] = []
        self._node_uid = ""
        self._node_status: dict[str, Any] = {}
        self._registered_at = now()
        self.version = ""

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Register the Node and start the heartbeat, the pod watch and the log server."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.version = self.api.call("GET", "/version")["gitVersion"]
        port = self._start_log_server()
        self._register(port)
        for name, target in (("heartbeat", self._heartbeat), ("pod-watch", self._watch)):
            thread = threading.Thread(target=target, name=f"kubelet-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Kill every container process and stop all threads; pods stay as they are."""
        self._stopping.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.terminate(1.0, shutdown=True)
        for worker in workers:
            worker.join(MAX_GRACE_SECONDS + 5)
        if self._log_server is not None:
            self._log_server.shutdown()
            self._log_server.server_close()
        for thread in self._threads:
            thread.join(WATCH_SECONDS + 5)
        self.api.close()

    def pod_dir(self, namespace: str, name: str) -> Path | None:
        """The directory of the newest pod of that name: logs, token, termination messages."""
        with self._lock:
            worker = self._by_name.get((namespace, name))
        return worker.dir if worker else None

    # --- the Node -------------------------------------------------------------------

    def _register(self, port: int) -> None:
        facts = _host_facts()
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": facts["architecture"],
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
        }
        try:
            node = self.api.call("POST", "/api/v1/nodes", body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            node = self.api.call("GET", f"/api/v1/nodes/{self.node_name}")
        self._node_uid = node["metadata"]["uid"]
        capacity = {
            "cpu": facts["cpu"],
            "memory": facts["memory"],
            "pods": "110",
            "ephemeral-storage": str(shutil.disk_usage(self.root).total),
        }
        self._node_status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": LOOPBACK},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {
                "machineID": facts["machineID"],
                "systemUUID": facts["machineID"],
                "bootID": facts["bootID"],
                "kernelVersion": facts["kernelVersion"],
                "osImage": facts["osImage"],
                "containerRuntimeVersion": "local://processes",
                "kubeletVersion": self.version,
                "operatingSystem": "linux",
                "architecture": facts["architecture"],
            },
        }
        self._beat()

    def _beat(self) -> None:
        """Renew the Lease and the conditions' heartbeat, as a kubelet does every 10s."""
        stamp = now()
        conditions = [
            (kind, "False", reason, message)
            for kind, reason, message in (
                ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
                ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            )
        ] + [("Ready", "True", "KubeletReady", "local kubelet is posting ready status")]
        status = dict(self._node_status)
        status["conditions"] = [
            {
                "type": kind,
                "status": value,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": self._registered_at,
            }
            for kind, value, reason, message in conditions
        ]
        self.api.call(
            "PATCH", f"/api/v1/nodes/{self.node_name}/status", {"status": status}, None, PATCH
        )
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": _micro_now(),
        }
        try:
            self.api.call("PATCH", f"{leases}/{self.node_name}", {"spec": spec}, None, MERGE_PATCH)
        except ApiException as exc:
            if exc.status != 404:
                raise
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node_name,
                "uid": self._node_uid,
            }
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node_name, "ownerReferences": [owner]},
                "spec": spec,
            }
            self.api.call("POST", leases, lease)

    def _heartbeat(self) -> None:
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            try:
                self._beat()
            except Exception as error:  # the API server away, mostly: beat again later
                log.warning("node heartbeat failed: %s", _describe(error))
                continue
            self._resend()

    # --- pods -----------------------------------------------------------------------

    def _watch(self) -> None:
        """List, then watch, the pods bound to this node; relist when the watch expires."""
        selector = f"spec.nodeName={self.node_name}"
        version = ""
        while not self._stopping.is_set():
            try:
                if not version:
                    listing = self.api.call(
                        "GET", "/api/v1/pods", query={"fieldSelector": selector}
                    )
                    version = listing["metadata"]["resourceVersion"]
                    self._sync(listing["items"])
                query = {
                    "fieldSelector": selector,
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                }
                for event in self.api.watch("/api/v1/pods", query, WATCH_SECONDS):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = ""  # 410 Gone, mostly: relist
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._handle(event["type"], obj)
                    if self._stopping.is_set():
                        break
            except Exception as exc:
                if self._stopping.is_set():
                    return
                if isinstance(exc, ApiException) and exc.status == 410:
                    version = ""
                    continue
                log.warning("pod watch failed, relisting: %s", exc)
                version = ""
                self._stopping.wait(1.0)

    def _sync(self, pods: list[dict[str, Any]]) -> None:
        """After a relist: handle every pod, and stop workers of pods that are gone."""
        present = {pod["metadata"]["uid"] for pod in pods}
        with self._lock:
            gone = [w for uid, w in self._workers.items() if uid not in present]
        for worker in gone:
            worker.terminate(0.0, gone=True)
        with self._lock:
            for uid in [uid for uid in self._unsent if uid not in present]:
                del self._unsent[uid]
        for pod in pods:
            self._handle("ADDED", pod)
        self._resend()

    def _resend(self) -> None:
        """Send again the statuses the API server missed (it was away), after a relist and
        with every heartbeat, as a kubelet's status manager keeps the server in sync."""
        with self._lock:
            behind = [w for w in [*self._workers.values(), *self._unsent.values()] if w.unsent]
        for worker in behind:
            worker._publish()
        with self._lock:
            for uid in [uid for uid, w in self._unsent.items() if not w.unsent or w._gone]:
                del self._unsent[uid]

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if worker is None and kind != "DELETED" and uid not in self._finished:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    self._finished.add(uid)
                else:
                    worker = _PodWorker(self, pod)
                    self._workers[uid] = worker
                    self._by_name[(meta["namespace"], meta["name"])] = worker
                    worker.start()
        if kind == "DELETED":
            if worker is not None:
                worker.terminate(0.0, gone=True)
            return
        if not meta.get("deletionTimestamp"):
            return
        if worker is not None:
            worker.terminate(float(meta.get("deletionGracePeriodSeconds") or 0))
        elif meta.get("deletionGracePeriodSeconds") != 0:
            # Nothing runs for it here any more: complete the deletion, as a kubelet does.
            self.delete_pod(meta["namespace"], meta["name"], uid)

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete with grace 0: gone at once, or once others' finalizers are removed. If the
        API server is away, the pod still shows its deletion after the next relist, which
        deletes it again."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.api.call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("deleting pod %s/%s failed: %s", namespace, name, exc)
        except Exception as exc:  # the connection: the server is away
            log.warning("deleting pod %s/%s failed: %s", namespace, name, _describe(exc))

    def _done(self, worker: _PodWorker) -> None:
        with self._lock:
            self._workers.pop(worker.uid, None)
            self._finished.add(worker.uid)
            if worker.unsent:
                self._unsent[worker.uid] = worker

    # --- kubelet API (logs) -----------------------------------------------------------

    def _start_log_server(self) -> int:
        """Serve /containerLogs over TLS for the API server (`kubectl logs`); 0 if disabled."""
        if self._serving is None or self._client_ca is None:
            return 0
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, self._serving))
        context.load_verify_locations(str(self._client_ca))
        context.verify_mode = ssl.CERT_REQUIRED  # only the API server's client cert
        server = ThreadingHTTPServer((LOOPBACK, 0), _LogHandler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.kubelet = self  # type: ignore[attr-defined]
        self._log_server = server
        thread = threading.Thread(target=server.serve_forever, name="kubelet-api", daemon=True)
        thread.start()
        self._threads.append(thread)
        port: int = server.server_address[1]
        return port

    def container_log(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> tuple[Path, Callable[[], bool]] | None:
        """A container's log file, and whether it may still grow."""
        with self._lock:
            worker = self._by_name.get((namespace, pod))
        if worker is None or container not in worker.container_names:
            return None
        path = worker.log_path(container, previous)
        return path, lambda: not previous and worker.is_running(container)


class _LogHandler(BaseHTTPRequestHandler):
    """GET /containerLogs/<namespace>/<pod>/<container>?follow&tailLines&previous&limitBytes"""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        kubelet: LocalKubelet = self.server.kubelet  # type: ignore[attr-defined]
        found = None
        if len(parts) == 4 and parts[0] == "containerLogs":
            _, namespace, pod, container = parts
            found = kubelet.container_log(
                namespace, pod, container, previous=query.get("previous") == "true"
            )
        if found is None:
            self.send_error(404, "no such container")
            return
        path, growing = found
        data = path.read_bytes() if path.exists() else b""
        offset = len(data)  # where following continues
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"]) :]) if int(query["tailLines"]) else b""
        limit = int(query.get("limitBytes", 0)) or None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(data[:limit])
        if query.get("follow") != "true":
            return
        with contextlib.suppress(OSError):
            while growing() or (path.exists() and path.stat().st_size > offset):
                if path.exists() and path.stat().st_size > offset:
                    with path.open("rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    offset += len(chunk)
                    self.wfile.write(chunk)
                    self.wfile.flush()
                time.sleep(0.2)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kubelet API: " + format, *args)


def _cluster_of(kubeconfig: Path) -> tuple[str, bytes]:
    """The server URL and CA bundle of the kubeconfig's current context."""
    config = yaml.safe_load(kubeconfig.read_text())
    context = next(
        c["context"] for c in config["contexts"] if c["name"] == config["current-context"]
    )
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    else:
        ca = (kubeconfig.parent / cluster["certificate-authority"]).read_bytes()
    return str(cluster["server"]), ca


# --- one pod ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _User:
    """Who a container runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary, from the image's /etc/group
    home: str  # the user's home in the image's /etc/passwd, else /


def _identity(image: Image, security: Mapping[str, Any]) -> _User:
    """The user a container runs as, as containerd finds it: runAsUser (and runAsGroup),
    else the image's USER (`uid`, `uid:gid`, or names in the image's /etc/passwd and
    /etc/group); a group not given is the user's primary one, else 0."""
    passwd = _table(image.rootfs / "etc" / "passwd")
    groups = _table(image.rootfs / "etc" / "group")
    user, _, group = image.user.partition(":")
    if security.get("runAsUser") is not None:
        uid, group = int(security["runAsUser"]), ""
    else:
        uid = _lookup(user or "0", passwd, "user")
    entry = next((row for row in passwd.values() if row[2] == str(uid)), None)
    if security.get("runAsGroup") is not None:
        gid = int(security["runAsGroup"])
    elif group:
        gid = _lookup(group, groups, "group")
    else:
        gid = int(entry[3]) if entry and len(entry) > 3 and entry[3].isdigit() else 0
    name = entry[0] if entry else None
    member_of = tuple(
        int(row[2])
        for row in groups.values()
        if len(row) > 3 and name in row[3].split(",") and row[2].isdigit()
    )
    home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
    return _User(uid, gid, member_of, home)


def _table(path: Path) -> dict[str, list[str]]:
    """/etc/passwd or /etc/group of an image, by name."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    rows = [line.split(":") for line in lines if line and not line.startswith("#")]
    return {row[0]: row for row in rows if len(row) >= 3}


def _lookup(name: str, table: Mapping[str, list[str]], what: str) -> int:
    if name.isdigit():
        return int(name)
    row = table.get(name)
    if row is None or not row[2].isdigit():
        raise ContainerConfigError(f"unable to find {what} {name}: no matching entries in image")
    return int(row[2])


def _capability(name: str) -> str:
    """`CAP_NET_RAW`, `net_raw` and `NET_RAW` are one capability, as containerd reads them."""
    return name.upper().removeprefix("CAP_")


def _termination_target(spec: Mapping[str, Any]) -> str:
    return str(spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH)


@dataclass
class _Container:
    """The kubelet's view of one container of the pod."""

    spec: dict[str, Any]
    init: bool
    status: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])


class _PodWorker(threading.Thread):
    """Runs one pod: prepares its directory, runs init containers then containers, restarts
    them per restartPolicy, enforces activeDeadlineSeconds, reports status, and on deletion
    kills the processes and completes the deletion."""

    def __init__(self, kubelet: LocalKubelet, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.spec: dict[str, Any] = pod["spec"]
        self.restart_policy: str = self.spec.get("restartPolicy", "Always")
        self.dir = kubelet.root / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid}"
        status = pod.get("status", {})
        self.start_time: str = status.get("startTime") or now()
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.conditions: dict[str, dict[str, Any]] = {
            c["type"]: c for c in status.get("conditions", []) if "type" in c
        }
        self.containers = [
            _Container(c, True, self._waiting(c, "PodInitializing"))
            for c in self.spec.get("initContainers", [])
        ] + [
            _Container(c, False, self._waiting(c, "ContainerCreating"))
            for c in self.spec["containers"]
        ]
        self.container_names = {c.name for c in self.containers}
        self._halt = threading.Event()  # set when the pod must stop (not `_stop`: Thread has one)
        self._grace = MAX_GRACE_SECONDS
        self._deleting = False  # the pod has a deletionTimestamp
        self._gone = False  # the pod object no longer exists
        self.unsent = False  # the last status did not reach the API server: send it again
        self._shutdown = False  # the kubelet stops: kill, report nothing
        self._status_lock = threading.Lock()
        self.volumes: dict[str, Path] = {}  # by volume name, once made

    @staticmethod
    def _waiting(spec: dict[str, Any], reason: str) -> dict[str, Any]:
        return {
            "name": spec["name"],
            "image": spec.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": reason}},
        }

    # --- control from the kubelet ---

    def terminate(self, grace: float, *, gone: bool = False, shutdown: bool = False) -> None:
        """Stop the pod's processes within `grace` seconds (capped)."""
        spec_grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        self._grace = min(grace, spec_grace, MAX_GRACE_SECONDS)
        self._deleting = self._deleting or not shutdown
        self._gone = self._gone or gone
        self._shutdown = self._shutdown or shutdown
        self._halt.set()

    def is_running(self, name: str) -> bool:
        return any(
            c.name == name and c.process and c.process.poll() is None for c in self.containers
        )

    def log_path(self, name: str, previous: bool = False) -> Path:
        return self.dir / "logs" / f"{name}.log{'.previous' if previous else ''}"

    # --- the pod's life ---

    def run(self) -> None:
        deadline = self.spec.get("activeDeadlineSeconds")
        timer = None
        if deadline is not None:
            started = datetime.strptime(self.start_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            left = deadline - (datetime.now(UTC) - started).total_seconds()
            timer = threading.Timer(max(left, 0.0), self._expire)
            timer.daemon = True
            timer.start()
        try:
            self._run()
        except Exception as exc:
            log.exception("pod %s/%s failed in the kubelet", self.namespace, self.pod_name)
            self._finish("Failed", "KubeletError", f"local kubelet error: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
            self.kubelet._done(self)

    def _expire(self) -> None:
        """activeDeadlineSeconds has passed: kill everything, fail the pod."""
        self.reason = "DeadlineExceeded"
        self.message = "Pod was active on the node longer than the specified deadline"
        self._halt.set()

    def _run(self) -> None:
        self._set_condition("PodScheduled", True)
        self._set_condition("PodReadyToStartContainers", False)
        self._set_condition("Initialized", not any(c.init for c in self.containers))
        self._publish()
        if not self._prepare():
            self._finish("Failed", self.reason, self.message)
            return
        self._set_condition("PodReadyToStartContainers", True)
        self._publish()
        for container in (c for c in self.containers if c.init):
            if self._run_container(container) != 0:
                self._finish("Failed", self.reason, self.message)
                return
        self._set_condition("Initialized", True)
        mains = [c for c in self.containers if not c.init]
        for container in mains:
            container.status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        threads = [threading.Thread(target=self._guarded, args=(c,), daemon=True) for c in mains]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = [c.status["state"].get("terminated", {}).get("exitCode") for c in mains]
        if self.reason is None and all(code == 0 for code in codes):
            self._finish("Succeeded", None, None)
        else:
            self._finish("Failed", self.reason, self.message)

    def _prepare(self) -> bool:
        """Make the pod's directories and volumes; False if the pod was stopped first.

        A volume that cannot be made yet (a Secret not there, a token the Node authorizer
        does not grant yet: it learns of new pods a moment after they are bound) keeps the
        containers waiting in ContainerCreating, as a real kubelet's failed mount does."""
        for sub in ("logs", "termination", "volumes", "layers"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_etc()
        while not self._halt.is_set():
            try:
                for volume in self.spec.get("volumes", []):
                    self.volumes[volume["name"]] = self._make_volume(volume)
                return True
            except (ContainerConfigError, ApiException, OSError) as exc:
                message = f"MountVolume.SetUp failed: {_describe(exc)}"
                for container in self.containers:
                    container.status["state"] = {
                        "waiting": {"reason": "ContainerCreating", "message": message}
                    }
                self._publish()
                self._halt.wait(CONFIG_RETRY_SECONDS)
        return False

    def _write_etc(self) -> None:
        """The pod's /etc/hosts and /etc/hostname, shared by its containers."""
        hostname = self.spec.get("hostname") or self.pod_name
        (self.dir / "hostname").write_text(hostname + "\n")
        (self.dir / "hosts").write_text(
            "# Kubernetes-managed hosts file (local kubelet).\n"
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{LOOPBACK}\t{hostname}\n"
        )

    def _make_volume(self, volume: dict[str, Any]) -> Path:
        """One volume's files under the pod's directory, as the volume plugin would make them."""
        name = str(volume["name"])
        path = self.dir / "volumes" / name
        if "emptyDir" in volume:
            path.mkdir(exist_ok=True)
            path.chmod(0o777)  # as the kubelet makes it: any user of the pod may write
            group = self.spec.get("securityContext", {}).get("fsGroup")
            if group is not None:  # and what is made in it belongs to the fsGroup
                os.chown(path, 0, int(group))
                path.chmod(0o2777)
            return path
        if "hostPath" in volume:
            return Path(volume["hostPath"]["path"])
        files: dict[str, tuple[bytes, int | None]] = {}
        mode: int = 0o644
        if "secret" in volume:
            source = volume["secret"]
            mode = source.get("defaultMode", mode)
            data = self._secret(source["secretName"], bool(source.get("optional")))
            files = self._items(data, source)
        elif "configMap" in volume:
            source = volume["configMap"]
            mode = source.get("defaultMode", mode)
            data = self._config_map(source["name"], bool(source.get("optional")))
            files = self._items(data, source)
        elif "downwardAPI" in volume:
            mode = volume["downwardAPI"].get("defaultMode", mode)
            files = self._downward(volume["downwardAPI"].get("items", []))
        elif "projected" in volume:
            mode = volume["projected"].get("defaultMode", mode)
            for source in volume["projected"].get("sources", []):
                files.update(self._projected(source))
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise ContainerConfigError(
                f"volume {name!r}: the local kubelet does not support {', '.join(kinds)}"
            )
        staging = self.dir / "volumes" / f".{name}.new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        group = self.spec.get("securityContext", {}).get("fsGroup")
        for relative, (content, item_mode) in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            file_mode = mode if item_mode is None else item_mode
            if group is not None:  # the pod's fsGroup owns them, as the kubelet sets it
                os.chown(target, 0, int(group))
            target.chmod(file_mode)
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)
        return path

    @staticmethod
    def _items(
        data: Mapping[str, bytes], source: dict[str, Any]
    ) -> dict[str, tuple[bytes, int | None]]:
        """A Secret's or ConfigMap's keys as files: all of them, or the `items` asked for."""
        items = source.get("items")
        if items is None:
            return {key: (value, None) for key, value in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise ContainerConfigError(f"configmap or secret has no key {item['key']!r}")
            files[item["path"]] = (data[item["key"]], item.get("mode"))
        return files

    def _downward(self, items: list[dict[str, Any]]) -> dict[str, tuple[bytes, int | None]]:
        files = {}
        for item in items:
            if "fieldRef" not in item:
                raise ContainerConfigError(
                    f"downwardAPI item {item.get('path')!r}: the local kubelet reads fieldRef only"
                )
            value = self._field(item["fieldRef"]["fieldPath"])
            files[item["path"]] = (value.encode(), item.get("mode"))
        return files

    def _projected(self, source: dict[str, Any]) -> dict[str, tuple[bytes, int | None]]:
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            return {token["path"]: (self._token(token).encode(), None)}
        if "configMap" in source:
            ref = source["configMap"]
            return self._items(self._config_map(ref["name"], bool(ref.get("optional"))), ref)
        if "secret" in source:
            ref = source["secret"]
            return self._items(self._secret(ref["name"], bool(ref.get("optional"))), ref)
        if "downwardAPI" in source:
            return self._downward(source["downwardAPI"].get("items", []))
        raise ContainerConfigError(
            f"the local kubelet does not support the projected source {sorted(source)}"
        )

    def _token(self, source: dict[str, Any]) -> str:
        """A service-account token for this pod from the TokenRequest API, bound to the pod."""
        account = self.spec.get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": int(source.get("expirationSeconds") or TOKEN_SECONDS),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.pod_name,
                "uid": self.uid,
            },
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        token: str = self.kubelet.api.call("POST", path, request)["status"]["token"]
        return token

    def _guarded(self, container: _Container) -> None:
        """A container's thread: a kubelet bug fails the pod instead of leaving it hanging."""
        try:
            self._run_container(container)
        except Exception as exc:
            log.exception("container %s of pod %s failed in the kubelet", container.name, self.name)
            self.reason, self.message = "KubeletError", f"local kubelet error: {exc}"
            self._halt.set()

    def _run_container(self, container: _Container) -> int | None:
        """Run one container until it is done for good; its last exit code, None if it never
        ran. Restarts follow restartPolicy (init containers restart only after failures)."""
        backoff = BACKOFF_SECONDS[0]
        status = container.status
        while not self._halt.is_set():
            try:
                spec, image = self._container_spec(container)
            except ImageUnavailable as exc:
                # As a kubelet that may not pull: the pod waits until it is deleted or its
                # deadline passes; nothing ever fails it.
                status["state"] = {"waiting": {"reason": "ErrImageNeverPull", "message": str(exc)}}
                self._publish()
                self._halt.wait()
                return None
            except ContainerConfigError as exc:
                status["state"] = {
                    "waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}
                }
                self._publish()
                self._halt.wait(CONFIG_RETRY_SECONDS)
                continue
            code = self._execute(container, spec, image)
            if container.init:
                restart = code != 0 and self.restart_policy != "Never"
            else:
                restart = self.restart_policy == "Always" or (
                    self.restart_policy == "OnFailure" and code != 0
                )
            if not restart or self._halt.is_set():
                self._publish()
                return code
            status["restartCount"] += 1
            status["lastState"] = {"terminated": status["state"]["terminated"]}
            message = f"back-off {backoff:g}s restarting container {container.name}"
            status["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            self._publish()
            self._halt.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_SECONDS[1])
        return None

    def _execute(self, container: _Container, spec: runtime.ContainerSpec, image: Image) -> int:
        """Start the container, report it running, wait for it (killing it on deletion or
        deadline), and record how it ended."""
        status = container.status
        log_path = self.log_path(container.name)
        if log_path.exists():
            log_path.replace(self.log_path(container.name, previous=True))
        message_path = self._termination_path(container.spec)
        message_path.write_bytes(b"")
        message_path.chmod(0o666)  # as the kubelet makes it: the container's user writes it
        start_error = Path(spec.start_error)
        layer = Path(spec.layer)
        shutil.rmtree(layer, ignore_errors=True)
        spec_path = layer.with_suffix(".json")
        spec.write(spec_path)
        started = now()
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-I", runtime.__file__, str(spec_path)],
                env={},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # This thread waits for the process: it outlives it, unless we are killed.
                preexec_fn=die_with_parent,
            )
        container.process = process
        container_id = f"local://{process.pid}"
        status.update(
            containerID=container_id,
            imageID=image.id,
            started=True,
            ready=not container.init,
            state={"running": {"startedAt": started}},
        )
        self._publish()
        while process.poll() is None:
            if self._halt.wait(POLL_SECONDS):
                self._kill(process)
        _signal_group(process.pid, signal.SIGKILL)  # whatever it left behind
        shutil.rmtree(layer, ignore_errors=True)  # a restarted container starts afresh
        code = _exit_code(process.returncode)
        failed_start = start_error.read_text(errors="replace") if start_error.exists() else ""
        start_error.unlink(missing_ok=True)
        spec_path.unlink(missing_ok=True)
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": "StartError" if failed_start else "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now(),
            "containerID": container_id,
        }
        message = message_path.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        policy = container.spec.get("terminationMessagePolicy", "File")
        if failed_start:
            message = f"failed to start container {container.name!r}: {failed_start}"
        elif not message and code != 0 and policy == "FallbackToLogsOnError":
            message = _read_tail(log_path, FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
        if message:
            terminated["message"] = message
        status.update(ready=False, started=False, state={"terminated": terminated})
        return code

    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM the container (the shim passes it to PID 1 only, as a runtime signals
        it); SIGKILL its whole process group after the grace period."""
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(self._grace)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()

    # --- command and environment ---

    def _container_spec(self, container: _Container) -> tuple[runtime.ContainerSpec, Image]:
        """How to run the container: its image, command, environment, identity and mounts,
        as a kubelet and its runtime put them together from the pod spec and the image."""
        spec = container.spec
        image = self.kubelet.images.find(spec.get("image", ""))
        if image is None:
            raise ImageUnavailable(
                f"Container image {spec.get('image')!r} is not present with pull policy of "
                "Never (the local kubelet pulls nothing: `make images` builds the project's)"
            )
        security = {**self.spec.get("securityContext", {}), **spec.get("securityContext", {})}
        user = _identity(image, security)
        if security.get("runAsNonRoot") and user.uid == 0:
            raise ContainerConfigError(
                f'container has runAsNonRoot and image will run as root (pod: "{self.pod_name}'
                f'_{self.namespace}({self.uid})", container: {container.name})'
            )
        declared = self._declared_env(spec)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": self.spec.get("hostname") or self.pod_name,
            "HOME": user.home,
            **image.env,
            **declared,
        }
        command, args = spec.get("command"), spec.get("args")
        if not command:
            command, args = list(image.entrypoint), args if args is not None else list(image.cmd)
        argv = [expand(part, declared) for part in [*command, *(args or [])]]
        if not argv:
            raise ContainerConfigError(f"container {container.name!r}: no command specified")
        pod_security = self.spec.get("securityContext", {})
        groups = [*user.groups, *(int(g) for g in pod_security.get("supplementalGroups", []))]
        if pod_security.get("fsGroup") is not None:
            groups.append(int(pod_security["fsGroup"]))
        capabilities = set(runtime.DEFAULT_CAPABILITIES)
        if security.get("privileged"):
            capabilities = set(runtime.CAPABILITIES)
        asked = spec.get("securityContext", {}).get("capabilities", {})
        dropped = {_capability(c) for c in asked.get("drop", [])}
        capabilities = set() if "ALL" in dropped else capabilities - dropped
        capabilities |= {_capability(c) for c in asked.get("add", [])}
        mounts = [
            runtime.Mount(str(self._termination_path(spec)), _termination_target(spec)),
            runtime.Mount(str(self.dir / "hosts"), "/etc/hosts"),
            runtime.Mount(str(self.dir / "hostname"), "/etc/hostname"),
        ]
        if Path("/etc/resolv.conf").exists():
            mounts.append(runtime.Mount("/etc/resolv.conf", "/etc/resolv.conf", read_only=True))
        read_only_kinds = ("secret", "configMap", "downwardAPI", "projected")
        kinds = {v["name"]: v for v in self.spec.get("volumes", [])}
        for mount in spec.get("volumeMounts", []):
            source = self.volumes.get(mount["name"])
            if source is None:
                raise ContainerConfigError(
                    f"volumeMount {mount['name']!r} names no volume of the pod"
                )
            if mount.get("subPath"):
                source = self._sub_path(source, mount["subPath"])
            forced = any(k in kinds[mount["name"]] for k in read_only_kinds)
            read_only = bool(mount.get("readOnly")) or forced
            mounts.append(runtime.Mount(str(source), mount["mountPath"], read_only))
        layer = self.dir / "layers" / f"{container.name}-{container.status['restartCount']}"
        return runtime.ContainerSpec(
            rootfs=str(image.rootfs),
            layer=str(layer),
            argv=argv,
            env=env,
            uid=user.uid,
            gid=user.gid,
            groups=sorted(set(groups)),
            cwd=spec.get("workingDir") or image.working_dir or "/",
            hostname=self.spec.get("hostname") or self.pod_name,
            read_only_root=bool(security.get("readOnlyRootFilesystem")),
            no_new_privs=security.get("allowPrivilegeEscalation") is False,
            capabilities=sorted(capabilities),
            mounts=mounts,
            start_error=str(layer.with_suffix(".start-error")),
        ), image

    def _declared_env(self, spec: dict[str, Any]) -> dict[str, str]:
        """What the kubelet puts in the environment, in its order: service variables, then
        envFrom, then env. `$(VAR)` expands only these (never the image's ENV); the runtime
        lays them over the image's ENV."""
        port = str(self.kubelet.service_port)
        env = {
            "KUBERNETES_SERVICE_HOST": LOOPBACK,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
        }
        for source in spec.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref, values = source["configMapRef"], self._config_map
            elif "secretRef" in source:
                ref, values = source["secretRef"], self._secret
            else:
                continue
            data = values(ref["name"], bool(ref.get("optional")))
            env.update(
                {prefix + k: v.decode(errors="replace") for k, v in data.items() if "=" not in k}
            )
        for var in spec.get("env", []):
            if "valueFrom" in var:
                value = self._value_from(var["valueFrom"])
                if value is not None:
                    env[var["name"]] = value
            else:
                env[var["name"]] = expand(var.get("value", ""), env)
        return env

    def _sub_path(self, volume: Path, sub_path: str) -> Path:
        """A volume's subPath, made if missing; refused when it leads out of the volume
        (a symlink a container left there), as a kubelet refuses it."""
        source = volume / sub_path
        if not source.exists() and not source.is_symlink():
            source.mkdir(parents=True)
        if not source.resolve().is_relative_to(volume.resolve()):
            raise ContainerConfigError(
                f"subpath {str(source)!r} not within volume path {str(volume)!r}"
            )
        return source.resolve()

    def _termination_path(self, spec: dict[str, Any]) -> Path:
        """Where the kubelet keeps a container's termination message file."""
        return self.dir / "termination" / str(spec["name"])

    def _value_from(self, source: dict[str, Any]) -> str | None:
        if "fieldRef" in source:
            return self._field(source["fieldRef"]["fieldPath"])
        for kind, values in (("secretKeyRef", self._secret), ("configMapKeyRef", self._config_map)):
            if kind in source:
                ref = source[kind]
                optional = bool(ref.get("optional"))
                data = values(ref["name"], optional)
                if ref["key"] not in data and not optional:
                    raise ContainerConfigError(
                        f"couldn't find key {ref['key']} in {ref['name']} ({kind})"
                    )
                value = data.get(ref["key"])
                return None if value is None else value.decode(errors="replace")
        raise ContainerConfigError(
            f"the local kubelet does not support this env source: {sorted(source)}"
        )

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple: dict[str, str] = {
            "metadata.name": self.pod_name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": self.kubelet.node_name,
            "spec.serviceAccountName": str(self.spec.get("serviceAccountName", "default")),
            "status.podIP": LOOPBACK,
            "status.podIPs": LOOPBACK,
            "status.hostIP": LOOPBACK,
            "status.hostIPs": LOOPBACK,
        }
        if path in simple:
            return simple[path]
        for prefix, values in (
            ("metadata.labels", "labels"),
            ("metadata.annotations", "annotations"),
        ):
            if path.startswith(prefix + "['") and path.endswith("']"):
                return str(meta.get(values, {}).get(path[len(prefix) + 2 : -2], ""))
        raise ContainerConfigError(f"the local kubelet does not support fieldRef {path!r}")

    def _config_map(self, name: str, optional: bool) -> dict[str, bytes]:
        found = self._read("configmaps", name, optional)
        binary = {k: base64.b64decode(v) for k, v in found.get("binaryData", {}).items()}
        return {**binary, **{k: v.encode() for k, v in found.get("data", {}).items()}}

    def _secret(self, name: str, optional: bool) -> dict[str, bytes]:
        found = self._read("secrets", name, optional)
        return {k: base64.b64decode(v) for k, v in found.get("data", {}).items()}

    def _read(self, resource: str, name: str, optional: bool) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self.kubelet.api.call(
                "GET", f"/api/v1/namespaces/{self.namespace}/{resource}/{name}"
            )
            return found
        except Exception as exc:
            if isinstance(exc, ApiException) and exc.status == 404 and optional:
                return {}
            # 403 too: the Node authorizer sees a new pod's references a moment late.
            raise ContainerConfigError(
                f"{resource} {self.namespace}/{name}: {_describe(exc)}"
            ) from None

    # --- status ---

    def _set_condition(self, kind: str, value: bool, reason: str | None = None) -> None:
        status = "True" if value else "False"
        old = self.conditions.get(kind)
        condition: dict[str, Any] = {"type": kind, "status": status}
        condition["lastTransitionTime"] = (
            old["lastTransitionTime"]
            if old and old.get("status") == status and old.get("lastTransitionTime")
            else now()
        )
        if reason:
            condition["reason"] = reason
        self.conditions[kind] = condition

    def _finish(self, phase: str, reason: str | None, message: str | None) -> None:
        """Report the terminal phase; then complete a requested deletion."""
        self.phase, self.reason, self.message = phase, reason, message
        for container in self.containers:
            state = container.status["state"]
            if "running" in state:
                continue  # cannot happen: every process has been waited for
            if "waiting" in state and (self._deleting or reason == "DeadlineExceeded"):
                container.status["state"] = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                    }
                }
        self._publish()
        if self._deleting and not self._gone and not self._shutdown:
            self.kubelet.delete_pod(self.namespace, self.pod_name, self.uid)

    def _publish(self) -> None:
        """Patch the pod's status with what the kubelet knows now."""
        if self._gone or self._shutdown:
            return
        with self._status_lock:
            mains = [c for c in self.containers if not c.init]
            terminal = self.phase in ("Succeeded", "Failed")
            running = all("running" in c.status["state"] for c in mains)
            if not terminal and any("running" in c.status["state"] for c in mains):
                self.phase = "Running"
            if terminal:
                self._set_condition("ContainersReady", False, "PodCompleted")
                self._set_condition("Ready", False, "PodCompleted")
            else:
                reason = None if running else "ContainersNotReady"
                self._set_condition("ContainersReady", running, reason)
                self._set_condition("Ready", running, reason)
            if self.conditions["Initialized"]["status"] != "True":
                self.conditions["Initialized"]["reason"] = "ContainersNotInitialized"
            else:
                self.conditions["Initialized"].pop("reason", None)
            status: dict[str, Any] = {
                "phase": self.phase,
                "conditions": list(self.conditions.values()),
                "hostIP": LOOPBACK,
                "hostIPs": [{"ip": LOOPBACK}],
                "podIP": LOOPBACK,
                "podIPs": [{"ip": LOOPBACK}],
                "startTime": self.start_time,
                "containerStatuses": [dict(c.status) for c in mains],
            }
            if len(mains) < len(self.containers):
                status["initContainerStatuses"] = [
                    dict(c.status) for c in self.containers if c.init
                ]
            if self.reason:
                status["reason"] = self.reason
            if self.message:
                status["message"] = self.message
            body = {"metadata": {"uid": self.uid}, "status": status}
            path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status"
            for attempt in range(STATUS_ATTEMPTS):
                try:
                    self.kubelet.api.call("PATCH", path, body, None, PATCH)
                    self.unsent = False
                    return
                except ApiException as exc:
                    if exc.status in (404, 409):  # deleted, or replaced by a namesake
                        self._gone = True
                        return
                    error: Exception = exc
                    if exc.status < 500 and exc.status != 429:
                        break
                except Exception as exc:  # the connection: worth another try
                    error = exc
                self.unsent = True  # from now: a resend may find the server back before we do
                if attempt + 1 < STATUS_ATTEMPTS:
                    time.sleep(0.5 * (attempt + 1))
            log.warning(
                "status of pod %s/%s not sent (sent again later): %s",
                self.namespace, self.pod_name, error,
            )  # fmt: skip
