#!/usr/bin/env bash
# Starts `rtdetr serve` with the bundled demo model (and a second model) on a free loopback port (with an API key),
# runs the browser test (test.mjs) against it, stops the server. Needs target/release/rtdetr
# (cargo build --release -p rtdetr-cli), /usr/bin/chromium and `npm ci` done in tests/browser.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${RTDETR_BIN:-$PWD/target/release/rtdetr}"
mkdir -p target
LOG=target/browser-serve.log
KEY="browser-$RANDOM$RANDOM$RANDOM"
# Two models (the demo model first, the default; an RT-DETRv2 fixture of other classes) for
# the page's model picker.
RTDETR_API_KEYS="$KEY" "$BIN" serve --model models/shapes-demo --model crates/rtdetr/tests/fixtures/tiny-v2 \
  --host 127.0.0.1 --port 0 >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 600); do
  URL=$(grep -o -m1 'http://127\.0\.0\.1:[0-9]*' "$LOG" || true)
  [ -n "$URL" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG"; echo "rtdetr serve exited early"; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { cat "$LOG"; echo "rtdetr serve did not print its address"; exit 1; }
rc=0
RTDETR_SERVER_URL="$URL" RTDETR_API_KEY="$KEY" node tests/browser/test.mjs examples/shapes-1.png || rc=$?
kill -TERM "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" || true
trap - EXIT
if [ "$rc" -ne 0 ]; then tail -n 40 "$LOG"; exit "$rc"; fi
echo "screenshots: $(ls target/browser-screenshots/*.png | tr '\n' ' ')"
