#!/usr/bin/env bash
# Scale-out test with real components, loopback only, bounded (issue 10's proof):
#   two `rtdetr serve` replicas (models/shapes-demo) behind nginx (the proxy at the core of
#   ingress-nginx) with the Ingress's retry policy (proxy_next_upstream error timeout http_503
#   non_idempotent, upstream keep-alive); 200 requests over 4 concurrent clients
#   (load_client.py); replica A gets SIGTERM half-way. Asserts: every request answered 200 with
#   the same detections, replica A exits 0 by itself (graceful drain) within the bound, both
#   replicas served work, and its /health never says 200 once draining; prints per-replica
#   counts (nginx access log $upstream_addr, X-Upstream-Addr, and B's /metrics).
#
#   bash deploy/scaleout/test_scaleout.sh               # needs target/release/rtdetr with `serve`
#   bash deploy/scaleout/test_scaleout.sh --self-test   # harness check with mock_replica.py
#
# Env: RTDETR_BIN (default target/release/rtdetr), REQUESTS (200), CONCURRENCY (4),
#      REQUIRE_HEALTH_503=1 to also require that /health answered 503 while draining (a server
#      that closes its listener at once answers "connection refused" instead; both are safe).
# Installs nginx (Debian package) if missing. Stops everything it started, by pid.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MODE=real
[ "${1:-}" = "--self-test" ] && MODE=mock
BIN="${RTDETR_BIN:-$ROOT/target/release/rtdetr}"
REQUESTS="${REQUESTS:-200}"
CONCURRENCY="${CONCURRENCY:-4}"
IMAGE="$ROOT/examples/shapes-1.png"
MODEL="$ROOT/models/shapes-demo"
STARTUP_TIMEOUT=180
DRAIN_TIMEOUT=60
PY="${PYTHON:-python3}"

fail() { echo "FAIL: $*"; exit 1; }

# ------------------------------------------------------------------ prerequisites
if [ "$MODE" = real ]; then
  [ -x "$BIN" ] || fail "$BIN not found: cargo build --release first"
  "$BIN" serve --help >/dev/null 2>&1 || fail "$BIN has no \`serve\` subcommand yet"
fi
[ -f "$IMAGE" ] || fail "missing $IMAGE"
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  [ "$(id -u)" = 0 ] || fail "nginx is not installed (apt-get install nginx)"
  echo "-- installing nginx (Debian package)"
  apt-get update -qq >/dev/null 2>&1 || true
  # The Debian image's policy-rc.d keeps the package from starting a system nginx.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null \
    || fail "could not install nginx"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

