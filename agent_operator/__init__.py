"""agent-operator: AI agents as Kubernetes custom resources, run safely."""
