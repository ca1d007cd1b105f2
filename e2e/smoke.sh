#!/usr/bin/env bash
# The by-hand path, as e2e/README.md shows it: e2e/up.sh brings the cluster
# up, a Topic is applied with kubectl, kcat writes and reads a record
# through the printed bootstrap addresses, e2e/down.sh ends it all.
#   bash e2e/smoke.sh                                   # builds release binaries
#   SLUICE_BIN_DIR=$CARGO_TARGET_DIR/debug bash e2e/smoke.sh   # binaries built already
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d)
export SLUICE_E2E_DIR="$WORK/e2e"
trap 'bash "$ROOT/e2e/down.sh" > /dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

OUT=$(bash "$ROOT/e2e/up.sh")
echo "$OUT"
KUBECONFIG=$(echo "$OUT" | sed -n 's/^KUBECONFIG=//p')
BOOTSTRAP=$(echo "$OUT" | sed -n 's/^BOOTSTRAP=//p')
export KUBECONFIG

kubectl apply -f "$ROOT/examples/topic.yaml"
status=""
for _ in $(seq 300); do
  status=$(kubectl get topic hello -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
  [ "$status" = "True" ] && break
  sleep 0.2
done
[ "$status" = "True" ] || { kubectl get topic hello -o yaml; exit 1; }
kubectl get topics

echo "hello, sluice" | kcat -P -b "$BOOTSTRAP" -t hello -X acks=all
got=$(kcat -C -b "$BOOTSTRAP" -t hello -o beginning -c 1 -e -q)
[ "$got" = "hello, sluice" ] || { echo "read back: $got" >&2; exit 1; }
echo "smoke: a record through the cluster e2e/up.sh started"
