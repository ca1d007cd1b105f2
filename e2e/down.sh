#!/usr/bin/env bash
# Stops what `bash e2e/up.sh` started (the operator, localkube and with it
# every pod) and removes its state directory, data included.
set -euo pipefail
STATE="${SLUICE_E2E_DIR:-$HOME/.cache/sluice/e2e}"
for p in operator localkube; do
  if [ -f "$STATE/$p.pid" ]; then
    kill "$(cat "$STATE/$p.pid")" 2>/dev/null || true
  fi
done
# Pods end with localkube; give them a moment to go.
for _ in $(seq 50); do
  pgrep -f "$STATE/kubeconfig" >/dev/null || break
  sleep 0.1
done
rm -rf "$STATE"
echo "stopped"
