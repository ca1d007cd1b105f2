#!/usr/bin/env bash
# The end-to-end suite (e2e/tests/scenarios.rs) on localkube: every
# scenario starts its own localkube, installs the chart with helm and talks
# to the cluster with Kafka clients from this machine.
#   bash e2e/run.sh                          # every scenario, release binaries
#   bash e2e/run.sh delete_topic             # scenarios whose name has this
#   SLUICE_BIN_DIR=$CARGO_TARGET_DIR/debug bash e2e/run.sh   # binaries built already
#   SLUICE_E2E_KEEP=1 ...                    # keep each cluster for a look
# On kind: bash e2e/kind.sh (see e2e/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
if ! command -v helm > /dev/null || ! command -v kubectl > /dev/null; then
  PATH="$(bash scripts/ensure-kube-tools.sh):$PATH"
  export PATH
fi
command -v kcat > /dev/null || { echo "kcat is needed (apt-get install kcat)" >&2; exit 1; }
export SLUICE_E2E_PROVIDER="${SLUICE_E2E_PROVIDER:-localkube}"
if [ "$SLUICE_E2E_PROVIDER" = localkube ] && [ -z "${SLUICE_BIN_DIR:-}" ]; then
  # Workspace-wide, so features (and RocksDB's build) match the tests'.
  cargo build --locked --release --workspace --bins
  export SLUICE_BIN_DIR="$CARGO_TARGET_DIR/release"
fi
start=$(date +%s)
cargo test --locked --workspace --test scenarios -- --ignored --test-threads=1 --nocapture "$@"
echo "e2e: the suite took $(( $(date +%s) - start )) s on $SLUICE_E2E_PROVIDER"