W="$(mktemp -d /tmp/rtdetr-scaleout.XXXXXX)"
chmod 755 "$W"
mkdir -p "$W/tmp" && chmod 1777 "$W/tmp"
PIDS=()
cleanup() {
  local p end
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  end=$((SECONDS + 10))
  for p in "${PIDS[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    { wait "$p"; } 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "-- kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r PA PB PN < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
KEY="scaleout-test-key-$RANDOM$RANDOM"

start_replica() { # start_replica NAME PORT -> sets REPLICA_PID
  if [ "$MODE" = mock ]; then
    "$PY" "$HERE/mock_replica.py" --port "$2" --api-key "$KEY" >"$W/$1.log" 2>&1 &
  else
    RAYON_NUM_THREADS=1 TOKIO_WORKER_THREADS=2 RTDETR_LOG=info \
      "$BIN" serve --model "$MODEL" --host 127.0.0.1 --port "$2" --api-key "$KEY" \
      --max-batch-size 4 --max-batch-delay-ms 5 --max-queue 64 >"$W/$1.log" 2>&1 &
  fi
  REPLICA_PID=$!
  PIDS+=("$REPLICA_PID")
}
health() { # health PORT -> prints the HTTP status or 000
  "$PY" - "$1" <<'EOF'
import http.client, sys
try:
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
    c.request("GET", "/health"); print(c.getresponse().status)
except Exception:
    print("000")
EOF
}

echo "== scale-out test ($MODE): replicas A=127.0.0.1:$PA B=127.0.0.1:$PB, nginx 127.0.0.1:$PN, work dir $W"
start_replica A "$PA"; PID_A=$REPLICA_PID
start_replica B "$PB"; PID_B=$REPLICA_PID
for name in A B; do
  port=$PA; pid=$PID_A
  [ $name = B ] && port=$PB && pid=$PID_B
  end=$((SECONDS + STARTUP_TIMEOUT))
  until [ "$(health "$port")" = 200 ]; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$W/$name.log"; fail "replica $name exited during start-up"; }
    [ $SECONDS -lt $end ] || { tail -20 "$W/$name.log"; fail "replica $name not healthy after ${STARTUP_TIMEOUT}s"; }
    sleep 0.5
  done
  echo "-- replica $name (pid $pid) healthy"
done

cat >"$W/nginx.conf" <<EOF
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 256; }
http {
  log_format scaleout '\$msec \$status "\$upstream_addr" "\$upstream_status" \$request_time \$request_uri';
  access_log $W/access.log scaleout;
  client_body_temp_path $W/tmp/body;
  proxy_temp_path $W/tmp/proxy;
  fastcgi_temp_path $W/tmp/fastcgi;
  uwsgi_temp_path $W/tmp/uwsgi;
  scgi_temp_path $W/tmp/scgi;
  client_max_body_size 20m;
  client_body_buffer_size 20m;
  upstream rtdetr {
    server 127.0.0.1:$PA max_fails=1 fail_timeout=10s;
    server 127.0.0.1:$PB max_fails=1 fail_timeout=10s;
    keepalive 16;
  }
  server {
    listen 127.0.0.1:$PN;
    location / {
      proxy_pass http://rtdetr;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 2s;
      proxy_send_timeout 60s;
      proxy_read_timeout 60s;
      proxy_next_upstream error timeout http_503 non_idempotent;
      proxy_next_upstream_tries 3;
      proxy_next_upstream_timeout 65s;
      proxy_buffering off;
      add_header X-Upstream-Addr \$upstream_addr always;
    }
  }
}
EOF
"$NGINX" -t -q -p "$W" -e "$W/nginx-error.log" -c "$W/nginx.conf" 2>"$W/nginx-t.log" \
  || { cat "$W/nginx-t.log"; fail "nginx config rejected"; }
"$NGINX" -p "$W" -e "$W/nginx-error.log" -c "$W/nginx.conf" -g 'daemon off;' >"$W/nginx.out" 2>&1 &
PIDS+=("$!")
end=$((SECONDS + 20))
until "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $PN), 1)" 2>/dev/null; do
  [ $SECONDS -lt $end ] || { cat "$W/nginx-error.log"; fail "nginx did not start"; }
  sleep 0.2
done
echo "-- nginx up"

# ------------------------------------------------------------------ load + SIGTERM half-way
"$PY" "$HERE/load_client.py" --url "http://127.0.0.1:$PN" --api-key "$KEY" --image "$IMAGE" \
  --requests "$REQUESTS" --concurrency "$CONCURRENCY" --sigterm-pid "$PID_A" \
  --sigterm-after $((REQUESTS / 2)) --health-url "http://127.0.0.1:$PA/health" \
  --timeout 60 --deadline 400 --out "$W/report.json"
CLIENT_RC=$?

# Replica A must exit by itself once drained.
end=$((SECONDS + DRAIN_TIMEOUT))
while kill -0 "$PID_A" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
if kill -0 "$PID_A" 2>/dev/null; then
  A_EXIT="still running ${DRAIN_TIMEOUT}s after the load ended"
else
  wait "$PID_A"; A_EXIT=$?
fi

# ------------------------------------------------------------------ per-replica counts
B_METRIC="$("$PY" - "$PB" <<'EOF'
import http.client, re, sys
try:
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
    c.request("GET", "/metrics"); text = c.getresponse().read().decode()
except Exception:
    print("unavailable"); sys.exit()
