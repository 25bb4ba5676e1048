"""Fixtures of the e2e tier: a cluster, the local kubelet, kubectl, a namespace per test,
the CRDs, and the operator as a local process.

The cluster is a control plane started from the pinned binaries for the session, or the one
$KUBECONFIG_E2E (or $E2E_KUBECONFIG) names, e.g. kind; then nothing is started and the local
kubelet is not used. See docs/e2e.md.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent_operator.store import resolve_url
from localcluster.controlplane import ControlPlane, die_with_parent, eventually, free_ports, tail
from localcluster.kubelet import LocalKubelet, project_kubelet

REPO = Path(__file__).resolve().parents[2]
NODE_NAME = "e2e-node"
KUBECONFIG_VARIABLES = ("KUBECONFIG_E2E", "E2E_KUBECONFIG")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs a Kubernetes cluster (started locally unless KUBECONFIG_E2E is set)"
    )


@dataclass(frozen=True)
class Cluster:
    """The cluster under test. `control_plane` is None when it is an external cluster."""

    kubeconfig: Path
    bin_dir: Path | None  # the pinned kubectl and helm, when they have been built
    control_plane: ControlPlane | None

    @property
    def local(self) -> bool:
        return self.control_plane is not None


class KubectlError(Exception):
    """kubectl failed; the message has its command line and stderr."""

    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        self.result = result


class Kubectl:
    """Runs kubectl against the cluster under test (its discovery cache kept out of ~/.kube)."""

    def __init__(self, binary: str, kubeconfig: Path, cache_dir: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.cache_dir = cache_dir

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [
                self.binary,
                f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.cache_dir}",
                *args,
            ],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(list(args), result)
        return result

    def agent(
        self, *args: str, check: bool = True, input: str | None = None, stdin: Any = None
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl agent <args>`: the plugin, found by kubectl on PATH as `kubectl-agent`
        (this venv's). kubectl takes no flag before a plugin's name: the kubeconfig last.
        `stdin`: a file to read from (a terminal) instead of `input`."""
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        result = subprocess.run(
            [self.binary, "agent", *args, f"--kubeconfig={self.kubeconfig}"],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            env=env,
            **({"stdin": stdin} if stdin is not None else {"input": input}),
        )
        if check and result.returncode != 0:
            raise KubectlError(["agent", *args], result)
        return result

    def json(self, *args: str) -> Any:
        """`kubectl <args> -o json`, decoded."""
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, *objects: dict[str, Any], namespace: str | None = None) -> None:
        """Server-side apply of manifests given as dicts."""
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        scope = [f"--namespace={namespace}"] if namespace else []
        self("apply", "--server-side", "-f", "-", *scope, input=manifest)


def _binaries(*flags: str) -> Path | None:
    """The pinned binaries' directory from hack/build-binaries.sh; None if it fails."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "build-binaries.sh"), *flags],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        if not flags:
            pytest.fail(f"hack/build-binaries.sh failed:\n{result.stderr[-4000:]}")
        return None
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The cluster for the session: $KUBECONFIG_E2E's, or a control plane started here."""
    named = next((os.environ[v] for v in KUBECONFIG_VARIABLES if os.environ.get(v)), None)
    if named:
        if not Path(named).is_file():
            pytest.fail(f"KUBECONFIG_E2E names {named}, which is not a file")
        yield Cluster(Path(named), _binaries("--check"), None)
        return
    # Builds what is missing; the first build takes long: run `make bins` beforehand.
    bin_dir = _binaries()
    assert bin_dir is not None
    plane = ControlPlane(bin_dir, tmp_path_factory.mktemp("control-plane"))
    plane.start()
    try:
        yield Cluster(plane.kubeconfig, bin_dir, plane)
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubelet(
    control_plane: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKubelet | None]:
    """The local kubelet on the local control plane; None on an external cluster."""
    plane = control_plane.control_plane
    if plane is None:
        yield None
        return
    credentials = plane.node_credentials(NODE_NAME)
    local = project_kubelet(credentials, tmp_path_factory.mktemp("kubelet"), NODE_NAME)
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def kubectl(
    control_plane: Cluster,
    kubelet: LocalKubelet | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Kubectl:
    """kubectl on the cluster under test, whose node (local or not) is there to run pods."""
    binary = control_plane.bin_dir / "kubectl" if control_plane.bin_dir else None
    found = str(binary) if binary and binary.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl: run `make bins` or put one on PATH")
    return Kubectl(found, control_plane.kubeconfig, tmp_path_factory.mktemp("kubectl-cache"))


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (pods need it); deleted after."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    eventually(
        lambda: (
            kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0
        ),
        30,
        f"the default ServiceAccount in {name}",
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- the operator under test -----------------------------------------------------------

CRD_DIR = REPO / "crds"
OPERATOR_START_SECONDS = 60.0
OPERATOR_STOP_SECONDS = 10.0
OPERATOR_LOG_TAIL = 80


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> list[str]:
    """The project's CRDs, installed as a user does and Established; their names."""
    # Server-side, as the README says; forced, to take over from another field manager (Helm).
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    names = sorted(path.name.removesuffix(".yaml") for path in CRD_DIR.glob("*.yaml"))
    kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        *(f"customresourcedefinition/{name}" for name in names),
    )  # fmt: skip
    return names


