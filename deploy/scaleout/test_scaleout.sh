#!/usr/bin/env bash
# Scale-out test with real components, loopback only, bounded (issue 10's proof):
#   two `rtdetr serve` replicas (models/shapes-demo) behind nginx (the proxy at the core of
#   ingress-nginx) with the Ingress's retry policy (proxy_next_upstream error timeout http_503
#   non_idempotent: a refused connection or a draining replica's 503 is retried on the other
#   replica; a passed deadline is a 504 and is not retried), upstream keep-alive; 200 requests
#   over 4 concurrent clients (load_client.py); replica A gets SIGTERM half-way.
# Fails (exit 1) unless: every request is answered 200 with the same detections; replica A's
#   /health answered 503 while it drained (and never 200 after the signal was handled);
#   replica A exited 0 by itself; nginx logged no upstream connection cut mid-request (A
#   finished its in-flight work); A served requests before SIGTERM and none sent over 0.5 s
#   after it; B took over. Prints per-replica counts (nginx $upstream_addr, the X-Upstream-Addr
#   header, each replica's /metrics rtdetr_http_requests_total).
#
#   cargo build --release -p rtdetr-cli && bash deploy/scaleout/test_scaleout.sh
#
# Env: RTDETR_BIN (default target/release/rtdetr), REQUESTS (200), CONCURRENCY (4), KEEP=1
# keeps the work dir (logs, nginx.conf, report.json). Installs nginx (Debian package) if
# missing. Stops everything it started, by pid; every wait is bounded.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${RTDETR_BIN:-$ROOT/target/release/rtdetr}"
REQUESTS="${REQUESTS:-200}"
CONCURRENCY="${CONCURRENCY:-4}"
IMAGE="$ROOT/examples/shapes-1.png"
MODEL="$ROOT/models/shapes-demo"
STARTUP_TIMEOUT=60
DRAIN_TIMEOUT=30
PY="${PYTHON:-python3}"

fail() { echo "FAIL: $*"; exit 1; }

# ------------------------------------------------------------------ prerequisites
[ -x "$BIN" ] || fail "$BIN not found: cargo build --release -p rtdetr-cli first"
"$BIN" serve --help >/dev/null 2>&1 || fail "$BIN has no \`serve\` subcommand"
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

