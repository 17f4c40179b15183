#!/usr/bin/env bash
# The test command: installs what the tests need (when missing), then runs every test.
#
# The outside systems (PostgreSQL, ClickHouse, Mosquitto, tansu) are started by the tests
# themselves, each on a free 127.0.0.1 port with its data in a temp dir
# (danube-connect-testkit); this script makes sure their binaries are installed.
#
# Heavy tool installs and the cargo build cache live outside the clone:
#   DANUBE_CONNECT_CACHE (default ~/.cache/danube-connect): tools/bin (tansu), target/
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${DANUBE_CONNECT_CACHE:-$HOME/.cache/danube-connect}"
TOOLS="$CACHE/tools"
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log() { echo "[test.sh] $*"; }

# --- system packages -------------------------------------------------------------------
APT_PACKAGES=(
  protobuf-compiler            # danube-core's build script runs protoc
  postgresql                   # postgres-cdc tests (PostgreSQL 15, pg_recvlogical)
  clickhouse-server clickhouse-client   # clickhouse sink tests
  mosquitto mosquitto-clients  # mqtt tests
  wrk                          # http-source benchmark
  openssl                      # test certificates (TLS tests of postgres-cdc, mqtt)
  prometheus                   # promtool: checks and unit-tests docs/ops/alerts.yml
  make gcc g++ zlib1g-dev libssl-dev pkg-config   # rdkafka's bundled librdkafka build
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts some of these services on install; the tests use private instances.

# --- tansu (Kafka-API broker), cached outside the clone ---------------------------------
if ! command -v tansu >/dev/null 2>&1; then
  log "installing tansu 0.6.0 into $TOOLS (takes 15-25 minutes, once)"
  cargo install tansu --version 0.6.0 --locked --features dynostore --root "$TOOLS"
fi

# --- the real Danube broker (optional) ---------------------------------------------------
# Not on any package registry: the conformance suite finds it through DANUBE_BROKER_BIN.
if [ -n "${DANUBE_BROKER_BIN:-}" ]; then
  [ -x "$DANUBE_BROKER_BIN" ] || { log "DANUBE_BROKER_BIN=$DANUBE_BROKER_BIN is not an executable file"; exit 1; }
  log "real Danube broker: $DANUBE_BROKER_BIN (the conformance suite runs on both brokers)"
else
  log "REAL BROKER SUITE DID NOT RUN: DANUBE_BROKER_BIN is unset, tests run on the development broker only"
fi

log "protoc: $(protoc --version)"
log "tansu: $(command -v tansu)"
log "target dir: $CARGO_TARGET_DIR"

# --- alert rules (docs/ops): valid, and firing when they should ---------------------------
promtool check rules docs/ops/alerts.yml
promtool test rules docs/ops/alerts.test.yml

# --- formatting (rustfmt.toml), lints (clippy, and the workspace lints of Cargo.toml), -----
# --- then build and run every test ----------------------------------------------------------
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
mkdir -p "$CACHE"
cargo build --workspace --all-targets
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$CACHE/last-test.log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$CACHE/last-test.log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$CACHE/last-test.log" | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
[ -n "${DANUBE_BROKER_BIN:-}" ] || echo "[test.sh] REAL BROKER SUITE DID NOT RUN: DANUBE_BROKER_BIN is unset"
exit "$status"
