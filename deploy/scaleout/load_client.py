#!/usr/bin/env python3
"""Bounded load client for the scale-out test (deploy/scaleout/test_scaleout.sh). Stdlib only.

Sends --requests POST /v1/detections requests ({"image": "data:image/png;base64,..."}) over
--concurrency keep-alive connections to the load balancer. When --sigterm-after requests have
been answered, it sends SIGTERM to --sigterm-pid (one replica) and from then on polls that
replica's /health directly, recording what it answers (200 / 503 / connection refused).

Writes a JSON report to --out and prints a summary. Exit status 0 only if every request was
answered 200 with a well-formed body, and every answer carried the same detections.
Never retries on its own: retrying is the load balancer's job, that is what is tested.
Bounded: per-request timeout and an overall deadline.
"""
import argparse
import base64
import http.client
import json
import os
import signal
import socket
import statistics
import sys
import threading
import time
import urllib.parse


def canonical(dets):
    """Detections compared across replicas: labels, scores to 1e-3, boxes to 0.1 px."""
    out = []
    for d in dets:
        b = d.get("box", {})
        out.append((d.get("label"), round(float(d.get("score", 0)), 3),
                    tuple(round(float(b.get(k, 0)), 1) for k in ("xmin", "ymin", "xmax", "ymax"))))
    return tuple(sorted(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="load balancer base URL, e.g. http://127.0.0.1:18080")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--sigterm-pid", type=int)
    ap.add_argument("--sigterm-after", type=int, default=100)
    ap.add_argument("--health-url", help="the SIGTERMed replica's /health, polled directly")
    ap.add_argument("--metrics-url", help="the SIGTERMed replica's /metrics, scraped while it drains")
    ap.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    ap.add_argument("--deadline", type=float, default=300.0, help="whole run, seconds")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    with open(args.image, "rb") as f:
        data_url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    body = json.dumps({"image": data_url}).encode()
    lb = urllib.parse.urlsplit(args.url)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.api_key}",
               "Connection": "keep-alive"}

    lock = threading.Lock()
    next_index = [0]
    done = [0]
    results = [None] * args.requests
    sigterm = {"at": None, "after_index": None}
    health = []  # (seconds since SIGTERM, status or "refused"/"error")
    drain_metrics = {"text": None, "at": None}  # the SIGTERMed replica's last /metrics while draining
    stop_health = threading.Event()
    start = time.monotonic()
    deadline = start + args.deadline

    def poll_health():
        u = urllib.parse.urlsplit(args.health_url)
        refused_in_a_row = 0
        while not stop_health.is_set() and time.monotonic() < deadline:
            t = time.monotonic() - sigterm["at"]
            try:
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=1.0)
                c.request("GET", u.path or "/health")
                r = c.getresponse()
                r.read()
                c.close()
                health.append((round(t, 3), r.status))
                refused_in_a_row = 0
                if args.metrics_url and r.status == 503:
                    m = urllib.parse.urlsplit(args.metrics_url)
                    c = http.client.HTTPConnection(m.hostname, m.port, timeout=1.0)
                    c.request("GET", m.path or "/metrics")
                    mr = c.getresponse()
                    text = mr.read().decode(errors="replace")
                    c.close()
                    if mr.status == 200:
                        drain_metrics["text"], drain_metrics["at"] = text, round(t, 3)
            except ConnectionRefusedError:
                health.append((round(t, 3), "refused"))
                refused_in_a_row += 1
                if refused_in_a_row >= 5:
                    return
            except (OSError, http.client.HTTPException) as e:
                health.append((round(t, 3), f"error:{type(e).__name__}"))
            time.sleep(0.02)

    def send_sigterm():
        sigterm["at"] = time.monotonic()
        sigterm["after_index"] = done[0]
        try:
            os.kill(args.sigterm_pid, signal.SIGTERM)
            print(f"-- SIGTERM sent to replica pid {args.sigterm_pid} after {done[0]} answers", flush=True)
        except ProcessLookupError:
            print(f"!! replica pid {args.sigterm_pid} already gone", flush=True)
        if args.health_url:
            threading.Thread(target=poll_health, daemon=True).start()

    def worker():
        conn = None
        while True:
            with lock:
                i = next_index[0]
                if i >= args.requests:
                    break
                next_index[0] += 1
            if time.monotonic() > deadline:
                results[i] = {"status": "not-sent (deadline)"}
                continue
            t0 = time.monotonic()
            rec = {"index": i, "sent_at": round(t0 - start, 3)}
            if sigterm["at"] is not None and sigterm["at"] > 0:
                rec["sent_after_sigterm_s"] = round(t0 - sigterm["at"], 3)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(lb.hostname, lb.port, timeout=args.timeout)
                conn.request("POST", "/v1/detections", body=body, headers=headers)
                r = conn.getresponse()
                raw = r.read()
                rec["status"] = r.status
                rec["upstream"] = r.getheader("X-Upstream-Addr", "")
                rec["request_id"] = r.getheader("X-Request-Id", "")
                if r.status == 200:
                    try:
                        j = json.loads(raw)
                        rec["detections"] = canonical(j["detections"])
                        rec["size"] = (j.get("width"), j.get("height"))
                    except (ValueError, KeyError, TypeError) as e:
                        rec["status"] = f"200 with a bad body ({e})"
                else:
                    rec["body"] = raw[:300].decode(errors="replace")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, socket.timeout) as e:
                rec["status"] = f"client error: {type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            rec["latency_s"] = round(time.monotonic() - t0, 4)
            if sigterm["at"] is not None:
                rec["after_sigterm"] = True
            results[i] = rec
            fire = False
            with lock:
                done[0] += 1
                if args.sigterm_pid and sigterm["at"] is None and done[0] >= args.sigterm_after:
                    sigterm["at"] = -1.0  # claimed
                    fire = True
            if fire:
                send_sigterm()
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + args.timeout + 5))
    wall = time.monotonic() - start
    # Let the health poller see the replica go away (bounded).
    if sigterm["at"] is not None and sigterm["at"] > 0:
        end = time.monotonic() + 10
        while time.monotonic() < end and not (health and health[-1][1] == "refused"):
            time.sleep(0.1)
    stop_health.set()

    results = [r if r is not None else {"status": "not answered"} for r in results]
    ok = [r for r in results if r.get("status") == 200]
    bad = [r for r in results if r.get("status") != 200]
    by_status = {}
    for r in results:
        by_status[str(r.get("status"))] = by_status.get(str(r.get("status")), 0) + 1
    by_upstream = {}
    for r in ok:
        by_upstream[r.get("upstream") or "?"] = by_upstream.get(r.get("upstream") or "?", 0) + 1

    def final_upstream(r):  # nginx lists every replica it tried; the last one answered
        return (r.get("upstream") or "?").split(",")[-1].strip()

    # Answered after SIGTERM although sent before it: in-flight work the draining replica (or
    # the other one) finished. Sent after SIGTERM: new work, which must go to the other replica.
    drained, new_work = {}, {}
    for r in ok:
        u = final_upstream(r)
        if r.get("after_sigterm") and "sent_after_sigterm_s" not in r:
            drained[u] = drained.get(u, 0) + 1
        if r.get("sent_after_sigterm_s", -1) > 0.5:
            new_work[u] = new_work.get(u, 0) + 1
    distinct = {r["detections"] for r in ok}
    lat = sorted(r["latency_s"] for r in ok)
    health_summary = {}
    for _, s in health:
        health_summary[str(s)] = health_summary.get(str(s), 0) + 1
    report = {
        "requests": args.requests, "concurrency": args.concurrency, "wall_s": round(wall, 2),
        "by_status": by_status, "by_upstream_header": by_upstream,
        "in_flight_at_sigterm_answered_by": drained,
        "sent_over_0.5s_after_sigterm_answered_by": new_work,
        "distinct_detection_results": len(distinct),
        "p50_s": round(statistics.median(lat), 4) if lat else None,
        "p99_s": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 4) if lat else None,
        "sigterm_after_answers": sigterm["after_index"],
        "health_after_sigterm": health_summary, "health_timeline": health[:200],
        "sigtermed_metrics_last": drain_metrics["text"], "sigtermed_metrics_at_s": drain_metrics["at"],
        "failures": [{k: v for k, v in r.items() if k != "detections"} for r in bad][:20],
        "with_request_id": sum(1 for r in ok if r.get("request_id")),
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"-- {args.requests} requests, {args.concurrency} clients, {wall:.1f} s; by status {by_status}; "
          f"p50 {report['p50_s']} s, p99 {report['p99_s']} s", flush=True)
    print(f"-- answered by (X-Upstream-Addr): {by_upstream}", flush=True)
    print(f"-- distinct detection results: {len(distinct)}; responses with X-Request-Id: "
          f"{report['with_request_id']}/{len(ok)}", flush=True)
    print(f"-- in flight at SIGTERM, answered by: {drained}; sent > 0.5 s after SIGTERM, answered by: "
          f"{new_work}", flush=True)
    if args.health_url:
        print(f"-- SIGTERMed replica's /health after SIGTERM: {health_summary}", flush=True)
    for r in report["failures"]:
        print(f"!! request {r.get('index')}: {r.get('status')} {r.get('body', '')[:200]}", flush=True)
    return 0 if (not bad and len(distinct) == 1) else 1


if __name__ == "__main__":
    sys.exit(main())
