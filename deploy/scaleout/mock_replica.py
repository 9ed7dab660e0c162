#!/usr/bin/env python3
"""A stand-in for `rtdetr serve`, ONLY to self-test the scale-out harness
(test_scaleout.sh --self-test): it proves the nginx config, the client and the bookkeeping work
without the real server. It is not a model of the server's performance.

Speaks the parts of the API the harness uses: GET /health (200, 503 after SIGTERM), GET /metrics
(rtdetr_http_requests_total{route,status}, rtdetr_queue_depth), POST /v1/detections with a
Bearer key (fixed detections after --work-ms). On SIGTERM: /health and new requests answer 503,
in-flight requests finish, the listener closes, exit 0.
"""
import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--api-key", required=True)
ap.add_argument("--work-ms", type=float, default=60)
args = ap.parse_args()

lock = threading.Lock()
state = {"draining": False, "in_flight": 0, "count": {}}
DETECTIONS = [{"label": "circle", "class_id": 0, "score": 0.93,
               "box": {"xmin": 10.0, "ymin": 12.0, "xmax": 50.0, "ymax": 60.0}}]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, obj, ctype="application/json"):
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", f"mock-{args.port}-{time.monotonic_ns()}")
        if state["draining"]:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        with lock:
            key = (self.path, status)
            state["count"][key] = state["count"].get(key, 0) + 1

    def do_GET(self):
        if self.path == "/health":
            self.reply(503 if state["draining"] else 200, {"status": "draining" if state["draining"] else "ok"})
        elif self.path == "/metrics":
            lines = [f'rtdetr_http_requests_total{{route="{r}",status="{s}"}} {n}'
                     for (r, s), n in sorted(state["count"].items())]
            lines.append(f"rtdetr_queue_depth {state['in_flight']}")
            self.reply(200, ("\n".join(lines) + "\n").encode(), "text/plain")
        else:
            self.reply(404, {"error": {"message": "not found", "type": "invalid_request_error",
                                       "param": None, "code": "not_found"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.rfile.read(n)
        if self.headers.get("Authorization") != f"Bearer {args.api_key}":
            return self.reply(401, {"error": {"message": "bad key", "type": "invalid_request_error",
                                              "param": None, "code": "invalid_api_key"}})
        if state["draining"]:
            return self.reply(503, {"error": {"message": "shutting down", "type": "server_error",
                                              "param": None, "code": "shutting_down"}})
        with lock:
            state["in_flight"] += 1
        try:
            time.sleep(args.work_ms / 1000)
            self.reply(200, {"model": "mock", "width": 64, "height": 64, "detections": DETECTIONS,
                             "timings_ms": {"total": args.work_ms}})
        finally:
            with lock:
                state["in_flight"] -= 1


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True


def on_sigterm(*_):
    state["draining"] = True

    def drain():
        time.sleep(0.5)  # keeps answering 503 for a moment, as a draining server may
        server.shutdown()

    threading.Thread(target=drain, daemon=True).start()


signal.signal(signal.SIGTERM, on_sigterm)
server.serve_forever()
server.server_close()
deadline = time.monotonic() + 30
while state["in_flight"] and time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(0)
