"""End-to-end tier: a real control plane on this machine plus a local kubelet (docs/e2e.md)."""
