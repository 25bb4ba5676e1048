"""Kubernetes tools: param validation, configuration errors, and calls over HTTP.

The calls go to kmock's Kubernetes emulator (discovery, objects by namespace and name), run
on 127.0.0.1. It merges an apply instead of doing real server-side apply, so these tests check
what the tools send and how they read answers; a real API server comes with the e2e tier.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kmock import KubernetesEmulator, ResourceInfo, resource

from agent_contract import RiskLevel, ToolRegistry
from agent_runtime.registry import ToolFailure
from tests.runtime.helpers import call
from tests.support.kube import serve_emulator, write_kubeconfig

REGISTRY = ToolRegistry.default()
CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}


@pytest.fixture(autouse=True)
def outside_a_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No service account and no ~/.kube/config, whatever the machine has."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def errors(tool: str, params: dict[str, Any]) -> list[str]:
    found = REGISTRY.get(tool)
    assert found is not None
    return found.param_errors(params)


@pytest.mark.parametrize(
    ("tool", "risk", "capability"),
    [
        ("kubernetes_get", RiskLevel.low, "kubernetes:read"),
        ("kubernetes_list", RiskLevel.low, "kubernetes:read"),
        ("kubernetes_apply", RiskLevel.high, "kubernetes:write"),
        ("kubernetes_delete", RiskLevel.high, "kubernetes:write"),
    ],
)
def test_risk_and_capabilities(tool: str, risk: RiskLevel, capability: str) -> None:
    found = REGISTRY.get(tool)
    assert found is not None
    assert found.risk == risk
    assert found.capabilities == {capability}
    assert "namespace" in found.params_schema["properties"]  # what the safety policy reads


@pytest.mark.parametrize(
    ("tool", "params", "expected"),
    [
        ("kubernetes_get", {"apiVersion": "v1", "kind": "Pod"}, "'name' is a required property"),
        (
            "kubernetes_get",
            {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "Kube_System"},
            "params.namespace: 'Kube_System' does not match",
        ),
        (
            "kubernetes_list",
            {"apiVersion": "v1", "kind": "Pod", "limit": 10_000},
            "params.limit: 10000 is greater than the maximum of 500",
        ),
        (
            "kubernetes_apply",
            {"manifest": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}},
            "params.manifest.metadata: 'name' is a required property",
        ),
        (
            "kubernetes_delete",
            {"apiVersion": "v1", "kind": "Pod", "name": "p", "propagationPolicy": "Later"},
            "params.propagationPolicy: 'Later' is not one of ['Foreground', 'Background', "
            "'Orphan']",
        ),
    ],
)
def test_invalid_params_name_the_field(tool: str, params: dict[str, Any], expected: str) -> None:
    assert any(expected in error for error in errors(tool, params)), errors(tool, params)


def test_valid_params_pass() -> None:
    assert errors("kubernetes_apply", {"manifest": CONFIG_MAP, "namespace": "team-a"}) == []
    assert errors("kubernetes_list", {"apiVersion": "apps/v1", "kind": "Deployment"}) == []


def test_no_configuration_is_a_clear_failure(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    params = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "namespace": "default"}
    with pytest.raises(
        ToolFailure, match=f"no Kubernetes configuration: .* no kubeconfig at {missing}"
    ):
        call("kubernetes_get", params, env={"KUBECONFIG": str(missing)})
    with pytest.raises(ToolFailure, match=r"no kubeconfig at .*/\.kube/config"):
        call("kubernetes_list", {"apiVersion": "v1", "kind": "ConfigMap"})


def test_broken_kubeconfig_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "config"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    params = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "namespace": "default"}
    with pytest.raises(ToolFailure, match=f"invalid kubeconfig {broken}"):
        call("kubernetes_delete", params, env={"KUBECONFIG": str(broken)})


def test_apply_refuses_a_manifest_namespace_other_than_the_param() -> None:
    manifest = {**CONFIG_MAP, "metadata": {"name": "settings", "namespace": "kube-system"}}
    with pytest.raises(ToolFailure, match=r"differs from params\.namespace 'team-a'"):
        call("kubernetes_apply", {"manifest": manifest, "namespace": "team-a"})
    with pytest.raises(ToolFailure, match=r"differs from params\.namespace None"):
        call("kubernetes_apply", {"manifest": manifest})


# --- over HTTP, against the emulator ---------------------------------------------

CONFIG_MAPS = resource("", "v1", "configmaps")
SEEDED = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "settings", "namespace": "team-a", "managedFields": [{"manager": "x"}]},
    "data": {"a": "1"},
}


@dataclass
class Cluster:
    emulator: KubernetesEmulator
    env: dict[str, str]

    def requests(self, method: str) -> list[Any]:
        """Requests of one HTTP method the API server received, oldest first."""
        return [r for r in self.emulator if str(r.method.value).upper() == method]


def _seed(emulator: KubernetesEmulator) -> None:
    emulator.resources["v1/configmaps"] = ResourceInfo(kind="ConfigMap", namespaced=True)
    emulator.resources["v1/namespaces"] = ResourceInfo(kind="Namespace", namespaced=False)
    emulator.objects[CONFIG_MAPS, "team-a", "settings"] = SEEDED


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The emulator serving ConfigMaps (namespaced) and Namespaces, on its own event loop."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the client's discovery cache
    with serve_emulator(tmp_path, _seed, "step-token") as served:
        yield Cluster(served.emulator, {"KUBECONFIG": str(served.kubeconfig)})


TARGET = {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "team-a"}


def test_get_returns_the_object_without_managed_fields(cluster: Cluster) -> None:
    outcome = call("kubernetes_get", {**TARGET, "name": "settings"}, env=cluster.env)
    assert outcome.outputs["object"]["data"] == {"a": "1"}
    assert "managedFields" not in outcome.outputs["object"]["metadata"]
    (request,) = [r for r in cluster.requests("GET") if "configmaps" in str(r.url)]
    assert request.url.path == "/api/v1/namespaces/team-a/configmaps/settings"
    assert request.headers["Authorization"] == "Bearer step-token"


def test_get_of_a_missing_object_says_so(cluster: Cluster) -> None:
    with pytest.raises(ToolFailure, match="Kubernetes API error 404: The object is not found"):
        call("kubernetes_get", {**TARGET, "name": "nope"}, env=cluster.env)


def test_list_passes_selectors_and_limit(cluster: Cluster) -> None:
    params = {**TARGET, "labelSelector": "app=web", "limit": 5}
    outcome = call("kubernetes_list", params, env=cluster.env)
    assert outcome.outputs["count"] == 1
    assert outcome.outputs["truncated"] is False
    assert "managedFields" not in outcome.outputs["items"][0]["metadata"]
    (request,) = [r for r in cluster.requests("GET") if "configmaps" in str(r.url)]
    assert dict(request.params) == {"labelSelector": "app=web", "limit": "5"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"apiVersion": "v1", "kind": "ConfigMap"}, "params.namespace is required"),
        ({"apiVersion": "v1", "kind": "Namespace", "namespace": "a"}, "must be omitted"),
        ({"apiVersion": "v1", "kind": "Widget", "namespace": "a"}, "no kind Widget in v1"),
    ],
)
def test_scope_and_kind_are_checked_before_any_object_request(
    cluster: Cluster, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolFailure, match=message):
        call("kubernetes_list", params, env=cluster.env)
    assert not [r for r in cluster.emulator if "configmaps" in str(r.url)]


def test_apply_sends_a_server_side_apply_patch(cluster: Cluster) -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}
    params = {"manifest": {**manifest, "data": {"b": "2"}}, "namespace": "team-a", "force": True}
    outcome = call("kubernetes_apply", params, env=cluster.env)
    assert outcome.outputs["object"]["data"]["b"] == "2"
    (patch,) = cluster.requests("PATCH")
    assert patch.url.path == "/api/v1/namespaces/team-a/configmaps/settings"
    assert patch.headers["Content-Type"] == "application/apply-patch+yaml"
    assert dict(patch.params) == {"fieldManager": "agent-runtime", "force": "true"}


def test_delete_is_idempotent(cluster: Cluster) -> None:
    params = {**TARGET, "name": "settings", "dryRun": False}
    assert call("kubernetes_delete", params, env=cluster.env).outputs["deleted"] is True
    assert call("kubernetes_delete", params, env=cluster.env).outputs["deleted"] is False
    assert [dict(r.params) for r in cluster.requests("DELETE")] == [
        {"propagationPolicy": "Background"}
    ] * 2


def test_unreachable_api_server(tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1", "step-token")
    with pytest.raises(ToolFailure, match="cannot reach the Kubernetes API server"):
        call("kubernetes_get", {**TARGET, "name": "x"}, env={"KUBECONFIG": str(config)})
