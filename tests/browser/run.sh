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
# The fake camera plays a clip of the demo model's domain (a 320x240 window panning across
# examples/shapes-1.png, 5 fps, looped by Chromium), so that detections and tracks appear.
command -v ffmpeg >/dev/null || { echo "ffmpeg is needed to make the fake camera's clip"; exit 1; }
CAMERA=$PWD/target/browser-camera.y4m
ffmpeg -v error -y -loop 1 -framerate 5 -i examples/shapes-1.png -vf "crop=320:240:12*n:30,format=yuv420p" \
  -frames:v 12 "$CAMERA"
rc=0
RTDETR_SERVER_URL="$URL" RTDETR_API_KEY="$KEY" RTDETR_FAKE_CAMERA="$CAMERA" node tests/browser/test.mjs examples/shapes-1.png \
  || rc=$?
kill -TERM "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" || true
trap - EXIT
if [ "$rc" -ne 0 ]; then tail -n 40 "$LOG"; exit "$rc"; fi
echo "screenshots: $(ls target/browser-screenshots/*.png | tr '\n' ' ')"
