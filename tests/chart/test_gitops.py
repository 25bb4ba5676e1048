"""examples/gitops: the Argo CD Application, the Flux HelmRelease and Kustomization parse, name
the right kinds and point at paths that exist; the tasks they apply are valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent_contract import ToolRegistry
from agent_operator.api import AgentPool, AgentTask
from agent_operator.core.plan import build_plan
from tests.chart.helm import CHART, REPO
from tests.test_crds import object_errors

GITOPS = REPO / "examples" / "gitops"
CHART_PATH = CHART.relative_to(REPO).as_posix()
TASKS_PATH = (GITOPS / "tasks").relative_to(REPO).as_posix()
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def by_kind(path: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for doc in documents(path):
        found.setdefault(f"{doc['apiVersion']}/{doc['kind']}", []).append(doc)
    return found


def assert_known_values(values: dict[str, Any], defaults: dict[str, Any], where: str) -> None:
    """Values a GitOps tool passes to the chart must be keys the chart has."""
    for key, value in values.items():
        assert key in defaults, f"{where}.{key} is not a chart value"
        if isinstance(value, dict) and defaults[key]:
            assert_known_values(value, defaults[key], f"{where}.{key}")


def test_argocd_applications_point_at_the_chart_and_the_tasks() -> None:
    apps = by_kind(GITOPS / "argocd" / "application.yaml")
    assert list(apps) == ["argoproj.io/v1alpha1/Application"]
    chart_app, tasks_app = apps["argoproj.io/v1alpha1/Application"]
    assert chart_app["spec"]["source"]["path"] == CHART_PATH
    assert tasks_app["spec"]["source"]["path"] == TASKS_PATH
    assert_known_values(chart_app["spec"]["source"]["helm"]["valuesObject"], VALUES, "values")
    for app in (chart_app, tasks_app):
        # The AgentTask CRD is too large for client-side apply.
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    # Helm hooks would run again on every Argo CD sync: the pool lives in Git instead.
    assert chart_app["spec"]["source"]["helm"]["valuesObject"]["defaultPool"]["enabled"] is False


def test_flux_release_and_kustomization_point_at_the_chart_and_the_tasks() -> None:
    release = by_kind(GITOPS / "flux" / "helmrelease.yaml")
    assert sorted(release) == [
        "helm.toolkit.fluxcd.io/v2/HelmRelease",
        "source.toolkit.fluxcd.io/v1/GitRepository",
    ]
    (source,) = release["source.toolkit.fluxcd.io/v1/GitRepository"]
    (helm_release,) = release["helm.toolkit.fluxcd.io/v2/HelmRelease"]
    chart = helm_release["spec"]["chart"]["spec"]
    assert Path(chart["chart"]).as_posix() == CHART_PATH
    assert chart["sourceRef"] == {
        "kind": "GitRepository",
        "name": source["metadata"]["name"],
        "namespace": source["metadata"]["namespace"],
    }
    assert_known_values(helm_release["spec"]["values"], VALUES, "values")

    kustomizations = by_kind(GITOPS / "flux" / "kustomization.yaml")
    (tasks,) = kustomizations["kustomize.toolkit.fluxcd.io/v1/Kustomization"]
    assert Path(tasks["spec"]["path"]).as_posix() == TASKS_PATH
    assert tasks["spec"]["sourceRef"]["name"] == source["metadata"]["name"]
    assert tasks["spec"]["targetNamespace"] == helm_release["spec"]["values"]["watchNamespaces"][0]


def test_the_tasks_directory_is_a_kustomization_of_valid_objects() -> None:
    kustomization = documents(GITOPS / "tasks" / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    objects = [d for name in kustomization["resources"] for d in documents(GITOPS / "tasks" / name)]
    assert sorted(o["kind"] for o in objects) == ["AgentPool", "AgentTask"]
    for obj in objects:
        assert object_errors(obj) == [], obj["metadata"]["name"]
    pool = AgentPool.model_validate(next(o for o in objects if o["kind"] == "AgentPool"))
    task = AgentTask.model_validate(next(o for o in objects if o["kind"] == "AgentTask"))
    assert pool.spec.template.service_account_name == VALUES["steps"]["serviceAccount"]["name"]
    plan = build_plan(task.spec.steps or [], task.spec, pool.spec, ToolRegistry.default())
    assert [(s.id, s.risk.requires_approval) for s in plan] == [
        ("collect", False),
        ("publish", True),
    ]
