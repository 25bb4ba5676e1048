"""A Kubernetes cluster on this machine, for the e2e tests, the bench and `make cluster-up`.

`controlplane`: etcd, kube-apiserver, kube-controller-manager and kube-scheduler from the
pinned binaries, on 127.0.0.1. `kubelet`: a Node whose pods run from the local image store
(`images`), each container in namespaces of its own (`container`). Not part of the
distribution; see docs/e2e.md.
"""
