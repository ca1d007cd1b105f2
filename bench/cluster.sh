#!/usr/bin/env bash
# Replication figures on `sluice dev --nodes 3`: metadata writes (10 vs 1,000
# partitions), acks=all RF=3 next to acks=1 RF=1, failover time.
#   bash bench/cluster.sh [--records N] [--runs R] [--window SECONDS] [--failovers F]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
cargo build --locked --release -q --workspace --bins  # workspace-wide: shares RocksDB's build
exec /usr/bin/python3 bench/cluster.py --binary "$CARGO_TARGET_DIR/release/sluice" "$@"
