#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet.
# Used by scripts/dev.sh and scripts/test.sh; SLUICE_SKIP_INSTALL=1 skips it.
set -euo pipefail
[ -z "${SLUICE_SKIP_INSTALL:-}" ] || exit 0
missing=()
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0
printf '\n==> installing %s\n' "${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
