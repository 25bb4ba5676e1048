"""A real Kubernetes control plane on loopback, run from the project's pinned binaries.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as child processes, each
in its own session so that `hack/cluster.py up` can leave them running; their pids go to
`state.json` in the state directory so another process can stop them. Certificates come from
a throwaway CA made with the `openssl` CLI. Nothing is downloaded. See docs/e2e.md.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

LOOPBACK = "127.0.0.1"
# Services get addresses from this range, but nothing routes them: there is no kube-proxy.
SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# kube-apiserver's default plugins are a real cluster's (NamespaceLifecycle, LimitRanger,
# ServiceAccount, DefaultStorageClass, ValidatingAdmissionPolicy, ResourceQuota, ...);
# kubeadm adds NodeRestriction, so that a node may only touch its own objects.
EXTRA_ADMISSION_PLUGINS = ("NodeRestriction",)
STATE_FILE = "state.json"
STOP_GRACE_SECONDS = 5.0
START_TIMEOUT_SECONDS = 180.0
LOG_TAIL_LINES = 30

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The control plane could not be started; the message carries the failing log's tail."""


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so that they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def eventually(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.5) -> T:
    """Poll `check` until it returns something other than None or False; that value.

    The e2e tier's only way to wait: bounded, and it says what it waited for when it gives up.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(every)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- certificates -----------------------------------------------------------------------


class Pki:
    """A throwaway CA and certificates signed by it, as PEM files made by the `openssl` CLI.

    Keys are ECDSA P-256: fast to generate and accepted everywhere in Kubernetes.
    """

    def __init__(self, directory: Path) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ClusterError("the `openssl` CLI is needed to make the cluster's certificates")
        self._openssl = openssl
        self.dir = directory
        self.ca_cert = directory / "ca.crt"
        self.ca_key = directory / "ca.key"

    def _run(self, *args: str | Path) -> None:
        result = subprocess.run(
            [self._openssl, *map(str, args)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ClusterError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    def create_ca(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._run(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", self.ca_key, "-out", self.ca_cert, "-days", "3650",
            "-subj", "/CN=agent-operator-e2e-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip

    def issue(
        self,
        name: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server: bool = False,
        client: bool = True,
    ) -> tuple[Path, Path]:
        """A certificate and key for `name`; a server one is valid for 127.0.0.1 and the
        in-cluster names of the API server."""
        key, csr, crt, ext = (self.dir / f"{name}{s}" for s in (".key", ".csr", ".crt", ".ext"))
        subject = "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"
        self._run(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", csr, "-subj", subject,
        )  # fmt: skip
        usages = [u for u, wanted in (("serverAuth", server), ("clientAuth", client)) if wanted]
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={','.join(usages)}",
        ]
        if server:
            names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
            sans = [f"IP:{LOOPBACK}", *(f"DNS:{n}" for n in names)]
            lines.append(f"subjectAltName={','.join(sans)}")
        ext.write_text("\n".join(lines) + "\n")
        self._run(
            "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
            "-set_serial", f"0x{secrets.token_hex(15)}", "-days", "365", "-sha256",
            "-extfile", ext, "-out", crt,
        )  # fmt: skip
        csr.unlink()
        ext.unlink()
        return crt, key

    def signing_key_pair(self, name: str) -> tuple[Path, Path]:
        """A private key and its public key, for signing service-account tokens."""
        private, public = self.dir / f"{name}.key", self.dir / f"{name}.pub"
        self._run(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", private
        )
        self._run("pkey", "-in", private, "-pubout", "-out", public)
        return private, public


def write_kubeconfig(
    path: Path, server: str, ca_cert: Path, cert: Path, key: Path, user: str
) -> Path:
    """A self-contained kubeconfig (certificates inline, so it can be copied anywhere)."""

    def data(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "e2e",
                "cluster": {"server": server, "certificate-authority-data": data(ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": data(cert), "client-key-data": data(key)},
            }
        ],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# --- processes ----------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a pid's reuse apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the thread that started it dies, so a
    killed test run leaves no process behind. Only a pre-resolved C call: safe after a fork
    from a threaded process."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def terminate(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the process's group, SIGKILL it after `grace` seconds; then reap it."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    # Whatever the process left behind in its group goes too.
    _signal_group(process.pid, signal.SIGKILL)


def record_process(state_dir: Path, name: str, pid: int) -> None:
    """Add a process to the state file, so that `stop_recorded` can stop it later."""
    path = state_dir / STATE_FILE
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"processes": []}
    state["processes"].append({"name": name, "pid": pid, "start": _start_time(pid)})
    path.write_text(json.dumps(state, indent=2))


def recorded_alive(state_dir: Path) -> list[str]:
    """Names of the recorded processes that still run."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return []
    entries = json.loads(path.read_text())["processes"]
    return [e["name"] for e in entries if e["start"] and _start_time(e["pid"]) == e["start"]]


