"""Running the pinned helm binary on the chart: render, lint, and the objects it renders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "agent-operator"
RELEASE = "agent-operator"
NAMESPACE = "agent-system"

Obj = dict[str, Any]


@cache
def helm_binary() -> str | None:
    """The helm built by hack/build-binaries.sh (without building), else one on PATH."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "build-binaries.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if lines:
        built = Path(lines[-1]) / "helm"
        if built.is_file():
            return str(built)
    return shutil.which("helm")


@cache
def _helm_home() -> str:
    return tempfile.mkdtemp(prefix="agent-operator-helm-")


def helm_env() -> dict[str, str]:
    """Helm's caches and config in a throwaway directory: nothing read from or written to ~."""
    home = _helm_home()
    return {
        **os.environ,
        "HELM_CACHE_HOME": f"{home}/cache",
        "HELM_CONFIG_HOME": f"{home}/config",
        "HELM_DATA_HOME": f"{home}/data",
    }


class HelmError(Exception):
    """helm exited non-zero; the message has its stderr."""

    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        self.stderr = result.stderr


def helm(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    assert binary is not None, "no helm binary: run `make bins`"
    result = subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        env=helm_env(),
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise HelmError(args, result)
    return result


def values_file(values: Obj, directory: Path) -> Path:
    """Values as a file helm reads (JSON is YAML), named after their content."""
    text = json.dumps(values, sort_keys=True)
    path = directory / f"values-{abs(hash(text)):x}.yaml"
    path.write_text(text)
    return path


@dataclass(frozen=True)
class Rendered:
    """What `helm template` produced."""

    objects: list[Obj]
    notes: str

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Obj:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} named {name}"
        return found[0]

    def names(self, kind: str) -> list[str]:
        return sorted(
            f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
            for o in self.of_kind(kind)
        )


def render(
    values: Obj | None = None,
    *,
    tmp: Path,
    api_versions: Sequence[str] = (),
    namespace: str = NAMESPACE,
    chart: Path = CHART,
) -> Rendered:
    """`helm template` of the chart with these values (hooks included), parsed."""
    args = ["template", RELEASE, str(chart), "--namespace", namespace]
    args += ["--values", str(values_file(values or {}, tmp))]
    for version in api_versions:
        args += ["--api-versions", version]
    manifests = helm(*args).stdout
    objects = [doc for doc in yaml.safe_load_all(manifests) if doc]
    return Rendered(objects, _notes(args, tmp, chart))


NOTES_KIND = "NotesUnderTest"


def _notes(args: list[str], tmp: Path, chart: Path) -> str:
    """NOTES.txt as installing would print it (`helm template` drops it): a copy of the chart
    renders it through `tpl` into an extra document."""
    copy = tmp / f"notes-{chart.name}"
    if not copy.exists():
        shutil.copytree(chart, copy)
        shutil.copy(chart / "templates" / "NOTES.txt", copy / "notes-under-test.txt")
        (copy / "templates" / "zz-notes-under-test.yaml").write_text(
            f"kind: {NOTES_KIND}\n"
            'text: {{ tpl (.Files.Get "notes-under-test.txt") . | toJson }}\n'
        )
    args = [str(copy) if a == str(chart) else a for a in args]
    out = helm(*args, "--show-only", "templates/zz-notes-under-test.yaml").stdout
    return str(yaml.safe_load(out)["text"])


def pod_specs(objects: Sequence[Obj]) -> Iterator[tuple[str, Obj]]:
    """Every pod spec the rendered objects would create, with the object's name."""
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "Pod":
            yield obj["metadata"]["name"], spec
        elif obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield obj["metadata"]["name"], spec["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield obj["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]


needs_helm = pytest.mark.skipif(
    helm_binary() is None, reason="no helm binary: run `make bins` or put helm on PATH"
)