@pytest.fixture(scope="module")
def operator_dsn(postgres_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test module's operator; dropped after."""
    server = resolve_url(postgres_dsn)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    database = f"e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    try:
        yield server.set(drivername="postgresql", database=database).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


class OperatorProcess:
    """`python -m agent_operator` as a local process against the cluster under test.

    Its output (both streams, every run) goes to one log file; `tail()` shows its end. It
    counts as started once its metrics endpoint answers, which the operator opens at the end
    of its start-up, after its Job and Pod caches have listed.
    """

    def __init__(self, kubeconfig: Path, dsn: str, log: Path) -> None:
        self.kubeconfig = kubeconfig
        self.dsn = dsn
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.health_port = 0
        self.starts = 0

    def env(self) -> dict[str, str]:
        """The test's environment minus anything of the operator's, plus its settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AGENT_OPERATOR_", "KUBERNETES_", "OPENAI_"))
            and k not in ("KUBECONFIG", *KUBECONFIG_VARIABLES)
        }
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            AGENT_OPERATOR_DSN=self.dsn,
            AGENT_OPERATOR_METRICS_PORT=str(self.metrics_port),
            AGENT_OPERATOR_HEALTH_PORT=str(self.health_port),
            AGENT_OPERATOR_LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, timeout: float = OPERATOR_START_SECONDS) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.metrics_port, self.health_port = free_ports(2)
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== operator start #{self.starts} =====\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent_operator"],
                cwd=self.log.parent,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # a killed test run leaves no operator behind
            )
        deadline = time.monotonic() + timeout
        while not self._metrics_answer():
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"the operator exited with code {code}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"the operator did not start in {timeout:g}s:\n{self.tail()}")
            time.sleep(0.2)

    def _metrics_answer(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=2)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def metrics(self) -> str:
        """The Prometheus metrics text."""
        connection = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies or the OOM killer strikes."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, SIGKILL if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(OPERATOR_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, lines: int = OPERATOR_LOG_TAIL) -> str:
        return tail(self.log, lines)


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster,
    kubelet: LocalKubelet | None,
    kubectl: Kubectl,
    crds: list[str],
    operator_dsn: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator for one test module, watching the whole cluster, with a fresh database.

    Its log is `operator.log` in the fixture's temporary directory; a failing test shows its
    tail. Tests may `kill()` and `start()` it; it is stopped at the end of the module, after
    the AgentTasks being deleted with their namespaces are gone (its finalizer needs it).
    """
    process = OperatorProcess(
        control_plane.kubeconfig,
        operator_dsn,
        tmp_path_factory.mktemp("operator") / "operator.log",
    )
    process.start()
    try:
        yield process
    finally:
        if not process.running:
            process.start()
        try:
            eventually(
                lambda: not _terminating_tasks(kubectl),
                60,
                "the deleted AgentTasks to be finalized",
            )
        except (TimeoutError, KubectlError) as error:
            print(f"operator teardown: {error}\n{process.tail()}", file=sys.stderr)
        process.stop()


def _terminating_tasks(kubectl: Kubectl) -> list[str]:
    listing = kubectl.json("get", "agenttasks", "--all-namespaces")
    return [
        f"{t['metadata']['namespace']}/{t['metadata']['name']}"
        for t in listing["items"]
        if t["metadata"].get("deletionTimestamp")
    ]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test that used the operator shows the end of the operator's log."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        process = getattr(item, "funcargs", {}).get("operator")
        if isinstance(process, OperatorProcess):
            report.sections.append((f"operator log ({process.log})", process.tail()))
