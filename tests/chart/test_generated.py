"""The chart's generated files are current: CRDs from the same models as crds/, the README's
values table from values.yaml, the Argo CD snippet from the Lua scripts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from agent_operator import chartgen
from tests.chart.helm import CHART, REPO, needs_helm, render


def test_generated_files_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert chartgen.main(["--check", str(CHART)]) == 0, capsys.readouterr().err


def test_check_names_a_drifted_crd_and_writing_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    crd = copy / "templates" / "crds" / "agenttasks.yaml"
    text = crd.read_text()
    drifted = text.replace("Plain-language goal", "Goal")
    assert drifted != text
    crd.write_text(drifted)
    (copy / "templates" / "crds" / "agentjobs.yaml").write_text(chartgen.HEADER + "{}\n")
    assert chartgen.main(["--check", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "templates/crds/agenttasks.yaml" in err and "templates/crds/agentjobs.yaml" in err
    assert chartgen.main([str(copy)]) == 0
    assert chartgen.main(["--check", str(copy)]) == 0
    assert not (copy / "templates" / "crds" / "agentjobs.yaml").exists()


def test_an_undocumented_value_stops_the_generation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    values = copy / "values.yaml"
    values.write_text(values.read_text() + "\nsecretToggle: true\n")
    assert chartgen.main(["--check", str(copy)]) == 2
    assert "secretToggle" in capsys.readouterr().err


@needs_helm
def test_rendered_crds_are_the_crds_directory_plus_keep(tmp_path: Path) -> None:
    crds = render({}, tmp=tmp_path).of_kind("CustomResourceDefinition")
    committed = {
        doc["metadata"]["name"]: doc
        for path in (REPO / "crds").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
    }
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(committed)
    for crd in crds:
        meta = crd["metadata"]
        # Uninstalling must never delete the CRDs, and with them every user's AgentTask.
        assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert meta.pop("labels")["app.kubernetes.io/part-of"] == "agent-operator"
        assert crd == committed[meta["name"]]
    assert (
        render({"crds": {"install": False}}, tmp=tmp_path).of_kind("CustomResourceDefinition") == []
    )


def test_readme_lists_every_value_with_its_default() -> None:
    text = (CHART / "values.yaml").read_text()
    assert chartgen.undocumented(text) == []
    readme = (CHART / "README.md").read_text()
    docs = chartgen.documented_values(text)
    paths = {d.path for d in docs}
    for leaf in chartgen.leaf_paths(yaml.safe_load(text)):
        assert any(leaf == p or leaf.startswith(f"{p}.") for p in paths), leaf
    for doc in docs:
        assert f"| `{doc.path}` |" in readme
    rows = {d.path: d for d in docs}
    assert rows["replicaCount"].default == 1
    assert rows["defaultPool.tools"].default == ["noop", "http_request", "llm_complete"]
    assert '| `logFormat` | string | `"plain"` |' in readme


def test_documented_values_reads_comments_the_way_helm_docs_does() -> None:
    text = (
        "# not documentation\n"
        "a: 1\n"
        "# -- The b map.\n"
        "b:\n"
        "  # -- Its c,\n"
        "  # over two lines.\n"
        "  c: [x]\n"
        "\n"
        "  # -- separated by a blank line, still d's\n"
        "  d: {}\n"
        "# -- dangling\n"
        "\n"
        "e: z\n"
    )
    docs = chartgen.documented_values(text)
    assert [(d.path, d.description, d.default) for d in docs] == [
        ("b", "The b map.", {"c": ["x"], "d": {}}),
        ("b.c", "Its c, over two lines.", ["x"]),
        ("b.d", "separated by a blank line, still d's", {}),
    ]
    assert chartgen.undocumented(text) == ["a", "e"]


def test_argocd_snippet_holds_each_health_script() -> None:
    snippet = yaml.safe_load((CHART / "argocd" / "argocd-cm.yaml").read_text())
    assert (snippet["kind"], snippet["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    for kind in ("AgentTask", "ApprovalRequest", "AgentPool"):
        key = f"resource.customizations.health.agentoperator.io_{kind}"
        assert snippet["data"][key] == (CHART / "argocd" / f"health-{kind}.lua").read_text()
