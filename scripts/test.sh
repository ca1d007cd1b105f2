#!/usr/bin/env bash
# Runs every Sluice test, installing what the tests need first.
#   bash scripts/test.sh          # everything
#   SLUICE_SKIP_INSTALL=1 ...     # skip the package checks
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"

step() { printf '\n==> %s\n' "$*"; }

# --- system packages (Debian) -------------------------------------------------
APT_PACKAGES=(
  clang libclang-dev            # bindgen for the rocksdb crate
  kcat                          # librdkafka's command-line client
  librdkafka-dev                # librdkafka for client tests and tools
  python3-confluent-kafka       # librdkafka from Python
  python3-kafka                 # kafka-python
  python3-pytest
)
if [ -z "${SLUICE_SKIP_INSTALL:-}" ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# --- Rust: format, lints, unit and integration tests -------------------------
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked

# --- real Kafka clients against the real binary ---------------------------------
# `cargo test` built the binary the client tests run.
export SLUICE_BIN="$CARGO_TARGET_DIR/debug/sluice"
step "client tests (kcat, librdkafka via confluent-kafka, kafka-python)"
cd "$ROOT/tests/clients"
/usr/bin/python3 -m pytest -q -p no:cacheprovider "$@"