def stop_recorded(state_dir: Path, grace: float = STOP_GRACE_SECONDS) -> list[str]:
    """Stop the processes of the state file, newest first, from any process; their names.

    A pid whose start time differs from the recorded one belongs to someone else: skipped.
    """
    path = state_dir / STATE_FILE
    if not path.exists():
        return []
    stopped = []
    for entry in reversed(json.loads(path.read_text())["processes"]):
        pid, start = entry["pid"], entry["start"]
        if not start or _start_time(pid) != start:
            continue
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _start_time(pid) == start and time.monotonic() < deadline:
            time.sleep(0.1)
        if _start_time(pid) == start:
            _signal_group(pid, signal.SIGKILL)
        stopped.append(entry["name"])
    path.unlink()
    return stopped


@dataclass
class _Component:
    name: str
    args: tuple[str, ...]
    process: subprocess.Popen[bytes]
    log: Path


# --- the control plane --------------------------------------------------------------------


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1.

    `start()` returns once the API server is ready, both controllers report healthy and the
    service-account controller has made `default/default` (pods need it to be admitted).
    """

    def __init__(self, bin_dir: Path, state_dir: Path, *, detach: bool = False) -> None:
        """`detach`: the components outlive this process (else they get SIGTERM when it
        dies); `stop_recorded(state_dir)` stops them from anywhere."""
        self.bin_dir = bin_dir
        self.detach = detach
        self.state_dir = state_dir
        self.pki = Pki(state_dir / "pki")
        # Aggregated API servers trust requests proxied with this CA's client cert only.
        self.front_proxy = Pki(state_dir / "pki" / "front-proxy")
        self.logs = state_dir / "logs"
        self.kubeconfig = state_dir / "admin.kubeconfig"
        self.port = 0
        self.version = ""
        self.start_seconds = 0.0
        self._components: list[_Component] = []
        self._tls: ssl.SSLContext | None = None

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Start every component in a fresh state directory; on failure stop them all."""
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            if not os.access(self.bin_dir / name, os.X_OK):
                raise ClusterError(
                    f"no {name} in {self.bin_dir} (run `bash hack/build-binaries.sh`)"
                )
        begun = time.monotonic()
        deadline = begun + timeout
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        try:
            self._start(deadline)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - begun

    def _start(self, deadline: float) -> None:
        pki = self.pki
        pki.create_ca()
        serving = pki.issue("serving", "kube-apiserver", server=True, client=False)
        admin = pki.issue("admin", "kubernetes-admin", ["system:masters"])
        apiserver_kubelet = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
        kcm = pki.issue("kube-controller-manager", "system:kube-controller-manager")
        scheduler = pki.issue("kube-scheduler", "system:kube-scheduler")
        sa_key, sa_pub = pki.signing_key_pair("service-account")
        self.front_proxy.create_ca()
        proxy_client = self.front_proxy.issue("front-proxy-client", "front-proxy-client")
        self._tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        self._tls.load_cert_chain(*admin)

        etcd_port, peer_port, self.port, kcm_port, scheduler_port = free_ports(5)
        etcd_url, peer_url = f"http://{LOOPBACK}:{etcd_port}", f"http://{LOOPBACK}:{peer_port}"
        self._spawn(
            "etcd",
            "--name=e2e",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}",
            # Test data: losing it on a power cut is fine, waiting for the disk is not.
            "--unsafe-no-fsync",
            "--log-level=warn",
        )
        self._wait("etcd", deadline, lambda: self._etcd_healthy(etcd_port))

        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={serving[0]}",
            f"--tls-private-key-file={serving[1]}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins={','.join(EXTRA_ADMISSION_PLUGINS)}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The endpoints of the `kubernetes` Service may not be a loopback address.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={apiserver_kubelet[0]}",
            f"--kubelet-client-key={apiserver_kubelet[1]}",
            f"--kubelet-certificate-authority={pki.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--requestheader-client-ca-file={self.front_proxy.ca_cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={proxy_client[0]}",
            f"--proxy-client-key-file={proxy_client[1]}",
            "--profiling=false",
        )
        self._wait("kube-apiserver", deadline, lambda: self.get("/readyz")[0] == 200)
        self.version = json.loads(self.get("/version")[1])["gitVersion"]
        write_kubeconfig(self.kubeconfig, self.server, pki.ca_cert, *admin, "kubernetes-admin")

        kcm_config = write_kubeconfig(
            self.state_dir / "kube-controller-manager.kubeconfig",
            self.server, pki.ca_cert, *kcm, "system:kube-controller-manager",
        )  # fmt: skip
        self._spawn(
            "kube-controller-manager",
            *self._component_flags(kcm_config, kcm_port, serving),
            "--controllers=*",
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={sa_key}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Its default is under /usr/libexec, which it would create.
            f"--flex-volume-plugin-dir={self.state_dir / 'flexvolume'}",
        )
        scheduler_config = write_kubeconfig(
            self.state_dir / "kube-scheduler.kubeconfig",
            self.server, pki.ca_cert, *scheduler, "system:kube-scheduler",
        )  # fmt: skip
        self._spawn(
            "kube-scheduler", *self._component_flags(scheduler_config, scheduler_port, serving)
        )
        for name, port in (
            ("kube-controller-manager", kcm_port),
            ("kube-scheduler", scheduler_port),
        ):
            self._wait(name, deadline, functools.partial(self._healthy, port))
        self._wait(
            "the default ServiceAccount",
            deadline,
            lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        )

    @staticmethod
    def _component_flags(kubeconfig: Path, port: int, serving: tuple[Path, Path]) -> list[str]:
        """Flags shared by the controller manager and the scheduler."""
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={port}",
            f"--tls-cert-file={serving[0]}",
            f"--tls-private-key-file={serving[1]}",
            # One instance: electing a leader would only delay the start.
            "--leader-elect=false",
        ]

    def _spawn(self, name: str, *args: str) -> None:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,
                preexec_fn=None if self.detach else die_with_parent,
            )
        self._components.append(_Component(name, args, process, log))
        record_process(self.state_dir, name, process.pid)

    def restart_apiserver(self, down_seconds: float = 0.0) -> None:
        """Stop the API server, wait `down_seconds`, start it again with the same flags; etcd
        keeps the cluster's state, as in an upgrade or a crash of the server. Returns once it
        is ready again."""
        server = next(c for c in self._components if c.name == "kube-apiserver")
        terminate(server.process)
        self._components.remove(server)
        time.sleep(down_seconds)
        self._spawn(server.name, *server.args)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        self._wait("kube-apiserver", deadline, lambda: self.get("/readyz")[0] == 200)

    def _wait(self, what: str, deadline: float, ready: Callable[[], bool]) -> None:
        """Poll `ready` until it holds; fail at once if a component exits meanwhile."""
        while True:
            for component in self._components:
                code = component.process.poll()
                if code is not None:
                    raise ClusterError(
                        f"{component.name} exited with code {code} while waiting for {what}; "
                        f"{component.log}:\n{tail(component.log)}"
                    )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if ready():
                    return
            if time.monotonic() > deadline:
                logs = "\n".join(f"{c.log}:\n{tail(c.log, 10)}" for c in self._components)
                raise ClusterError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.2)

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            return response.status == 200 and json.loads(response.read()).get("health") == "true"
        finally:
            connection.close()

    def _healthy(self, port: int) -> bool:
        return self.get("/healthz", port)[0] == 200

    def get(self, path: str, port: int | None = None) -> tuple[int, bytes]:
        """GET over TLS as the cluster admin (the controllers' serving cert is ours too)."""
        connection = http.client.HTTPSConnection(
            LOOPBACK, port or self.port, context=self._tls, timeout=5
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def node_credentials(self, node: str) -> NodeCredentials:
        """A kubelet identity for `node` (user system:node:<node>, group system:nodes, so the
        Node authorizer and NodeRestriction apply) and a serving certificate for its log API."""
        cert = self.pki.issue(f"node-{node}", f"system:node:{node}", ["system:nodes"])
        serving = self.pki.issue(f"node-{node}-serving", f"system:node:{node}", server=True)
        kubeconfig = write_kubeconfig(
            self.state_dir / f"node-{node}.kubeconfig",
            self.server, self.pki.ca_cert, *cert, f"system:node:{node}",
        )  # fmt: skip
        return NodeCredentials(kubeconfig, *serving, client_ca=self.pki.ca_cert)

    def stop(self) -> None:
        """Stop every component, newest first (SIGTERM, then SIGKILL after a few seconds)."""
        for component in reversed(self._components):
            terminate(component.process)
        self._components.clear()
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)


@dataclass(frozen=True)
class NodeCredentials:
    """What a kubelet needs: its kubeconfig, its serving cert and key, the clients' CA."""

    kubeconfig: Path
    serving_cert: Path
    serving_key: Path
    client_ca: Path
