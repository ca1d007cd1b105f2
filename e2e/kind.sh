#!/usr/bin/env bash
# The end-to-end suite on kind: creates a cluster (one control plane, three
# workers in zones a, b and c), builds the two images from the Dockerfile
# and loads them, runs every scenario of e2e/tests/scenarios.rs against it
# (helm installs the chart into one namespace per scenario; Kafka clients
# run in a pod there), and deletes the cluster.
#
#   bash e2e/kind.sh                          # everything
#   bash e2e/kind.sh delete_topic             # scenarios whose name has this
#   bash e2e/kind.sh --keep-cluster ...       # leave the cluster (and, with
#                                             # SLUICE_E2E_KEEP=1, namespaces)
#   bash e2e/kind.sh --reuse-cluster ...      # use the cluster a kept run left
#   bash e2e/kind.sh --skip-build ...         # images already loaded
#   KIND_CLUSTER=name bash e2e/kind.sh        # another cluster name
#
# Needs: docker, kind, cargo (kubectl and helm: the pinned ones of
# scripts/ensure-kube-tools.sh); see e2e/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLUSTER="${KIND_CLUSTER:-sluice-e2e}"
# The chart needs Kubernetes 1.28 or later (the pod-index label).
NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.31.0}"
TAG=e2e
NEXT_TAG=e2e-next
KCAT=docker.io/edenhill/kcat:1.7.1
keep=0 reuse=0 build=1
args=()
for a in "$@"; do
  case "$a" in
    --keep-cluster) keep=1 ;;
    --reuse-cluster) reuse=1 ;;
    --skip-build) build=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

for tool in docker kind cargo; do
  command -v "$tool" > /dev/null || { echo "e2e/kind.sh needs $tool on PATH" >&2; exit 1; }
done
# The same pinned kubectl and helm as the localkube runs.
PATH="$(bash scripts/ensure-kube-tools.sh):$PATH"
export PATH

WORK=$(mktemp -d)
export KUBECONFIG="$WORK/kubeconfig"
cleanup() {
  if [ "$keep" = 0 ] && [ "$reuse" = 0 ]; then
    kind delete cluster --name "$CLUSTER" > /dev/null 2>&1 || true
  else
    kind get kubeconfig --name "$CLUSTER" > "$ROOT/.kind-kubeconfig" 2>/dev/null || true
    echo "kind cluster $CLUSTER kept; KUBECONFIG=$ROOT/.kind-kubeconfig" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$reuse" = 1 ]; then
  kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"
else
  cat > "$WORK/kind.yaml" <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    labels: {topology.kubernetes.io/zone: a}
  - role: worker
    labels: {topology.kubernetes.io/zone: b}
  - role: worker
    labels: {topology.kubernetes.io/zone: c}
YAML
  kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --config "$WORK/kind.yaml" \
    --kubeconfig "$KUBECONFIG" --wait 120s
fi

if [ "$build" = 1 ]; then
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
  docker build --target node --build-arg VERSION="$version" \
    -t "ghcr.io/sluice-streaming/sluice:$TAG" -t "ghcr.io/sluice-streaming/sluice:$NEXT_TAG" .
  docker build --target operator --build-arg VERSION="$version" \
    -t "ghcr.io/sluice-streaming/sluice-operator:$TAG" .
  docker pull "$KCAT"
  kind load docker-image --name "$CLUSTER" \
    "ghcr.io/sluice-streaming/sluice:$TAG" "ghcr.io/sluice-streaming/sluice:$NEXT_TAG" \
    "ghcr.io/sluice-streaming/sluice-operator:$TAG" "$KCAT"
fi

export SLUICE_E2E_PROVIDER=kind SLUICE_E2E_IMAGE_TAG=$TAG SLUICE_E2E_NEXT_TAG=$NEXT_TAG
start=$(date +%s)
cargo test --locked --workspace --test scenarios -- --ignored --test-threads=1 --nocapture ${args[@]+"${args[@]}"}
echo "e2e: the suite took $(( $(date +%s) - start )) s on kind"