# A port free a moment ago; another process may still take it before we bind it, so every
# start below retries with a new port when its bind fails ("Address already in use").
free_port() {
  "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}
KEY="scaleout-test-key-$RANDOM$RANDOM"

start_replica() { # start_replica NAME PORT -> sets REPLICA_PID
  # --drain-delay-ms 1000 (the default): after SIGTERM the port stays open at least 1 s,
  # answering 503 to /health and to new requests, while admitted requests finish.
  RAYON_NUM_THREADS=1 TOKIO_WORKER_THREADS=2 RTDETR_LOG=info \
    "$BIN" serve --model "$MODEL" --host 127.0.0.1 --port "$2" --api-key "$KEY" \
    --max-batch-size 4 --max-batch-delay-ms 5 --max-queue 64 --drain-delay-ms 1000 >"$W/$1.log" 2>&1 &
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

start_healthy_replica() { # start_healthy_replica NAME -> sets REPLICA_PID, REPLICA_PORT
  local name=$1 attempt port pid end
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    start_replica "$name" "$port"; pid=$REPLICA_PID
    end=$((SECONDS + STARTUP_TIMEOUT))
    until [ "$(health "$port")" = 200 ]; do
      if ! kill -0 "$pid" 2>/dev/null; then
        grep -q "in use" "$W/$name.log" && { echo "-- port $port was taken (attempt $attempt), retrying"; continue 2; }
        tail -20 "$W/$name.log"; fail "replica $name exited during start-up"
      fi
      [ $SECONDS -lt $end ] || { tail -20 "$W/$name.log"; fail "replica $name not healthy after ${STARTUP_TIMEOUT}s"; }
      sleep 0.5
    done
    REPLICA_PORT=$port
    echo "-- replica $name (pid $pid) healthy on 127.0.0.1:$port"
    return 0
  done
  fail "replica $name: no free port after 5 attempts"
}

echo "== scale-out test: work dir $W"
start_healthy_replica A; PID_A=$REPLICA_PID; PA=$REPLICA_PORT
start_healthy_replica B; PID_B=$REPLICA_PID; PB=$REPLICA_PORT

NGINX_UP=0
for attempt in 1 2 3 4 5; do
PN=$(free_port)
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
      # As the Ingress (deploy/kubernetes/base/ingress.yaml): retry where no work was done
      # (connection refused, 503 not ready / shutting down); never a 504 (deadline passed:
      # the replica already spent its time) nor a 429 (back-pressure goes to the client).
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
NGINX_PID=$!
PIDS+=("$NGINX_PID")
end=$((SECONDS + 20))
until "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $PN), 1)" 2>/dev/null; do
  if ! kill -0 "$NGINX_PID" 2>/dev/null; then
    grep -q "in use" "$W/nginx-error.log" "$W/nginx.out" && { echo "-- port $PN was taken (attempt $attempt), retrying"; continue 2; }
    cat "$W/nginx-error.log"; fail "nginx exited during start-up"
  fi
  [ $SECONDS -lt $end ] || { cat "$W/nginx-error.log"; fail "nginx did not start"; }
  sleep 0.2
done
NGINX_UP=1
break
done
[ "$NGINX_UP" = 1 ] || fail "nginx: no free port after 5 attempts"
echo "-- nginx up on 127.0.0.1:$PN"

# ------------------------------------------------------------------ load + SIGTERM half-way
"$PY" "$HERE/load_client.py" --url "http://127.0.0.1:$PN" --api-key "$KEY" --image "$IMAGE" \
  --requests "$REQUESTS" --concurrency "$CONCURRENCY" --sigterm-pid "$PID_A" \
  --sigterm-after $((REQUESTS / 2)) --health-url "http://127.0.0.1:$PA/health" \
  --metrics-url "http://127.0.0.1:$PA/metrics" --timeout 30 --deadline 90 --out "$W/report.json"
CLIENT_RC=$?

# Replica A must exit by itself once drained.
end=$((SECONDS + DRAIN_TIMEOUT))
while kill -0 "$PID_A" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
if kill -0 "$PID_A" 2>/dev/null; then
  A_EXIT="still running ${DRAIN_TIMEOUT}s after the load ended"
else
  wait "$PID_A"; A_EXIT=$?
fi
# B's counters now (A's were scraped by the load client while A drained).
"$PY" - "$PB" >"$W/B.metrics" <<'EOF'
import http.client, sys
try:
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
    c.request("GET", "/metrics"); print(c.getresponse().read().decode())
except Exception:
    pass
EOF

# ------------------------------------------------------------------ per-replica counts, verdict
"$PY" - "$W" "$PA" "$PB" "$REQUESTS" "$CONCURRENCY" "$A_EXIT" "$CLIENT_RC" <<'EOF'
import json, re, sys
w, pa, pb, requests, concurrency, a_exit, client_rc = sys.argv[1:8]
requests, concurrency = int(requests), int(concurrency)
r = json.load(open(f"{w}/report.json"))

def metric_200(text):
    """rtdetr_http_requests_total for POST /v1/detections answered 200, or None."""
    total, seen = 0, False
    for line in (text or "").splitlines():
        m = re.match(r'rtdetr_http_requests_total\{([^}]*)\}\s+([0-9.eE+]+)', line)
        if m and "detections" in m.group(1) and 'status="200"' in m.group(1):
            total += float(m.group(2)); seen = True
    return int(total) if seen else None

# nginx access log: who answered (the last address in $upstream_addr), and retries.
log = {"A": 0, "B": 0}
retried, upstream_statuses = 0, {}
for line in open(f"{w}/access.log"):
    m = re.match(r'\S+ (\d+) "([^"]*)" "([^"]*)"', line)
    if not m or "/v1/detections" not in line:
        continue
    addrs = [u.strip() for u in m.group(2).split(",")]
    if len(addrs) > 1:
        retried += 1
        upstream_statuses[m.group(3)] = upstream_statuses.get(m.group(3), 0) + 1
    if m.group(1) == "200":
        log["A"] += addrs[-1].endswith(":" + pa)
        log["B"] += addrs[-1].endswith(":" + pb)
hdr = {"A": 0, "B": 0}
for k, n in r["by_upstream_header"].items():
    last = k.split(",")[-1].strip()
    hdr["A"] += n if last.endswith(":" + pa) else 0
    hdr["B"] += n if last.endswith(":" + pb) else 0
met = {"A": metric_200(r.get("sigtermed_metrics_last")), "B": metric_200(open(f"{w}/B.metrics").read())}
def side(d, port):
    return sum(n for k, n in d.items() if k.endswith(":" + port))
drained = {"A": side(r["in_flight_at_sigterm_answered_by"], pa), "B": side(r["in_flight_at_sigterm_answered_by"], pb)}
new_work = {"A": side(r["sent_over_0.5s_after_sigterm_answered_by"], pa),
            "B": side(r["sent_over_0.5s_after_sigterm_answered_by"], pb)}
tl = r.get("health_timeline", [])
health_503 = sum(1 for _, s in tl if s == 503)
first_503 = next((t for t, s in tl if s == 503), None)
late_200 = [t for t, s in tl if s == 200 and t > 0.5]
err_log = open(f"{w}/nginx-error.log").read()
cut = [l for l in err_log.splitlines()
       if "prematurely closed" in l or "reset by peer" in l or "upstream timed out" in l]

print()
print("== per-replica counts (POST /v1/detections answered 200)")
rows = [(f"replica {n} 127.0.0.1:{p}{note}", n) for n, p, note in (("A", pa, " (SIGTERM half-way)"), ("B", pb, ""))]
wl = max(len(label) for label, _ in rows)
print(f"   {'':{wl}} {'nginx log':>9} {'X-Upstream':>10} {'/metrics':>8} {'in flight at':>12} {'sent >0.5 s':>11}")
print(f"   {'':{wl}} {'':>9} {'header':>10} {'':>8} {'SIGTERM':>12} {'after it':>11}")
for label, name in rows:
    m = met[name] if met[name] is not None else "n/a"
    print(f"   {label:<{wl}} {log[name]:>9} {hdr[name]:>10} {m!s:>8} {drained[name]:>12} {new_work[name]:>11}")
print(f"   retried by nginx on the other replica: {retried} (upstream statuses {upstream_statuses})")
print(f"   A's /health after SIGTERM: {r['health_after_sigterm']} (first 503 at "
      f"{first_503} s); A's exit status: {a_exit}")

errors = []
if client_rc != "0":
    errors.append("not every request was answered 200 with the same detections (see above)")
if a_exit != "0":
    errors.append(f"replica A did not exit 0 after SIGTERM: {a_exit}")
if log["A"] == 0:
    errors.append("replica A (the one stopped) served nothing")
if new_work["B"] == 0 or log["B"] == 0:
    errors.append("replica B did not take over after SIGTERM")
if new_work["A"]:
    errors.append(f"replica A answered {new_work['A']} requests sent more than 0.5 s after its SIGTERM")
if log["A"] + log["B"] != requests:
    errors.append(f"nginx logged {log['A'] + log['B']} answers, expected {requests}")
if hdr != log:
    errors.append(f"X-Upstream-Addr counts {hdr} differ from nginx's log {log}")
for name in ("A", "B"):
    if met[name] is None:
        errors.append(f"no rtdetr_http_requests_total from replica {name}'s /metrics")
    elif met[name] < log[name]:
        errors.append(f"replica {name}'s request counter ({met[name]}) is below nginx's count ({log[name]})")
if health_503 == 0:
    errors.append("replica A's /health never answered 503 while draining")
if late_200:
    errors.append(f"replica A's /health answered 200 {len(late_200)} times more than 0.5 s after SIGTERM")
if cut:
    errors.append(f"nginx saw {len(cut)} upstream connections cut mid-request: {cut[:2]}")
print()
for e in errors:
    print(f"FAIL: {e}")
sys.exit(1 if errors else 0)
EOF
VERDICT=$?
kill -0 "$PID_B" 2>/dev/null || { echo "FAIL: replica B died"; VERDICT=1; }
if [ "$VERDICT" = 0 ]; then
  echo "scale-out test: 1 passed, 0 failed ($REQUESTS requests over $CONCURRENCY clients answered 200; replica A drained on SIGTERM)"
  exit 0
fi
echo "-- logs: replica A"; tail -15 "$W/A.log"; echo "-- nginx errors"; tail -15 "$W/nginx-error.log"
echo "scale-out test: 0 passed, 1 failed"
exit 1
