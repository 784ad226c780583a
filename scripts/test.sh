#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs every test: unit tests and the
# integration tests on the real kernel (real eBPF, real filesystems on loop
# devices, real gRPC on loopback). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "the tests load eBPF programs and mount filesystems: run as root" >&2
  exit 1
fi
bash scripts/setup.sh
# The integration tests start the real binaries, so build them first.
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2 "$@"
