"""Fixtures of the e2e tier: a cluster, the local kubelet, kubectl, a namespace per test.

The cluster is a control plane started from the pinned binaries for the session, or the one
$KUBECONFIG_E2E (or $E2E_KUBECONFIG) names, e.g. kind; then nothing is started and the local
kubelet is not used. See docs/e2e.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import ControlPlane, eventually
from tests.e2e.kubelet import LocalKubelet, project_images

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
    local = LocalKubelet(
        credentials.kubeconfig,
        tmp_path_factory.mktemp("kubelet"),
        project_images(Path(sys.prefix)),
        node_name=NODE_NAME,
        serving=(credentials.serving_cert, credentials.serving_key),
        client_ca=credentials.client_ca,
    )
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
