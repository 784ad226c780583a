#!/bin/sh
# False alarms of the ransomware and mass-deletion detector (issue 15;
# docs/history.md "Alarms"), measured on the real pipeline (a real agent
# and receiver, tests/tests/alarms.rs) with the ordinary workloads scaled
# up: gzip of 300*N logs, 2*N cargo builds, 40*N MiB of a Rust build's
# outputs rewritten, 100*N binaries upgraded dpkg-style, 1500*N sqlite
# transactions per journal mode. Prints, per workload, the peak of each
# signal in a window against its limit (0/100: nowhere near), then the
# ransomware run's time to the alarm.
#
#   sudo sh bench/false_alarms.sh [N]      # N defaults to 5
#
# Needs root (eBPF), gzip, sqlite3, and `cargo build --workspace --bins`
# first (debug profile, as the tests use).
set -eu
scale=${1:-5}
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
LIFELINE_ALARM_SCALE=$scale cargo test -q -p lifeline-tests --test alarms -- --nocapture --test-threads 1 >"$out" 2>&1 || {
    tail -50 "$out"
    echo "false_alarms: the test failed (output above)" >&2
    exit 1
}
grep -A6 'false-alarm margins' "$out" | sed 's/^\.//'
grep 'alarm raised' "$out" | sed 's/^\.//'
# Replication left behind (not the detector's subject, but worth a look).
grep 'still .* differences after a sync' "$out" || true
