#!/usr/bin/env bash
# The benchmark comparison behind docs/benchmarks.md: Sluice (1 node and a
# 3-node cluster) next to Tansu under the same librdkafka load, the machine's
# ceilings, resource use. Loopback only; stops by itself.
#
#   bash bench/compare.sh            full run (release builds; installs Tansu
#                                    into ~/.cache/sluice/tansu on first use),
#                                    rewrites the comparison in docs/benchmarks.md
#   bash bench/compare.sh --smoke    seconds-long run of every scenario on debug
#                                    builds, without Tansu, into a scratch file
#                                    (what CI runs, so the tool never rots)
# Further options go to bench/compare.py (--runs, --records, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"

# The plot needs matplotlib (in the tests' virtualenv), the instructions
# per MB need valgrind's callgrind (this VM has no hardware counters).
VENV="${SLUICE_VENV:-$HOME/.cache/sluice/venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import matplotlib" 2>/dev/null ||
  "$VENV/bin/pip" install -q --disable-pip-version-check matplotlib
bash scripts/ensure-packages.sh valgrind
PY="$VENV/bin/python"

if [ "${1:-}" = "--smoke" ]; then
  shift
  # Workspace-wide, as the tests build: a per-package build resolves
  # features differently and compiles RocksDB again.
  cargo build --locked -q --workspace --bins
  OUT=$(mktemp --suffix=.md)
  trap 'rm -f "$OUT" "$OUT.png"' EXIT
  "$PY" bench/compare.py \
    --sluice-binary "$CARGO_TARGET_DIR/debug/sluice" \
    --bench-binary "$CARGO_TARGET_DIR/debug/sluice-bench" \
    --runs 1 --records 20000 --consume-records 20000 --e2e-seconds 1 \
    --wa-records 5000 --wa-settle-s 1 --instructions-records 500 \
    --ceiling-bytes 16777216 --startup-bytes 4194304 --timeout 300 \
    --output "$OUT" --plot "$OUT.png" --command "bash bench/compare.sh --smoke" "$@"
  test -s "$OUT.png"
  cat "$OUT"
  exit 0
fi

# Workspace-wide, as e2e/run.sh builds release: one RocksDB build for both.
cargo build --locked --release -q --workspace --bins
TANSU="$(bash scripts/ensure-tansu.sh)"
exec "$PY" bench/compare.py \
  --sluice-binary "$CARGO_TARGET_DIR/release/sluice" \
  --bench-binary "$CARGO_TARGET_DIR/release/sluice-bench" \
  --tansu-binary "$TANSU" "$@"
