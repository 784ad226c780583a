#!/usr/bin/env bash
# Sets everything up and runs Lifeline's main job on embedded defaults: a
# receiver on 127.0.0.1 storing into ./demo/store, and an agent replicating
# ./demo/source into it in real time. Change files under demo/source and watch
# them appear under demo/store/mirror/demo/... ; Ctrl-C stops both.
#
#   scripts/demo.sh           run until Ctrl-C
#   scripts/demo.sh --check   make a few changes, verify the mirror, exit
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ "$(id -u)" -ne 0 ]; then
  echo "the agent loads eBPF programs: run as root" >&2
  exit 1
fi
bash scripts/setup.sh
cargo build --release --bins
BIN=$ROOT/target/release
DEMO=$ROOT/demo
PORT=${LIFELINE_DEMO_PORT:-7700}
mkdir -p "$DEMO/source" "$DEMO/store" "$DEMO/agent-state"
[ -e "$DEMO/source/README.txt" ] || echo "Files here are replicated by Lifeline." > "$DEMO/source/README.txt"

# The machine "demo" is registered once; its credential and the receiver's CA
# (made on first use) go to demo/credentials.
CREDS=$DEMO/credentials
[ -e "$CREDS/demo.token" ] ||
  "$BIN/lifeline-receiver" machine add demo --store "$DEMO/store" --out "$CREDS" --notes "scripts/demo.sh"
"$BIN/lifeline-receiver" --listen "127.0.0.1:$PORT" --store "$DEMO/store" &
RECEIVER=$!
"$BIN/lifeline-agent" run --receiver "https://127.0.0.1:$PORT" --token-file "$CREDS/demo.token" \
  --ca "$CREDS/ca.crt" --watch "$DEMO/source" --state-dir "$DEMO/agent-state" &
AGENT=$!
trap 'kill $AGENT $RECEIVER 2>/dev/null; wait 2>/dev/null' EXIT
CTL="--control $DEMO/agent-state/control.sock"
for _ in $(seq 50); do "$BIN/lifeline-agent" status $CTL >/dev/null 2>&1 && break; sleep 0.1; done
MIRROR="$DEMO/store/mirror/demo$DEMO/source"
echo
echo "Lifeline is replicating $DEMO/source -> $MIRROR"
echo "  status:  $BIN/lifeline-agent status $CTL"
echo "  off/on:  $BIN/lifeline-agent off $CTL ; $BIN/lifeline-agent on $CTL"

if [ "${1:-}" = "--check" ]; then
  SRC=$DEMO/source
  date > "$SRC/now.txt"
  mkdir -p "$SRC/docs" && seq 1 100000 > "$SRC/docs/numbers.txt"
  echo "draft" > "$SRC/docs/report.tmp" && mv "$SRC/docs/report.tmp" "$SRC/docs/report.txt"
  ln -sf docs/report.txt "$SRC/latest"
  for _ in $(seq 100); do
    if diff -r --no-dereference "$SRC" "$MIRROR" >/dev/null 2>&1; then
      "$BIN/lifeline-agent" status $CTL
      echo "demo check passed: the mirror is identical to the source"
      exit 0
    fi
    sleep 0.1
  done
  diff -r --no-dereference "$SRC" "$MIRROR" || true
  echo "demo check FAILED: the mirror differs after 10 s" >&2
  exit 1
fi
echo "Ctrl-C to stop."
wait
