#!/usr/bin/env bash
# Brings Sluice up on this machine the way a user would try it before kind:
# localkube (a Kubernetes API stand-in whose kubelet runs pods as local
# processes) with the `sluice` binary as the nodes' image, the CRDs, and the
# operator (a process here: localkube's pods are processes of the same
# binaries, and the operator needs nothing a pod would give it). Waits until
# the node StatefulSet is Ready, prints KUBECONFIG=<path> and BOOTSTRAP=<the
# Kafka bootstrap addresses> on their own lines, and leaves it running;
# `bash e2e/down.sh` stops it.
#
#   bash e2e/up.sh                     # release binaries (the first build is long)
#   SLUICE_PROFILE=dev bash e2e/up.sh  # debug binaries
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
PROFILE="${SLUICE_PROFILE:-release}"
STATE="${SLUICE_E2E_DIR:-$HOME/.cache/sluice/e2e}"
NODES="${SLUICE_NODES:-3}"

if [ -f "$STATE/localkube.pid" ] && kill -0 "$(cat "$STATE/localkube.pid")" 2>/dev/null; then
  echo "already running (state in $STATE); bash e2e/down.sh stops it" >&2
  exit 1
fi
if ! command -v kubectl > /dev/null; then
  PATH="$(bash "$ROOT/scripts/ensure-kube-tools.sh"):$PATH"
  export PATH
fi

# SLUICE_BIN_DIR: binaries built already (the tests pass the ones `cargo
# test` built), else build them. The whole workspace, so the build shares
# its dependencies' features (and RocksDB's build) with the tests'.
if [ -n "${SLUICE_BIN_DIR:-}" ]; then
  BIN="$SLUICE_BIN_DIR"
else
  cargo build --locked -q --profile "$PROFILE" --workspace --bins
  case "$PROFILE" in dev) BIN="$CARGO_TARGET_DIR/debug" ;; *) BIN="$CARGO_TARGET_DIR/$PROFILE" ;; esac
fi

rm -rf "$STATE"
mkdir -p "$STATE"
printf '{"ghcr.io/sluice-streaming/sluice": ["%s"]}\n' "$BIN/sluice" > "$STATE/images.json"
setsid "$BIN/localkube" --kubeconfig "$STATE/kubeconfig" --images "$STATE/images.json" \
  > "$STATE/localkube.out" 2> "$STATE/localkube.log" < /dev/null &
echo $! > "$STATE/localkube.pid"
for _ in $(seq 100); do grep -q "localkube ready" "$STATE/localkube.out" && break; sleep 0.1; done
grep -q "localkube ready" "$STATE/localkube.out" || { cat "$STATE/localkube.log" >&2; exit 1; }
export KUBECONFIG="$STATE/kubeconfig"

kubectl apply -f "$ROOT/crds/" > /dev/null
# In the clear: a try-out on this machine, reached by pod IPs a
# certificate cannot name (the e2e suite runs the secured default).
setsid "$BIN/sluice-operator" --namespace default --identity operator-0 \
  --metrics-listen 127.0.0.1:0 --set advertise=podIp --set "minNodes=$NODES" \
  --set 'security={tls: none, authentication: none, authorizer: false}' \
  > "$STATE/operator.out" 2> "$STATE/operator.log" < /dev/null &
echo $! > "$STATE/operator.pid"

ready=""
for _ in $(seq 600); do
  ready=$(kubectl get statefulset sluice-node -o jsonpath='{.status.readyReplicas}' 2>/dev/null || true)
  [ "$ready" = "$NODES" ] && break
  sleep 0.2
done
if [ "$ready" != "$NODES" ]; then
  echo "the node StatefulSet did not become Ready; logs in $STATE" >&2
  exit 1
fi
BOOTSTRAP=$(kubectl get pods -l app.kubernetes.io/instance=sluice \
  -o jsonpath='{range .items[*]}{.status.podIP}:9092{","}{end}')
echo "KUBECONFIG=$KUBECONFIG"
echo "BOOTSTRAP=${BOOTSTRAP%,}"
