"""`python -m agent_operator`: the operator, with its settings from the environment."""

from __future__ import annotations

import argparse
import random

import kopf

from agent_operator.kube import handlers  # noqa: F401  (registers the handlers)
from agent_operator.kube.settings import LogFormat, OperatorSettings

# The peering object the Helm chart creates (a ClusterKopfPeering, or a KopfPeering in each
# watched namespace) when it runs more than one replica.
PEERING_NAME = "default"


def main(argv: list[str] | None = None) -> None:
    # No options: `--help` says so, and a stray argument fails rather than being ignored.
    argparse.ArgumentParser(
        prog="python -m agent_operator",
        description="The agent-operator's Kopf operator. Its settings come from the "
        "environment (AGENT_OPERATOR_NAMESPACES, AGENT_OPERATOR_DSN, ...; the Helm chart's "
        "ConfigMap sets them), its cluster from the in-cluster service account or KUBECONFIG.",
    ).parse_args(argv)
    settings = OperatorSettings.from_env()
    kopf.configure(
        log_format=kopf.LogFormat.JSON
        if settings.log_format == LogFormat.json
        else kopf.LogFormat.FULL
    )
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=not settings.peering,
        # Kopf pauses every operator of a peering that shares the top priority, so each
        # replica draws its own: the highest works, the others wait to take over. The name
        # makes peering mandatory: without its peering object the operator stops instead of
        # running alone next to the other replicas.
        priority=random.SystemRandom().randint(1, 2**31 - 1) if settings.peering else 0,
        peering_name=PEERING_NAME if settings.peering else None,
        liveness_endpoint=(
            f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
        ),
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
