#!/usr/bin/env bash
# Prints the path of a Tansu broker binary (a second, independent
# Kafka-compatible broker), installing it with cargo into ~/.cache/sluice/tansu
# on first use. Used by the CLI tests (the CLI speaks the Kafka protocol only)
# and by bench/compare.sh. TANSU_BIN overrides it.
set -euo pipefail
version=0.6.0
bin="${TANSU_BIN:-$HOME/.cache/sluice/tansu/bin/tansu}"
if [ ! -x "$bin" ]; then
  echo "installing tansu $version (cargo install, once)" >&2
  cargo install -q --locked tansu --version "$version" --features dynostore,libsql \
    --root "$HOME/.cache/sluice/tansu" --target-dir "$HOME/.cache/sluice/tansu-target" >&2
fi
echo "$bin"
