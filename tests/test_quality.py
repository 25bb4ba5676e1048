"""Lint, format and types run as part of the tests, so CI fails on them; so do stale locks."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_code_quality(command: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ locks and pyprojects ---

RUNTIME_PYPROJECT = ROOT / "runtime" / "pyproject.toml"
REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9._-]+)(\[[^\]]*\])?(>=(?P<low>[0-9][0-9.]*))?")
PIN = re.compile(r"(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a version (`2.11.7` -> (2, 11, 7)), padded for comparison."""
    match = re.match(r"\d+(\.\d+)*", version)
    assert match, version
    numbers = tuple(int(n) for n in match.group().split("."))
    return numbers + (0,) * (6 - len(numbers))


def _requirements(lines: list[str]) -> dict[str, str | None]:
    """Requirement name -> its lower bound: the pyprojects give lower bounds only."""
    found: dict[str, str | None] = {}
    for line in lines:
        match = REQUIREMENT.fullmatch(line.replace(" ", ""))
        assert match, f"{line!r}: only `name[extras]>=version` or a bare name"
        found[_canonical(match["name"])] = match["low"]
    return found


def _pyproject(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _pins(lock: str) -> dict[str, str]:
    lines = (ROOT / "requirements" / lock).read_text().splitlines()
    matches = (PIN.match(line) for line in lines)
    return {_canonical(m["name"]): m["version"] for m in matches if m}


MAIN = _pyproject(ROOT / "pyproject.toml")
RUNTIME = _pyproject(RUNTIME_PYPROJECT)


@pytest.mark.parametrize(
    ("requirements", "lock"),
    [
        (MAIN["project"]["dependencies"], "operator.txt"),
        (MAIN["project"]["dependencies"], "dev.txt"),
        (MAIN["project"]["optional-dependencies"]["dev"], "dev.txt"),
        (RUNTIME["project"]["dependencies"], "runtime.txt"),
        (MAIN["build-system"]["requires"], "build.txt"),
        (RUNTIME["build-system"]["requires"], "build.txt"),
    ],
    ids=["operator", "dev-main", "dev-extra", "runtime", "build", "runtime-build"],
)
def test_every_dependency_is_pinned_in_its_lock_within_its_bound(
    requirements: list[str], lock: str
) -> None:
    """A dependency added to a pyproject, or a bound raised, without `make lock` fails here."""
    pins = _pins(lock)
    missing = sorted(set(_requirements(requirements)) - set(pins))
    assert missing == [], f"not in requirements/{lock}; run `make lock`"
    below = {
        name: f"{pins[name]} < {low}"
        for name, low in _requirements(requirements).items()
        if low is not None and _release(pins[name]) < _release(low)
    }
    assert below == {}, f"requirements/{lock} is older than pyproject allows; run `make lock`"


def test_the_locks_agree_on_every_version_they_share() -> None:
    """What the tests run (dev) is what the images ship (operator, runtime)."""
    dev, operator, runtime = _pins("dev.txt"), _pins("operator.txt"), _pins("runtime.txt")
    assert {n: (v, dev.get(n)) for n, v in operator.items() if dev.get(n) != v} == {}
    assert {n: (v, operator.get(n)) for n, v in runtime.items() if operator.get(n) != v} == {}


def _third_party_imports(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    first_party = {"agent_contract", "agent_operator", "agent_runtime"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in first_party}


def test_the_runtime_distribution_is_the_main_one_cut_down() -> None:
    """runtime/pyproject.toml: the same version and bounds, and all that its packages import."""
    main, runtime = MAIN["project"], RUNTIME["project"]
    for field in ("version", "requires-python", "license"):
        assert runtime[field] == main[field], field
    assert runtime["scripts"] == {"agent-runtime": main["scripts"]["agent-runtime"]}
    main_requirements = _requirements(main["dependencies"])
    runtime_requirements = _requirements(runtime["dependencies"])
    assert {
        name: (low, main_requirements.get(name, "absent"))
        for name, low in runtime_requirements.items()
        if main_requirements.get(name, "absent") != low
    } == {}
    distributions = importlib.metadata.packages_distributions()
    imported = _third_party_imports("agent_runtime") | _third_party_imports("agent_contract")
    needed = {_canonical(distributions[name][0]) for name in imported}
    assert sorted(needed - set(runtime_requirements)) == []
    setuptools = RUNTIME["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["include"] == ["agent_contract*", "agent_runtime*"]
    main_data = MAIN["tool"]["setuptools"]["package-data"]
    assert setuptools["package-data"] == {k: main_data[k] for k in setuptools["package-data"]}
