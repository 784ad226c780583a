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
# First, in seconds: does eBPF capture work on this machine? Every real-time
# test depends on it; stop now with the verifier's message rather than after
# every one of them has failed.
cargo build --bin lifeline-agent
check_dir=$(mktemp -d /var/tmp/lifeline-check.XXXXXX)
if ! target/debug/lifeline-agent check-capture --dir "$check_dir"; then
  rmdir "$check_dir"
  echo "test.sh: eBPF capture does not work on this machine (above: why); the real-time tests would all fail. Stopping." >&2
  exit 1
fi
rmdir "$check_dir"
# The integration tests start the real binaries, so build them first.
cargo build --workspace --bins
# The boot OS test puts a static (musl) lifeline-image into its initramfs, and
# the other-kernels test (tests/tests/kernels.rs) a static lifeline-agent: build
# them now, exactly as bootos::agent::static_build does (one package per
# command, or the features would differ and the tests would build again), not
# while other tests run.
for pkg in lifeline-image lifeline-agent; do
  CARGO_TARGET_DIR=target/lifeline-bootos-agent CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=true \
    cargo build --release --target x86_64-unknown-linux-musl -p "$pkg"
done
log=$(mktemp)
status=0
# Format and lints (rustfmt.toml; clippy with warnings as errors), for the
# workspace and the eBPF crate (its own workspace, formatted with the same
# pinned toolchain). A failure fails the run but does not hide the tests'.
lint_failed=0
cargo fmt --all --check >/dev/null || { echo "test.sh: cargo fmt --all --check: run cargo fmt --all" >&2; lint_failed=1; }
cargo +"$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)" fmt --manifest-path ebpf/lifeline-ebpf/Cargo.toml --check >/dev/null ||
  { echo "test.sh: the eBPF crate is not formatted: cargo fmt --manifest-path ebpf/lifeline-ebpf/Cargo.toml" >&2; lint_failed=1; }
cargo clippy --workspace --all-targets -- -D warnings || { echo "test.sh: clippy found warnings (above)" >&2; lint_failed=1; }
cargo test --workspace --no-fail-fast -- --test-threads=2 "$@" 2>&1 | tee "$log" || status=$?
# The parsers of untrusted on-disk bytes, fuzzed for a bounded time (skipped
# when running a filtered subset of the tests).
if [ $# -eq 0 ]; then
  bash scripts/fuzz.sh "${LIFELINE_FUZZ_SECONDS:-20}" 2>&1 | tee -a "$log" || status=1
fi
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
if [ $lint_failed -ne 0 ]; then
  echo "format or lint checks failed (above)"
  status=1
fi
exit $status
