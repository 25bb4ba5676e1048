"""The chart rendered with several value sets: least privilege, the restricted Pod Security
Standard, no secret values, settings the operator reads, peering, admission policies, pools.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest

from agent_operator import __main__ as operator_main
from agent_operator.api import AgentPool
from agent_operator.core.notify import DEFAULT_CHANNEL, NotifyPolicy
from agent_operator.kube import settings as settings_module
from agent_operator.kube.manifests import restricted_violations
from agent_operator.kube.settings import LogFormat, OperatorSettings
from tests.chart.helm import (
    CHART,
    NAMESPACE,
    RELEASE,
    Obj,
    Rendered,
    helm,
    needs_helm,
    pod_specs,
    render,
    values_file,
)

pytestmark = needs_helm

OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
POOL_API = "agentoperator.io/v1alpha1/AgentPool"

VALUE_SETS: dict[str, Obj] = {
    "defaults": {},
    "namespaced": {
        "watchNamespaces": ["team-a", "team-b"],
        "store": {"existingSecret": "pg", "key": "url", "retentionDays": 0.5},
        "approvals": {"forbidSelfApproval": True},
        "logFormat": "json",
        "workers": 4,
    },
    "ha": {
        "replicaCount": 3,
        "podDisruptionBudget": {"enabled": True},
        "peeringLifetimeSeconds": 20,
    },
    "ha-namespaced": {"replicaCount": 2, "watchNamespaces": ["team-a"]},
    "everything": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            "egress": [{"ports": [{"port": 443}]}],
        },
        "steps": {"networkPolicy": {"enabled": True}, "namespaces": ["ci", "prod"]},
        "rbac": {"secretNames": ["openai"], "secretNamespaces": ["ci", "prod"]},
        "defaultPool": {
            "model": {
                "name": "gpt-4o-mini",
                "baseURL": "https://llm.example/v1",
                "apiKeySecret": "openai",
            },
            "tools": [],
            "allowedHosts": ["api.example.com", "*.svc.example.com"],
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"example.com/team": "agents"},
    },
    "cluster-wide-secrets": {"rbac": {"clusterWideSecrets": True}},
    "minimal": {
        "rbac": {"create": False, "aggregateToDefaultRoles": False},
        "serviceAccount": {"create": False, "name": "ops"},
        "steps": {"serviceAccount": {"create": False}},
        "admission": {"enabled": False},
        "defaultPool": {"enabled": False},
        "crds": {"install": False},
        "metrics": {"enabled": False},
        "healthPort": 0,
    },
    "no-mutating-policies": {"admission": {"mutatingPolicies": False}},
    "notifications": {
        "notifications": {
            "existingSecret": "approvers",
            "remindEverySeconds": 900,
            "escalateAfterSeconds": 3600,
            "taskFinished": True,
        }
    },
}

OPERATOR_RULES = {
    ("agentoperator.io", "agenttasks"): {"list", "watch", "patch"},
    ("agentoperator.io", "agenttasks/status"): {"patch"},
    ("agentoperator.io", "agenttasks/finalizers"): {"update"},
    ("agentoperator.io", "approvalrequests"): {"list", "watch", "create", "patch", "delete"},
    ("agentoperator.io", "approvalrequests/status"): {"patch"},
    ("agentoperator.io", "agentpools"): {"list", "watch", "patch"},
    ("agentoperator.io", "agentpools/status"): {"patch"},
    ("agentoperator.io", "mcpservers"): {"list", "watch", "patch"},  # patch: Kopf's finalizer
    ("agentoperator.io", "mcpservers/status"): {"patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "pods/log"): {"get"},  # large step results (steps hold no store access)
    ("", "events"): {"create"},
}
CRD_READ = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
NAMESPACE_READ = {("", "namespaces"): {"list", "watch"}}
SECRET_GET = {("", "secrets"): {"get"}}
PEERING = {"get", "list", "watch", "patch"}

Grants = dict[str, dict[tuple[str, str], set[str]]]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chart")


@pytest.fixture(scope="module")
def rendered(tmp: Path) -> dict[str, Rendered]:
    return {name: render(values, tmp=tmp) for name, values in VALUE_SETS.items()}


def grants(out: Rendered, user: str = OPERATOR_USER) -> Grants:
    """What the bindings give `user`: scope (a namespace, or * for cluster-wide) to rules."""
    by_name = {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in out.objects
        if o["kind"] in ("Role", "ClusterRole")
    }
    result: Grants = defaultdict(lambda: defaultdict(set))
    for binding in out.objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        names = {
            f"system:serviceaccount:{s['namespace']}:{s['name']}"
            for s in binding["subjects"]
            if s["kind"] == "ServiceAccount"
        }
        if user not in names:
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace", "")
        role = by_name[(ref["kind"], namespace if ref["kind"] == "Role" else "", ref["name"])]
        scope = namespace if binding["kind"] == "RoleBinding" else "*"
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    result[scope][(group, resource)] |= set(rule["verbs"])
    return {scope: dict(rules) for scope, rules in result.items()}


def merged(*parts: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for part in parts:
        for key, verbs in part.items():
            out[key] |= verbs
    return dict(out)


# --- the chart as a whole -------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_is_clean(name: str, tmp: Path) -> None:
    result = helm(
        "lint", "--strict", str(CHART), "--values", str(values_file(VALUE_SETS[name], tmp))
    )
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_object_is_unique_labelled_and_in_a_namespace_it_belongs_to(
    name: str, rendered: dict[str, Rendered]
) -> None:
    out = rendered[name]
    keys = [
        (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        for o in out.objects
    ]
    assert len(keys) == len(set(keys)), "an object is rendered twice"
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ClusterKopfPeering",
    }
    for obj in out.objects:
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE, meta["name"]
        assert ("namespace" in meta) == (obj["kind"] not in cluster_scoped), meta["name"]


# --- security baseline ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_pod_meets_the_restricted_pod_security_standard(
    name: str, rendered: dict[str, Rendered]
) -> None:
    specs = list(pod_specs(rendered[name].objects))
    assert [n for n, _ in specs] == [RELEASE]
    for pod_name, spec in specs:
        assert restricted_violations(spec) == [], pod_name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            tmp_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in volumes[tmp_mount["name"]]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_no_secret_value_is_ever_rendered(name: str, rendered: dict[str, Rendered]) -> None:
    out = rendered[name]
    assert out.of_kind("Secret") == []
    deployment = out.one("Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    if "AGENT_OPERATOR_DSN" in env:
        assert set(env["AGENT_OPERATOR_DSN"]) == {"name", "valueFrom"}
        assert set(env["AGENT_OPERATOR_DSN"]["valueFrom"]) == {"secretKeyRef"}
    for pool in out.of_kind("AgentPool"):
        model = pool["spec"].get("model", {})
        assert set(model.get("apiKeySecretRef", {"name": 1, "key": 1})) == {"name", "key"}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_no_role_uses_wildcards_and_secrets_are_only_ever_got(
    name: str, rendered: dict[str, Rendered]
) -> None:
    for role in rendered[name].of_kind("Role") + rendered[name].of_kind("ClusterRole"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"], role["metadata"]["name"]


def test_cluster_wide_operator_gets_exactly_what_it_uses(rendered: dict[str, Rendered]) -> None:
    assert grants(rendered["defaults"]) == {
        "*": merged(OPERATOR_RULES, CRD_READ),
        NAMESPACE: SECRET_GET,  # the pools' API keys, in the release namespace only
    }


def test_namespaced_operator_gets_roles_in_its_namespaces_only(
    rendered: dict[str, Rendered],
) -> None:
    assert grants(rendered["namespaced"]) == {
        "*": merged(CRD_READ, NAMESPACE_READ),
        "team-a": merged(OPERATOR_RULES, SECRET_GET),
        "team-b": merged(OPERATOR_RULES, SECRET_GET),
    }


def test_peering_rbac_comes_only_with_more_than_one_replica(
    rendered: dict[str, Rendered],
) -> None:
    assert grants(rendered["ha"])["*"] == merged(
        OPERATOR_RULES, CRD_READ, {("kopf.dev", "clusterkopfpeerings"): PEERING}
    )
    assert grants(rendered["ha-namespaced"])["team-a"] == merged(
        OPERATOR_RULES, SECRET_GET, {("kopf.dev", "kopfpeerings"): PEERING}
    )
    for name in ("defaults", "namespaced", "everything"):
        assert not any(
            g == "kopf.dev" for scope in grants(rendered[name]).values() for g, _ in scope
        )


def test_secret_reads_follow_the_values(rendered: dict[str, Rendered]) -> None:
    everything = grants(rendered["everything"])
    assert {s for s, rules in everything.items() if ("", "secrets") in rules} == {"ci", "prod"}
    for role in rendered["everything"].of_kind("Role"):
        if role["metadata"]["name"] == f"{RELEASE}-secrets":
            assert role["rules"][0]["resourceNames"] == ["openai"]
    wide = grants(rendered["cluster-wide-secrets"])
    assert wide == {"*": merged(OPERATOR_RULES, CRD_READ, SECRET_GET)}
    assert grants(rendered["minimal"], "system:serviceaccount:agent-system:ops") == {}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_step_service_account_is_granted_nothing(name: str, rendered: dict[str, Rendered]) -> None:
    out = rendered[name]
    for account in out.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
        if account["metadata"]["labels"]["app.kubernetes.io/component"] == "steps":
            user = f"system:serviceaccount:{account['metadata']['namespace']}:agent-steps"
            assert grants(out, user) == {}


def test_user_roles_keep_approve_for_approvers(rendered: dict[str, Rendered]) -> None:
    out = rendered["defaults"]
    approver = out.one("ClusterRole", f"{RELEASE}-approver")
    assert approver["rules"] == [
        {
            "apiGroups": ["agentoperator.io"],
            "resources": ["approvalrequests"],
            "verbs": ["get", "list", "watch", "patch", "approve"],
        },
        {
            "apiGroups": ["agentoperator.io"],
            "resources": ["agenttasks"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    for name in ("edit", "view"):
        role = out.one("ClusterRole", f"{RELEASE}-{name}")
        for rule in role["rules"]:
            assert "approve" not in rule["verbs"]
            if rule["resources"] == ["approvalrequests"]:
                assert rule["verbs"] == ["get", "list", "watch"]
    assert (
        out.one("ClusterRole", f"{RELEASE}-view")["metadata"]["labels"][
            "rbac.authorization.k8s.io/aggregate-to-view"
        ]
        == "true"
    )
    assert [r["metadata"]["name"] for r in rendered["minimal"].of_kind("ClusterRole")] == [
        f"{RELEASE}-approver"
    ]


# --- the operator Deployment and its settings -----------------------------------------


def operator_env(out: Rendered) -> dict[str, str]:
    """The environment the operator container gets: its ConfigMap, then its env values."""
    config = out.one("ConfigMap")
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    env = dict(config["data"])
    for item in container["env"]:
        env[item["name"]] = item.get("value", "<from a Secret>")
    return env


def test_the_operator_reads_every_setting_the_chart_writes(rendered: dict[str, Rendered]) -> None:
    source = Path(settings_module.__file__).read_text()
    read = set(re.findall(r'"(AGENT_OPERATOR_[A-Z_]+)"', source))
    for name, out in rendered.items():
        written = {k for k in operator_env(out) if k.startswith("AGENT_OPERATOR_")}
        assert written <= read, f"{name}: the chart sets variables nobody reads"
    everything = set().union(*(operator_env(out) for out in rendered.values()))
    assert read <= everything, "settings the chart never sets"


def test_settings_come_through_as_the_values_say(rendered: dict[str, Rendered]) -> None:
    default = OperatorSettings.from_env(operator_env(rendered["defaults"]))
    assert (default.namespaces, default.peering, default.log_format) == ([], False, LogFormat.plain)
    assert (default.metrics_port, default.health_port) == (8080, 8081)
    assert default.dsn is None

    namespaced = OperatorSettings.from_env(operator_env(rendered["namespaced"]))
    assert namespaced.namespaces == ["team-a", "team-b"]
    assert namespaced.dsn == "<from a Secret>"
    assert namespaced.log_format == LogFormat.json
    assert (default.workers, namespaced.workers) == (16, 4)
    assert (default.retention_days, namespaced.retention_days) == (30, 0.5)

    ha = OperatorSettings.from_env(operator_env(rendered["ha"]))
    assert (ha.peering, ha.peering_lifetime_seconds) == (True, 20)
    assert default.peering_lifetime_seconds == 10
    minimal = OperatorSettings.from_env(operator_env(rendered["minimal"]))
    assert (minimal.metrics_port, minimal.health_port) == (0, 0)


def test_the_notification_secret_is_mounted_where_the_operator_reads_it(
    rendered: dict[str, Rendered],
) -> None:
    assert OperatorSettings.from_env(operator_env(rendered["defaults"])).notify_defaults() is None
    out = rendered["notifications"]
    settings = OperatorSettings.from_env(operator_env(out))
    assert settings.notify_defaults() == NotifyPolicy(
        DEFAULT_CHANNEL, timedelta(seconds=900), timedelta(seconds=3600), task_finished=True
    )
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(
        m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == settings.notify_dir
    )
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"] == {"secretName": "approvers"}


def test_one_replica_recreates_and_more_replicas_peer(rendered: dict[str, Rendered]) -> None:
    single = rendered["defaults"].one("Deployment")["spec"]
    assert (single["replicas"], single["strategy"]["type"]) == (1, "Recreate")
    assert rendered["defaults"].of_kind("ClusterKopfPeering") == []
    ha = rendered["ha"].one("Deployment")["spec"]
    assert (ha["replicas"], ha["strategy"]["type"]) == (3, "RollingUpdate")
    peering = rendered["ha"].one("ClusterKopfPeering")
    assert peering["metadata"]["name"] == operator_main.PEERING_NAME
    assert rendered["ha-namespaced"].names("KopfPeering") == [
        f"team-a/{operator_main.PEERING_NAME}"
    ]
    assert rendered["ha"].one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_the_operator_pod_runs_as_its_own_account_with_probes_and_metrics(
    rendered: dict[str, Rendered],
) -> None:
    out = rendered["defaults"]
    pod = out.one("Deployment")["spec"]["template"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == RELEASE and spec["automountServiceAccountToken"] is True
    container = spec["containers"][0]
    assert container["image"] == "agent-operator:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    service = out.one("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    assert pod["metadata"]["annotations"]["checksum/config"]
    quiet = rendered["minimal"].one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "ports" not in quiet and "livenessProbe" not in quiet
    assert rendered["minimal"].of_kind("Service") == []


def test_a_settings_change_rolls_the_operator_pod(rendered: dict[str, Rendered]) -> None:
    def checksum(name: str) -> str:
        annotations = rendered[name].one("Deployment")["spec"]["template"]["metadata"][
            "annotations"
        ]
        return str(annotations["checksum/config"])

    assert checksum("defaults") != checksum("namespaced")
    assert checksum("defaults") == checksum("no-mutating-policies")


def test_monitoring_and_network_policies_when_asked(rendered: dict[str, Rendered]) -> None:
    out = rendered["everything"]
    monitor = out.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    policy = out.one("NetworkPolicy", RELEASE)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    ]
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {"metrics", "health"}
    steps = [p for p in out.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-steps")]
    assert sorted(p["metadata"]["namespace"] for p in steps) == ["ci", "prod"]
    for step_policy in steps:
        assert step_policy["spec"]["podSelector"] == {
            "matchLabels": {"app.kubernetes.io/managed-by": "agent-operator"}
        }
        assert step_policy["spec"]["ingress"] == []
    for kind in ("ServiceMonitor", "NetworkPolicy", "PodDisruptionBudget"):
        assert rendered["defaults"].of_kind(kind) == []


# --- admission policies ---------------------------------------------------------------


def policies(out: Rendered) -> dict[str, tuple[Obj, Obj]]:
    """Policy name to (policy, binding), for both kinds of admission policy."""
    found = {}
    for kind in ("ValidatingAdmissionPolicy", "MutatingAdmissionPolicy"):
        bindings = {b["spec"]["policyName"]: b for b in out.of_kind(f"{kind}Binding")}
        for policy in out.of_kind(kind):
            name = policy["metadata"]["name"].removeprefix(f"{RELEASE}-")
            found[name] = (policy, bindings.pop(policy["metadata"]["name"]))
        assert bindings == {}, "a binding without its policy"
    return found


def test_approval_policies_are_installed_and_bound(rendered: dict[str, Rendered]) -> None:
    found = policies(rendered["defaults"])
    assert sorted(found) == [
        "approval-create",
        "approval-decide",
        "decided-by",
        "status",
        "task-creator",
    ]
    create, _ = found["approval-create"]
    assert create["spec"]["validations"][0]["expression"] == (
        f'request.userInfo.username == "{OPERATOR_USER}"'
    )
    for policy, binding in found.values():
        assert policy["spec"]["failurePolicy"] == "Fail"
        assert "matchResources" not in binding["spec"]  # cluster-wide operator: everywhere
        if policy["kind"] == "ValidatingAdmissionPolicy":
            assert binding["spec"]["validationActions"] == ["Deny"]
    decide, _ = found["approval-decide"]
    assert len(decide["spec"]["validations"]) == 3  # approve verb, decidedBy, creator record


def test_only_the_operator_writes_the_status_of_tasks_and_approvals(
    rendered: dict[str, Rendered],
) -> None:
    policy, _ = policies(rendered["defaults"])["status"]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["agenttasks/status", "approvalrequests/status"]
    assert rule["operations"] == ["UPDATE"]  # a PATCH is an UPDATE to admission
    (check,) = policy["spec"]["validations"]
    assert check["expression"] == f'request.userInfo.username == "{OPERATOR_USER}"'


def test_mutating_policies_patch_only_what_they_set(rendered: dict[str, Rendered]) -> None:
    # An apply configuration is merged into the whole object by the schema's types, so a
    # wrong-typed field anywhere failed as "error applying patch" before the schema's
    # message; a JSON Patch touches only its own path.
    mutating = [p for p, _ in policies(rendered["defaults"]).values() if "mutations" in p["spec"]]
    assert len(mutating) == 2
    for policy in mutating:
        assert [m["patchType"] for m in policy["spec"]["mutations"]] == ["JSONPatch"]


def test_policies_follow_the_watched_namespaces_and_the_options(
    rendered: dict[str, Rendered],
) -> None:
    found = policies(rendered["namespaced"])
    for _, binding in found.values():
        selector = binding["spec"]["matchResources"]["namespaceSelector"]
        assert selector["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
        ]
    decide, _ = found["approval-decide"]
    self_check = [
        v
        for v in decide["spec"]["validations"]
        if "forbidSelfApproval" in v.get("messageExpression", "")
    ]
    assert len(self_check) == 1 and "variables.creator" in self_check[0]["expression"]
    assert sorted(policies(rendered["no-mutating-policies"])) == [
        "approval-create",
        "approval-decide",
        "status",
    ]
    assert policies(rendered["minimal"]) == {}


def test_self_approval_needs_the_mutating_policies(tmp: Path) -> None:
    with pytest.raises(Exception, match=r"mutatingPolicies"):
        render(
            {"approvals": {"forbidSelfApproval": True}, "admission": {"mutatingPolicies": False}},
            tmp=tmp,
        )


# --- the default pool and the step ServiceAccount -------------------------------------


def test_default_pool_is_a_hook_until_its_crd_is_served(tmp: Path) -> None:
    first = render({}, tmp=tmp)
    pool = first.one("AgentPool")
    annotations = pool["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/resource-policy"] == "keep"
    # Ownership a later upgrade adopts it by:
    assert annotations["meta.helm.sh/release-name"] == RELEASE
    assert annotations["meta.helm.sh/release-namespace"] == NAMESPACE
    assert pool["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    later = render({}, tmp=tmp, api_versions=[POOL_API])
    # A release resource now, kept on uninstall (its finalizer needs the operator).
    assert later.one("AgentPool")["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # CRDs left to the user and not there yet: no pool at all (its creation would fail).
    assert render({"crds": {"install": False}}, tmp=tmp).of_kind("AgentPool") == []
    assert render({"crds": {"install": False}}, tmp=tmp, api_versions=[POOL_API]).of_kind(
        "AgentPool"
    )


@pytest.mark.parametrize("name", ["defaults", "namespaced", "everything"])
def test_default_pools_are_valid_and_run_steps_as_the_step_account(
    name: str, rendered: dict[str, Rendered]
) -> None:
    out = rendered[name]
    accounts = out.names("ServiceAccount")
    for body in out.of_kind("AgentPool"):
        pool = AgentPool.model_validate(body)
        assert pool.spec.template.service_account_name == "agent-steps"
        assert f"{pool.metadata.namespace}/agent-steps" in accounts
        assert pool.spec.template.image == "agent-runtime:0.1.0"
    expected = {
        "defaults": [NAMESPACE],
        "namespaced": ["team-a", "team-b"],
        "everything": ["ci", "prod"],
    }
    assert sorted(p["metadata"]["namespace"] for p in out.of_kind("AgentPool")) == expected[name]


def test_pool_model_comes_from_values(rendered: dict[str, Rendered]) -> None:
    pools = rendered["everything"].of_kind("AgentPool")
    for pool in pools:
        assert pool["spec"]["model"] == {
            "model": "gpt-4o-mini",
            "baseURL": "https://llm.example/v1",
            "apiKeySecretRef": {"name": "openai", "key": "api-key"},
        }
        assert "tools" not in pool["spec"]  # empty: every registered tool
        assert pool["spec"]["allowedHosts"] == ["api.example.com", "*.svc.example.com"]
    default = rendered["defaults"].one("AgentPool")["spec"]
    assert "model" not in default and default["tools"] == ["noop", "http_request", "llm_complete"]
    assert "allowedHosts" not in default  # empty: network tools reach no host


def test_notes_say_what_to_do_next(rendered: dict[str, Rendered]) -> None:
    notes = rendered["namespaced"].notes
    assert f"rollout status deployment/{RELEASE}" in notes
    assert f"--clusterrole={RELEASE}-approver" in notes
    assert "refuses a decision by the task's own creator" in notes
    assert "It watches the namespaces: team-a, team-b." in notes
    assert "SQLite" in rendered["defaults"].notes  # no DSN given: said, with the fix
    assert "WARNING" in rendered["minimal"].notes  # no admission policies: approvals are open
