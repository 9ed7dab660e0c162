#!/usr/bin/env bash
# Schema-driven API test of `rtdetr serve` (loopback only, bounded).
#
# Starts `rtdetr serve` on the tiny fixture model with an API key on 127.0.0.1 (port 0), then:
#   1. check_auth.py: every /v1 operation of /openapi.json refuses missing, wrong and
#      malformed keys with 401 (WebSocket handshakes included) and documents it;
#   2. schemathesis (pinned in requirements.txt, settings in schemathesis.toml, realistic
#      images and labels from hooks.py) against the live /openapi.json: no 5xx, every status
#      code documented, every response body matching its schema, and the other checks;
#   3. the server log has no panic, and SIGTERM stops the server with exit status 0.
#
#   bash tests/schemathesis/run.sh                # what CI runs
#   ST_MAX_EXAMPLES=300 ST_SEED=7 bash tests/schemathesis/run.sh
#
# Environment: RTDETR_BIN (default target/release/rtdetr, not built here), ST_VENV (default
# target/schemathesis-venv, created and filled from requirements.txt when missing or stale),
# ST_MAX_EXAMPLES (per operation and phase, default 150), ST_SEED (default 20261130: the same
# cases every run; change it to explore), ST_WORKERS (default 1: with 2, schemathesis 4.32
# drew far fewer chat cases), ST_TIMEOUT (seconds for the schemathesis run, default 150).
# Reports (JUnit, NDJSON, status counts per operation) and the server log go to
# target/schemathesis/. About 30 s here, plus about 25 s to fill a fresh venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${RTDETR_BIN:-$PWD/target/release/rtdetr}
VENV=$(realpath -m "${ST_VENV:-target/schemathesis-venv}")
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-150}
SEED=${ST_SEED:-20261130}
WORKERS=${ST_WORKERS:-1}
ST_TIMEOUT=${ST_TIMEOUT:-150}
MODEL=crates/rtdetr/tests/fixtures/tiny-bottleneck
OUT=target/schemathesis
HERE=tests/schemathesis

[ -x "$BIN" ] || { echo "schemathesis: $BIN is not built (cargo build --release -p rtdetr-cli)"; exit 1; }

# The virtual environment, (re)filled when requirements.txt changed.
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/schemathesis" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$want" >"$stamp"
fi

rm -rf "$OUT"
mkdir -p "$OUT"
LOG="$OUT/serve.log"
KEY="st-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
RTDETR_API_KEYS="$KEY" "$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 600); do
  URL=$(grep -o -m1 'http://127\.0\.0\.1:[0-9]*' "$LOG" || true)
  [ -n "$URL" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG"; echo "schemathesis: rtdetr serve exited early"; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { cat "$LOG"; echo "schemathesis: rtdetr serve did not print its address"; exit 1; }
for _ in $(seq 1 600); do
  curl -fsS --noproxy '*' "$URL/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS --noproxy '*' "$URL/health" >/dev/null || { cat "$LOG"; echo "schemathesis: /health never answered 200"; exit 1; }

failed=()

echo "-- auth on every /v1 operation (check_auth.py)"
"$VENV/bin/python" "$HERE/check_auth.py" "$URL" "$KEY" || failed+=("check_auth.py")

echo "-- schemathesis $("$VENV/bin/schemathesis" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1) against $URL/openapi.json (max $MAX_EXAMPLES examples per operation and phase, seed $SEED)"
# Phases: examples (the schema's own examples), coverage (boundary and invalid values of every
# keyword, deterministic) and fuzzing (hypothesis, with hooks.py). Not `stateful`: the API
# keeps no state between requests (its one link, list models -> get model, is covered by the
# hooks), and its open-ended scenarios would only repeat the fuzzing phase's requests.
# It runs in $OUT, where hypothesis leaves its .hypothesis/ cache.
rc=0
ROOT=$PWD
(
  cd "$OUT"
  RTDETR_ST_STATS="$ROOT/$OUT/status-counts.json" SCHEMATHESIS_HOOKS="$ROOT/$HERE/hooks.py" NO_COLOR=1 \
    timeout -k 10 "$ST_TIMEOUT" "$VENV/bin/schemathesis" --config-file "$ROOT/$HERE/schemathesis.toml" \
    run "$URL/openapi.json" \
    --header "Authorization: Bearer $KEY" \
    --phases examples,coverage,fuzzing \
    --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers "$WORKERS" \
    --continue-on-failure --request-timeout 30 --generation-database none \
    --report junit,ndjson --report-dir "$ROOT/$OUT" >"$ROOT/$OUT/schemathesis.txt" 2>&1
) || rc=$?
cat "$OUT/schemathesis.txt"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  failed+=("schemathesis ran past ${ST_TIMEOUT}s")
elif [ "$rc" -ne 0 ]; then
  failed+=("schemathesis (exit $rc)")
fi
# What the run got, per operation and status (written by hooks.py).
"$VENV/bin/python" - "$OUT/status-counts.json" <<'EOF' || failed+=("status counts")
import json, sys
d = json.load(open(sys.argv[1]))
print("-- responses by operation, generation mode, status (error code)")
for r in d["responses"]:
    err = f" ({r['error']})" if r["error"] else ""
    print(f"   {r['operation']:<28} {r['mode'] or '-':<8} {r['status']} {r['content_type']}{err}: {r['responses']}")
if d["network_errors"]:
    print(f"   requests without a response: {d['network_errors']}")
    sys.exit(1)
EOF

if grep -n -i 'panicked' "$LOG"; then failed+=("a panic in the server log"); fi

# Graceful shutdown: SIGTERM must drain and exit 0.
kill -TERM "$SERVER_PID"
src=0
wait "$SERVER_PID" || src=$?
trap - EXIT
[ "$src" -eq 0 ] || failed+=("rtdetr serve exited with $src after SIGTERM")

if [ "${#failed[@]}" -ne 0 ]; then
  tail -n 20 "$LOG"
  printf 'schemathesis: FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "schemathesis: ok (auth on every /v1 operation, schema conformance, no 5xx, graceful stop)"
