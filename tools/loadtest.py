#!/usr/bin/env python3
"""Bounded load test of `rtdetr serve` (standard library only, loopback only).

1. Calibrate: a closed loop of --workers clients for --calibrate seconds measures the
   server's capacity (successful requests per second).
2. Overload: an open loop sends requests at --factor x capacity (default 4x) for
   --duration seconds (and at most --max-requests), each on its own worker thread.
3. Report p50/p99 latency, throughput, how many got 429, and fail (exit 1) if any request
   got a 5xx or no response at all ("lost").

Starts its own server with --model when --url is not given:

    python3 tools/loadtest.py --model models/shapes-demo --image examples/shapes-1.png
    python3 tools/loadtest.py --url http://127.0.0.1:8080 --api-key KEY --image photo.png

Only loopback URLs are accepted.
"""

import argparse
import base64
import concurrent.futures
import ipaddress
import json
import os
import pathlib
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def is_loopback_url(url):
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    def __init__(self, url, key, body, timeout):
        self.url = url.rstrip("/") + "/v1/detections"
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.body = body
        self.timeout = timeout
        # Never use an environment proxy for loopback traffic.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def one(self):
        """(status or None when lost, latency seconds, retry_after)."""
        start = time.perf_counter()
        req = urllib.request.Request(self.url, data=self.body, headers=self.headers)
        try:
            with self.opener.open(req, timeout=self.timeout) as r:
                r.read()
                return r.status, time.perf_counter() - start, None
        except urllib.error.HTTPError as e:
            e.read()
            return e.code, time.perf_counter() - start, e.headers.get("Retry-After")
        except OSError as e:
            return None, time.perf_counter() - start, repr(e)


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def calibrate(client, workers, seconds):
    done, stop = [], time.perf_counter() + seconds

    def loop():
        while time.perf_counter() < stop:
            status, lat, _ = client.one()
            done.append((status, lat))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ok = [lat for s, lat in done if s == 200]
    bad = [s for s, _ in done if s != 200]
    if bad:
        raise SystemExit(f"loadtest: calibration got non-200 answers: {sorted(set(map(str, bad)))}")
    return len(ok) / elapsed, percentile(ok, 50)


def overload(client, rate, seconds, max_requests, max_threads):
    interval = 1.0 / rate
    n = min(max_requests, max(1, int(rate * seconds)))
    results = []
    lock = threading.Lock()

    def task():
        r = client.one()
        with lock:
            results.append(r)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_threads) as pool:
        for i in range(n):
            delay = t0 + i * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(task)
        sent_in = time.perf_counter() - t0
    elapsed = time.perf_counter() - t0
    return n, results, sent_in, elapsed


def start_server(args):
    key = "load-" + secrets.token_hex(8)
    cmd = [
        str(args.bin), "serve", "--model", str(args.model), "--port", "0",
        "--max-queue", str(args.max_queue), "--max-batch-size", str(args.max_batch_size),
    ]
    env = dict(os.environ, RTDETR_API_KEYS=key, RTDETR_LOG=os.environ.get("RTDETR_LOG", "warn"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://[0-9.:\[\]]+", line)
    if not m:
        proc.kill()
        raise SystemExit(f"loadtest: server did not start: {line!r}")
    url = m.group(0)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url, key
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("loadtest: server not healthy")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (loopback only); else one is started with --model")
    p.add_argument("--api-key", default=os.environ.get("RTDETR_API_KEY"))
    p.add_argument("--model", default=ROOT / "crates/rtdetr/tests/fixtures/tiny-bottleneck", type=pathlib.Path)
    p.add_argument("--bin", default=ROOT / "target/release/rtdetr", type=pathlib.Path)
    p.add_argument("--image", default=ROOT / "crates/rtdetr/tests/fixtures/images/photo.png", type=pathlib.Path)
    p.add_argument("--max-queue", type=int, default=16, help="for a server started here")
    p.add_argument("--max-batch-size", type=int, default=8, help="for a server started here")
    p.add_argument("--workers", type=int, default=4, help="closed-loop clients for calibration")
    p.add_argument("--calibrate", type=float, default=3.0, help="calibration seconds")
    p.add_argument("--factor", type=float, default=4.0, help="overload = factor x capacity")
    p.add_argument("--duration", type=float, default=8.0, help="overload seconds")
    p.add_argument("--max-requests", type=int, default=4000, help="overload request cap")
    p.add_argument("--max-threads", type=int, default=256)
    p.add_argument("--timeout", type=float, default=60.0, help="per-request client timeout")
    args = p.parse_args()

    proc = None
    if args.url:
        if not is_loopback_url(args.url):
            raise SystemExit("loadtest: only loopback servers may be load-tested")
        url, key = args.url, args.api_key
    else:
        proc, url, key = start_server(args)
    try:
        mime = "image/jpeg" if args.image.suffix.lower() in (".jpg", ".jpeg") else "image/png"
        image = f"data:{mime};base64," + base64.b64encode(args.image.read_bytes()).decode()
        client = Client(url, key, json.dumps({"image": image}).encode(), args.timeout)
        capacity, cal_p50 = calibrate(client, args.workers, args.calibrate)
        rate = capacity * args.factor
        n, results, sent_in, elapsed = overload(client, rate, args.duration, args.max_requests, args.max_threads)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    ok = [lat for s, lat, _ in results if s == 200]
    statuses = {}
    for s, _, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    n429 = statuses.get("429", 0)
    n5xx = sum(c for s, c in statuses.items() if s.isdigit() and s.startswith("5"))
    lost = n - len(results) + statuses.get("None", 0)
    summary = {
        "capacity_rps": round(capacity, 1),
        "calibration_p50_ms": round(cal_p50 * 1e3, 1),
        "offered_rps": round(n / max(sent_in, 1e-9), 1),
        "target_rps": round(rate, 1),
        "requests": n,
        "ok": len(ok),
        "throughput_rps": round(len(ok) / elapsed, 1),
        "p50_ms": round(percentile(ok, 50) * 1e3, 1),
        "p99_ms": round(percentile(ok, 99) * 1e3, 1),
        "429": n429,
        "5xx": n5xx,
        "lost": lost,
        "statuses": statuses,
        "seconds": round(elapsed, 1),
    }
    print("loadtest: " + json.dumps(summary))
    problems = []
    if n5xx:
        problems.append(f"{n5xx} responses were 5xx")
    if lost:
        problems.append(f"{lost} requests got no response")
    other = {s: c for s, c in statuses.items() if s not in ("200", "429")}
    if other:
        problems.append(f"unexpected statuses {other}")
    if problems:
        print("loadtest: FAILED: " + "; ".join(problems))
        return 1
    print(f"loadtest: ok: {len(ok)} answered 200, {n429} answered 429, none 5xx, none lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
