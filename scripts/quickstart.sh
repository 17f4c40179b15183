#!/usr/bin/env bash
# Quickstart: runs a real pipeline on the embedded development broker.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1; then
  echo "[quickstart] installing protobuf-compiler (needed to build danube-core)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler
fi
# The build cache is shared with scripts/test.sh, outside the clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${DANUBE_CONNECT_CACHE:-$HOME/.cache/danube-connect}/target}"
exec cargo run --release -p danube-connect-examples --bin quickstart
