"""Fixtures of the operator tier: the emulated cluster with a default pool, the operator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest

from agent_operator.kube.settings import OperatorSettings

from .harness import Emulated, emulated_cluster, pool, running_operator


@pytest.fixture
def dsn(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def settings(dsn: str) -> OperatorSettings:
    """Short retry delays, so outages and refusals end quickly."""
    return OperatorSettings(dsn=dsn, metrics_port=0, store_retry_seconds=0.5, api_retry_seconds=0.5)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulated]:
    """The emulator with the AgentPool `default`; the operator's KUBECONFIG points at it."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with emulated_cluster(tmp_path) as emulated:
        monkeypatch.setenv("KUBECONFIG", str(emulated.kubeconfig))
        emulated.create("agentpools", pool())
        yield emulated


@pytest.fixture
def operator(cluster: Emulated, settings: OperatorSettings) -> Iterator[kopf.Memo]:
    with running_operator(settings) as memo:
        yield memo
