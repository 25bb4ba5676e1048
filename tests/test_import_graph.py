"""The package graph: `agent_contract` <- `agent_operator`, `agent_contract` <- `agent_runtime`.

The operator validates plans against tool specs and never loads a tool's implementation
(with its HTTP, SQL and Kubernetes clients); a step never loads the operator (its store).
`localcluster`, the e2e tier's cluster, stands apart from all of them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imported_packages(package: str) -> dict[str, set[str]]:
    """Per module file of `package`, the top-level packages it imports (lazily too)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("agent_runtime", {"agent_operator"}),
        ("agent_operator", {"agent_runtime"}),
        ("agent_contract", {"agent_operator", "agent_runtime"}),
        # A tool of its own: the tests, the bench and `make cluster-up` import it, not it them.
        ("localcluster", {"agent_contract", "agent_operator", "agent_runtime", "tests"}),
    ],
)
def test_no_module_imports_a_package_it_must_not(package: str, forbidden: set[str]) -> None:
    offenders = {m: sorted(p & forbidden) for m, p in _imported_packages(package).items()}
    assert {m: p for m, p in offenders.items() if p} == {}


def test_the_operator_loads_no_tool_implementation() -> None:
    """What actually gets imported when the core, the Kopf shell and the embedded runner load."""
    probe = (
        "import json, sys\n"
        "import agent_operator.core.decide, agent_operator.kube.reconciler\n"
        "import agent_operator.kube.handlers, agent_operator.embedded, agent_operator.cli\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'agent_runtime')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(done.stdout) == []
