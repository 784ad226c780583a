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
# The boot OS the console makes for a customer's PC carries a static
# lifeline-image (as scripts/test.sh builds it).
CARGO_TARGET_DIR=target/lifeline-bootos-agent CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
  cargo build --release --target x86_64-unknown-linux-musl -p lifeline-image
BOOTOS_AGENT=$ROOT/target/lifeline-bootos-agent/x86_64-unknown-linux-musl/release/lifeline-image
BIN=$ROOT/target/release
DEMO=$ROOT/demo
PORT=${LIFELINE_DEMO_PORT:-7700}
CONSOLE_PORT=${LIFELINE_DEMO_CONSOLE_PORT:-7443}
mkdir -p "$DEMO/source" "$DEMO/store" "$DEMO/agent-state"
[ -e "$DEMO/source/README.txt" ] || echo "Files here are replicated by Lifeline." > "$DEMO/source/README.txt"

# The machine "demo" is registered once; its credential and the receiver's CA
# (made on first use) go to demo/credentials.
CREDS=$DEMO/credentials
[ -e "$CREDS/demo.token" ] ||
  "$BIN/lifeline-receiver" machine add demo --store "$DEMO/store" --out "$CREDS" --notes "scripts/demo.sh"
# Can this machine capture with eBPF? (a second; the verifier's figures, then
# a write seen with its byte range). If not, the agent falls back to inotify
# and the last lines below say so and why.
CHECK_OUT=$("$BIN/lifeline-agent" check-capture --dir "$DEMO/source" 2>&1) && CAPTURE_OK=1 || CAPTURE_OK=0
"$BIN/lifeline-receiver" --listen "127.0.0.1:$PORT" --store "$DEMO/store" \
  --console-listen "127.0.0.1:$CONSOLE_PORT" --console-signup --bootos-agent "$BOOTOS_AGENT" \
  --public-url "https://127.0.0.1:$PORT" --console-url "https://127.0.0.1:$CONSOLE_PORT" &
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
echo "  console: https://127.0.0.1:$CONSOLE_PORT/  (certificate from the receiver's own CA: $CREDS/ca.crt)"
for _ in $(seq 50); do [ -e "$DEMO/store/console-first-login" ] && break; sleep 0.1; done
if [ -e "$DEMO/store/console-first-login" ]; then
  echo "  first login: $(sed -n 's/^login: //p' "$DEMO/store/console-first-login") / $(sed -n 's/^password: //p' "$DEMO/store/console-first-login")  (change it under Account)"
else
  echo "  console login: the provider admin you set up (the first password was changed)"
fi
echo "  status:  $BIN/lifeline-agent status $CTL"
echo "  off/on:  $BIN/lifeline-agent off $CTL ; $BIN/lifeline-agent on $CTL"

# Says which capture runs, and after a fallback, why; 0 when it is eBPF.
report_capture() {
  local mode
  mode=$("$BIN/lifeline-agent" status --json $CTL 2>/dev/null | sed -n 's/.*"capture":"\([a-z]*\)".*/\1/p')
  echo
  if [ "$mode" = ebpf ]; then
    echo "capture: ebpf (the kernel reports every write with its exact byte range)"
    return 0
  fi
  echo "capture: ${mode:-unknown} -- DEGRADED: inotify fallback, no byte ranges (whole files are sent)" >&2
  if [ "$CAPTURE_OK" = 0 ]; then
    echo "why: $(echo "$CHECK_OUT" | grep -m1 -A1 'capture: ebpf FAILED' | tr '\n' ' ')" >&2
  fi
  echo "what to do: run as root on a kernel with BTF; 'lifeline-agent check-capture' shows the verifier's message" >&2
  return 1
}

if [ "${1:-}" = "--check" ]; then
  SRC=$DEMO/source
  date > "$SRC/now.txt"
  mkdir -p "$SRC/docs" && seq 1 100000 > "$SRC/docs/numbers.txt"
  echo "draft" > "$SRC/docs/report.tmp" && mv "$SRC/docs/report.tmp" "$SRC/docs/report.txt"
  ln -sf docs/report.txt "$SRC/latest"
  for _ in $(seq 100); do
    if diff -r --no-dereference "$SRC" "$MIRROR" >/dev/null 2>&1; then
      "$BIN/lifeline-agent" status $CTL
      echo "demo check: the mirror is identical to the source"
      if ! curl -sf --cacert "$CREDS/ca.crt" "https://127.0.0.1:$CONSOLE_PORT/login" | grep -q 'action="/login"'; then
        echo "demo check FAILED: the console does not answer on https://127.0.0.1:$CONSOLE_PORT/login" >&2
        exit 1
      fi
      echo "demo check: the console answers"
      if report_capture; then
        echo "demo check passed"
        exit 0
      fi
      echo "demo check FAILED: replication works, but without its main feature (see above)" >&2
      exit 1
    fi
    sleep 0.1
  done
  diff -r --no-dereference "$SRC" "$MIRROR" || true
  echo "demo check FAILED: the mirror differs after 10 s" >&2
  exit 1
fi
report_capture || true
echo "Ctrl-C to stop."
wait
