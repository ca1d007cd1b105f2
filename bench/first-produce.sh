#!/usr/bin/env bash
# First produce figure: one librdkafka producer (kcat), 100-byte records,
# acks=1, against `sluice dev` built in release mode. Loopback only; stops by itself.
#   bash bench/first-produce.sh [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-2000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
cargo build --locked --release -q --workspace --bins  # workspace-wide: shares RocksDB's build
BIN="$CARGO_TARGET_DIR/release/sluice"
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN" dev --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$WORK/data" > "$WORK/out" 2> "$WORK/err" &
PID=$!
until grep -q "sluice ready" "$WORK/out"; do sleep 0.1; done
ADDR=$(sed -n 's/.*kafka=\([^ ]*\).*/\1/p' "$WORK/out")
# 100-byte values: 99 characters and the newline kcat splits on.
/usr/bin/python3 -c "
import sys
line = ('x' * 99 + '\n').encode()
sys.stdout.buffer.write(line * $N)" > "$WORK/records"
kcat -b "$ADDR" -P -t warmup -X acks=1 <<< "warm"
START=$(date +%s.%N)
kcat -b "$ADDR" -P -t bench -X acks=1 -X linger.ms=5 -X batch.num.messages=10000 \
  -X queue.buffering.max.messages=1000000 -l "$WORK/records"
END=$(date +%s.%N)
COUNT=$(kcat -b "$ADDR" -C -t bench -o beginning -e -q -f '\n' | wc -l)
/usr/bin/python3 -c "
n, t = $COUNT, $END - $START
print(f'records={n} seconds={t:.2f} records/s={n/t:,.0f} MB/s={n*100/t/1e6:.1f}')"
