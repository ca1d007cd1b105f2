#!/usr/bin/env bash
# Starts Sluice on the embedded default: `sluice dev`, a broker on
# localhost:9092 with data in ./sluice-data. Extra arguments go to `sluice dev`
# (see `sluice dev --help`). Installs the build's system packages if missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# clang/libclang for the rocksdb crate's bindings, protoc for the gRPC service,
# a C toolchain, OpenSSL headers and pkg-config for the CLI's librdkafka.
bash "$here/ensure-packages.sh" clang libclang-dev protobuf-compiler \
  build-essential libssl-dev pkg-config
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
exec cargo run --release --manifest-path "$here/../Cargo.toml" -p sluice-node --bin sluice -- dev "$@"
