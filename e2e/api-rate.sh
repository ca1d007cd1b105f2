#!/usr/bin/env bash
# Kubernetes API requests per second in steady state, reads and writes
# apart, from the nodes and the operator of a cluster e2e/up.sh started:
# with one 10-partition Topic, then with 1,000 partitions in all. localkube
# counts the requests it serves (/localkube/stats).
#   SLUICE_BIN_DIR=<dir with sluice, sluice-operator, localkube> bash e2e/api-rate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d)
export SLUICE_E2E_DIR="$WORK/e2e"
WINDOW="${SLUICE_RATE_WINDOW:-30}"
trap 'bash "$ROOT/e2e/down.sh" > /dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

OUT=$(bash "$ROOT/e2e/up.sh")
KUBECONFIG=$(echo "$OUT" | sed -n 's/^KUBECONFIG=//p')
export KUBECONFIG
URL=$(kubectl config view -o jsonpath='{.clusters[0].cluster.server}')

ready() {
  for _ in $(seq 600); do
    [ "$(kubectl get topic "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] && return 0
    sleep 0.5
  done
  echo "topic $1 did not become Ready" >&2
  exit 1
}

measure() {
  local label=$1
  # Let the cluster settle (status writes, ISR moves) before counting.
  sleep 10
  curl -s "$URL/localkube/stats" > "$WORK/before.json"
  sleep "$WINDOW"
  curl -s "$URL/localkube/stats" > "$WORK/after.json"
  python3 - "$WORK/before.json" "$WORK/after.json" "$WINDOW" "$label" <<'PY'
import json, sys
before, after = (json.load(open(f)) for f in sys.argv[1:3])
window, label = float(sys.argv[3]), sys.argv[4]
delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
reads = sum(v for k, v in delta.items() if k.split()[0] in ("get", "list"))
writes = sum(v for k, v in delta.items() if k.split()[0] in ("create", "update", "patch", "delete"))
watches = sum(v for k, v in delta.items() if k.split()[0] == "watch")
print(f"{label}: {reads / window:.2f} reads/s, {writes / window:.2f} writes/s, "
      f"{watches} new watches in {window:.0f} s; by request: "
      + ", ".join(f"{k} {v / window:.2f}/s" for k, v in sorted(delta.items())))
PY
}

cat <<'EOF' | kubectl apply -f - > /dev/null
apiVersion: sluice.dev/v1alpha1
kind: Topic
metadata: {name: ten}
spec: {partitions: 10, replicationFactor: 3}
EOF
ready ten
measure "3 nodes, 10 partitions (plus __consumer_offsets' 50)"

cat <<'EOF' | kubectl apply -f - > /dev/null
apiVersion: sluice.dev/v1alpha1
kind: Topic
metadata: {name: many}
spec: {partitions: 990, replicationFactor: 3}
EOF
ready many
measure "3 nodes, 1,000 partitions (plus __consumer_offsets' 50)"
