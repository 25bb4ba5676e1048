"""values.schema.json: it accepts the defaults and what the README promises, refuses the rest,
and describes exactly the keys of values.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.chart.helm import CHART, HelmError, needs_helm, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    """Every property path the schema declares."""
    paths = set()
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        paths.add(path)
        paths |= schema_paths(sub, path)
    return paths


def value_paths(values: Any, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(values, dict):
        for name, sub in values.items():
            path = f"{prefix}.{name}" if prefix else name
            paths.add(path)
            if not path.startswith(("resources.", "defaultPool.resources.")):
                paths |= value_paths(sub, path)
    return paths


def test_schema_and_values_describe_the_same_keys() -> None:
    free_form = {"resources.requests", "resources.limits"}
    assert value_paths(VALUES) - free_form == schema_paths(SCHEMA) - free_form


def test_every_object_in_the_schema_refuses_unknown_keys() -> None:
    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, path or "(root)"
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")

    walk(SCHEMA, "")


def test_the_defaults_are_valid() -> None:
    Draft7Validator.check_schema(SCHEMA)
    assert list(Draft7Validator(SCHEMA).iter_errors(VALUES)) == []


ACCEPTED = [
    {"replicaCount": 3},
    {"watchNamespaces": ["team-a", "team-b"]},
    {"store": {"existingSecret": "pg", "key": "url"}},
    {"podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"}},
    {"defaultPool": {"model": {"name": "gpt-4o-mini", "baseURL": "http://llm:8000/v1"}}},
    {"healthPort": 0, "metrics": {"enabled": False}},
]

REFUSED = [
    pytest.param({"replicaCount": 0}, "/replicaCount", id="no-replicas"),
    pytest.param({"replicaCount": "2"}, "/replicaCount", id="replicas-as-text"),
    pytest.param({"logFormat": "xml"}, "/logFormat", id="log-format"),
    pytest.param({"workers": 0}, "/workers", id="no-workers"),
    pytest.param({"replicas": 2}, "additional properties 'replicas'", id="unknown-key"),
    pytest.param({"rbac": {"create": True, "wildcard": True}}, "'wildcard'", id="unknown-nested"),
    pytest.param({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", id="pull-policy"),
    pytest.param({"watchNamespaces": "team-a"}, "/watchNamespaces", id="namespaces-not-a-list"),
    pytest.param({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", id="namespace-name"),
    pytest.param({"watchNamespaces": ["a", "a"]}, "/watchNamespaces", id="namespace-twice"),
    pytest.param({"metrics": {"port": 70000}}, "/metrics/port", id="port-range"),
    pytest.param({"healthPort": -1}, "/healthPort", id="negative-port"),
    pytest.param({"store": {"existingSecret": "Bad Name"}}, "/store/existingSecret", id="secret"),
    # Steps never get the operator's store: there is no value to hand it to them.
    pytest.param({"store": {"shareWithSteps": True}}, "'shareWithSteps'", id="store-to-steps"),
    pytest.param(
        {"approvals": {"forbidSelfApproval": True}, "admission": {"mutatingPolicies": False}},
        "/admission/mutatingPolicies",
        id="self-approval-without-mutation",
    ),
    pytest.param(
        {"approvals": {"forbidSelfApproval": True}, "admission": {"enabled": False}},
        "/admission/enabled",
        id="self-approval-without-admission",
    ),
    pytest.param({"defaultPool": {"replicas": -1}}, "/defaultPool/replicas", id="pool-replicas"),
    pytest.param(
        {"defaultPool": {"model": {"baseURL": "llm:8000"}}}, "/defaultPool/model/baseURL", id="url"
    ),
    pytest.param(
        {"metrics": {"serviceMonitor": {"interval": "often"}}},
        "/metrics/serviceMonitor/interval",
        id="interval",
    ),
    pytest.param(
        {"podDisruptionBudget": {"maxUnavailable": 0}},
        "/podDisruptionBudget/maxUnavailable",
        id="pdb-blocks-everything",
    ),
]


@needs_helm
@pytest.mark.parametrize("values", ACCEPTED)
def test_helm_accepts(values: dict[str, Any], tmp_path: Path) -> None:
    assert render(values, tmp=tmp_path).one("Deployment")


@needs_helm
@pytest.mark.parametrize(("values", "where"), REFUSED)
def test_helm_refuses(values: dict[str, Any], where: str, tmp_path: Path) -> None:
    with pytest.raises(HelmError) as refused:
        render(values, tmp=tmp_path)
    assert "don't meet the specifications of the schema" in refused.value.stderr
    assert where in refused.value.stderr