total, seen = 0.0, False
for line in text.splitlines():
    m = re.match(r'rtdetr_http_requests_total\{([^}]*)\}\s+([0-9.eE+]+)', line)
    if m and "detections" in m.group(1) and re.search(r'status="200"', m.group(1)):
        total += float(m.group(2)); seen = True
print(int(total) if seen else "no rtdetr_http_requests_total{route~detections,status=\"200\"} series")
EOF
)"
read -r LOG_A LOG_B LOG_RETRIED LOG_TOTAL < <("$PY" - "$W/access.log" "$PA" "$PB" <<'EOF'
import sys, re
a = b = retried = total = 0
for line in open(sys.argv[1]):
    m = re.match(r'\S+ (\d+) "([^"]*)"', line)
    if not m or "/v1/detections" not in line:
        continue
    total += 1
    addrs = [u.strip() for u in m.group(2).split(",")]
    retried += len(addrs) > 1
    last = addrs[-1]
    if m.group(1) == "200":
        a += last.endswith(":" + sys.argv[2])
        b += last.endswith(":" + sys.argv[3])
print(a, b, retried, total)
EOF
)

echo
echo "== per-replica counts (answered 200, by the replica that answered)"
echo "   replica A 127.0.0.1:$PA (SIGTERM half-way): $LOG_A"
echo "   replica B 127.0.0.1:$PB:                    $LOG_B   (B's /metrics: $B_METRIC)"
echo "   requests retried by nginx on another replica: $LOG_RETRIED (of $LOG_TOTAL in the access log)"
echo "   replica A exit status after drain: $A_EXIT"

# ------------------------------------------------------------------ verdict
ERRORS=()
[ "$CLIENT_RC" = 0 ] || ERRORS+=("not every request was answered 200 with the same detections (see above)")
[ "$A_EXIT" = 0 ] || ERRORS+=("replica A did not exit 0 after SIGTERM: $A_EXIT")
[ "${LOG_A:-0}" -gt 0 ] || ERRORS+=("replica A served nothing")
[ "${LOG_B:-0}" -gt 0 ] || ERRORS+=("replica B served nothing")
[ "$((LOG_A + LOG_B))" = "$REQUESTS" ] || ERRORS+=("access log shows $((LOG_A + LOG_B)) answers, expected $REQUESTS")
kill -0 "$PID_B" 2>/dev/null || ERRORS+=("replica B died")
if [[ "$B_METRIC" =~ ^[0-9]+$ ]] && [ "$B_METRIC" -lt "${LOG_B:-0}" ]; then
  ERRORS+=("B's request counter ($B_METRIC) is below what nginx saw it answer ($LOG_B)")
fi
HEALTH_CHECK="$("$PY" - "$W/report.json" "${REQUIRE_HEALTH_503:-0}" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
tl = r.get("health_timeline", [])
# Allow 0.5 s for the signal to be handled; after that a draining replica must not claim health.
late_200 = [t for t, s in tl if s == 200 and t > 0.5]
saw_503 = any(s == 503 for _, s in tl)
msgs = []
if late_200:
    msgs.append(f"/health answered 200 {len(late_200)} times more than 0.5 s after SIGTERM")
if sys.argv[2] == "1" and not saw_503:
    msgs.append("/health never answered 503 while draining (REQUIRE_HEALTH_503=1)")
print("; ".join(msgs))
EOF
)"
[ -z "$HEALTH_CHECK" ] || ERRORS+=("$HEALTH_CHECK")

echo
if [ ${#ERRORS[@]} -eq 0 ]; then
  echo "scale-out test: 1 passed, 0 failed ($REQUESTS requests answered 200: A $LOG_A, B $LOG_B)"
  exit 0
fi
for e in "${ERRORS[@]}"; do echo "FAIL: $e"; done
echo "-- logs: replica A"; tail -15 "$W/A.log"; echo "-- nginx errors"; tail -15 "$W/nginx-error.log"
echo "scale-out test: 0 passed, 1 failed"
exit 1
