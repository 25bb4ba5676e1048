#!/usr/bin/env bash
# The e2e tier on a kind cluster, for machines with Docker (`make kind-e2e`):
#
#   1. create a kind cluster (node image kindest/node:<K8S_VERSION of hack/versions.env>),
#   2. build the two images (docker/*.Dockerfile, through hack/images.py --builder docker)
#      as :e2e and :<chart appVersion>, load them,
#   3. install the chart once and wait for the operator, as a smoke test, then uninstall it
#      (the CRDs stay; tests/e2e/test_chart.py installs its own release),
#   4. run `KUBECONFIG_E2E=<kind kubeconfig> pytest tests/e2e` (extra arguments go to pytest).
#
# Environment: KIND_CLUSTER (default agent-operator-e2e), KIND_NODE_IMAGE (default
# kindest/node:$K8S_VERSION), KEEP_CLUSTER=1 keeps the cluster afterwards (default: deleted).
# Needs docker, kind and kubectl on PATH; helm from `make bins`, else from PATH.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=versions.env
source hack/versions.env

CLUSTER=${KIND_CLUSTER:-agent-operator-e2e}
NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:$K8S_VERSION}
STATE=${XDG_CACHE_HOME:-$HOME/.cache}/agent-operator/kind
KUBECONFIG_FILE=$STATE/$CLUSTER.kubeconfig
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/agent-operator/Chart.yaml)
SMOKE_NS=agent-operator-smoke

log() { printf '[kind-e2e] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
[[ -x .venv/bin/pytest ]] || die "no .venv: run \`make venv\` first"
BIN=$(bash hack/build-binaries.sh --check 2>/dev/null | tail -n1 || true)
HELM=${BIN:+$BIN/helm}
[[ -n "$HELM" && -x "$HELM" ]] || HELM=$(command -v helm) || die "no helm: run \`make bins\`"

mkdir -p "$STATE"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER ($NODE_IMAGE)"
  kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --kubeconfig "$KUBECONFIG_FILE" --wait 180s
else
  kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
fi
if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
  trap 'log "deleting kind cluster $CLUSTER"; kind delete cluster --name "$CLUSTER"' EXIT
fi
export KUBECONFIG=$KUBECONFIG_FILE

# The same build as `make images` (hack/images.py: the same Dockerfiles, their default BASE,
# the same tags), with docker instead of podman and nothing exported.
log "building agent-operator and agent-runtime (:e2e, :$APP_VERSION)"
IMAGE_TAG=$APP_VERSION .venv/bin/python hack/images.py --builder docker
for name in agent-operator agent-runtime; do
  kind load docker-image --name "$CLUSTER" "$name:e2e" "$name:$APP_VERSION"
done
docker pull --quiet busybox:1.36 >/dev/null  # tests/e2e/test_cluster.py runs it
kind load docker-image --name "$CLUSTER" busybox:1.36

log "smoke test: helm install, operator Available, helm uninstall"
kubectl create namespace "$SMOKE_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$SMOKE_NS" --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
"$HELM" install smoke charts/agent-operator --namespace "$SMOKE_NS" --take-ownership \
  --set image.tag=e2e --set defaultPool.image.tag=e2e --wait --timeout 180s >/dev/null
kubectl -n "$SMOKE_NS" rollout status deployment/smoke-agent-operator --timeout=120s
kubectl -n "$SMOKE_NS" delete agentpools --all --wait=true --timeout=60s >/dev/null
"$HELM" uninstall smoke --namespace "$SMOKE_NS" --wait --timeout 120s >/dev/null
kubectl delete namespace "$SMOKE_NS" --wait=false >/dev/null

log "running tests/e2e against $CLUSTER"
KUBECONFIG_E2E=$KUBECONFIG_FILE .venv/bin/pytest tests/e2e "$@"
