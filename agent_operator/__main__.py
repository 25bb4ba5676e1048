"""`python -m agent_operator`: the operator, with its settings from the environment."""

from __future__ import annotations

import kopf

from agent_operator.kube import handlers  # noqa: F401  (registers the handlers)
from agent_operator.kube.settings import LogFormat, OperatorSettings


def main() -> None:
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
        liveness_endpoint="http://0.0.0.0:8081/healthz",
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
