#!/usr/bin/env python3
"""Bounded soak test of `rtdetr serve` (standard library only, loopback only).

Starts its own server (--bin, --model, 127.0.0.1, port 0: the address is read from its first
line of output; --max-body-bytes 512 KiB by default so that oversized bodies are cheap to send,
--max-streams-per-key = WebSocket clients + 2, --request-timeout-secs = --timeout) and, for
--duration seconds, drives concurrent valid and invalid traffic:

- HTTP (--http-workers closed-loop clients, so the load stays within capacity): detections
  as JSON (data URL, raw base64, return_image) and multipart, chat completions (several
  images; streamed), models, health, metrics; and bad base64, non-images, truncated images, a
  pixel bomb (header says 20000x20000), bad JSON, bad parameters, unknown classes and models,
  wrong content types, bodies above --max-body-bytes (Content-Length, chunked, a huge
  declared length with Expect: 100-continue, multipart), unknown routes, wrong methods,
  missing and wrong keys, a refused URL input, a malformed request line, and clients that
  hang up mid-body or before reading the answer;
- WebSocket /v1/stream (--ws-workers clients, stdlib WebSocket code below): sessions with the
  key in the header or ?api_key, options messages (valid and invalid), frames one at a time
  and in bursts (latest frame wins), non-image and truncated frames, frames above
  --max-body-bytes (answered `frame_too_large`), pings; each session ends with a normal close,
  an abrupt hang-up with a frame in flight, a message above twice the limit (close 1009), or
  a protocol violation (unmasked frame, reserved opcode: the server closes the connection).

Fails (exit 1) on: any 5xx; any answer other than the expected one for its kind (429 is
allowed on every inference route and counted); any request without a response, or a stream
frame without exactly one answer, in order ("lost"); a stream slot not given back; the
server's RSS (sampled from /proc/PID/status) growing faster than --max-rss-slope MiB/min
after --warmup (least-squares slope over the samples after the warm-up) or peaking above
--max-rss-mib; its open file descriptors not coming back after the clients are gone; a
panic in its log; /health not 200 at the end; and an exit status other than 0 after SIGTERM.
Reports counts and p50/p99 latency per kind.

    python3 tools/soak.py                               # 5 minutes locally
    python3 tools/soak.py --duration 60 --max-rss-slope 12 --max-rss-mib 256   # what CI runs

RSS limits. glibc's allocator warms up for minutes under this mix (likely more arenas as tokio's
blocking pool grows from 6 to 18 threads, and fragmentation): with the tiny fixture model the server
goes from 17 MiB idle to about 33 MiB in the first minute and levels off near 35-40 MiB
(900 s, 296k operations: 40.5 MiB peak). Least-squares slopes measured on this machine (2
shared cores), by fit window: 150-300 s 0.7 MiB/min (a 300 s run) and 0.03 (a 900 s run);
270-900 s 0.17 (300-600 s 0.23, 600-900 s 0.17); 30-60 s of 60 s runs 0.4, 0.5, 2.8, -1.2,
1.3, and 9.0 with a busy machine and an older build (-2.0 and 1.5 in the first minute of the
longer runs). Hence the default, for runs of 5 minutes or more with half as warm-up:
2 MiB/min (about 100 bytes per operation at the ~330 operations/s seen here); and 12 MiB/min
for CI's 60 s run, which still fails on any leak of a request body,
image, buffer or connection state (hundreds of bytes or more per operation). Peak: 1 GiB by
default (any model), 256 MiB in CI (the fixture model peaks near 41 MiB).
"""

import argparse
import base64
import collections
import hashlib
import http.client
import json
import os
import pathlib
import random
import re
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = ROOT / "crates/rtdetr/tests/fixtures/images"
DRAIN_CAP = 1024 * 1024  # the server reads (and drops) up to this much of a refused body
INFERENCE_BUSY = {"429"}  # queue full: allowed on every route that takes an admission slot


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def slope_per_minute(samples):
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    n = len(samples)
    if n < 3:
        return float("nan")
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    sxx = sum((t - mx) ** 2 for t, _ in samples)
    if sxx == 0:
        return float("nan")
    return 60 * sum((t - mx) * (v - my) for t, v in samples) / sxx


class Stats:
    """Outcomes and latencies per kind, and the failures."""

    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = collections.defaultdict(collections.Counter)
        self.latencies = collections.defaultdict(list)
        self.failures = collections.Counter()
        self.examples = []

    def record(self, kind, outcome, latency=None, failure=None):
        with self.lock:
            self.outcomes[kind][str(outcome)] += 1
            if latency is not None:
                self.latencies[kind].append(latency)
            if failure:
                self.failures[kind] += 1
                if len(self.examples) < 40:
                    self.examples.append(f"{kind}: {failure}")


# ---------------------------------------------------------------------------------------
# HTTP


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def read_response(sock, method="POST"):
    r = http.client.HTTPResponse(sock, method=method)
    r.begin()
    body = r.read()
    return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, body)


class Client:
    def __init__(self, host, port, key, timeout):
        self.host, self.port, self.key, self.timeout = host, port, key, timeout

    def auth(self, key=True):
        return {"Authorization": f"Bearer {self.key}"} if key is True else ({"Authorization": key} if key else {})

    def request(self, method, path, body=None, headers=None, key=True):
        """One request on a fresh connection; raises OSError when there is no response."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            h = self.auth(key)
            h.update(headers or {})
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def connect(self):
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def head(self, method, path, headers):
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_body(obj):
    return json.dumps(obj).encode(), {"Content-Type": "application/json"}


def multipart(fields, files):
    boundary = "soak" + secrets.token_hex(8)
    out = []
    for name, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png_header_only(width, height):
    def chunk(t, d):
        return struct.pack("!I", len(d)) + t + d + struct.pack("!I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------
# WebSocket (RFC 6455 client, enough for this test, including frames a real client never sends)

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsClosed(Exception):
    def __init__(self, code, reason=""):
        super().__init__(f"closed {code} {reason}")
        self.code, self.reason = code, reason


def mask_bytes(payload, key):
    n = len(payload)
    if n == 0:
        return b""
    m = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


class WebSocket:
    def __init__(self, client, path, headers, timeout):
        self.sock = client.connect()
        self.sock.settimeout(timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        h = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
        h.update(headers)
        self.sock.sendall(client.head("GET", path, h))
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.body = b""
        if self.status == 101:
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            if self.headers.get("sec-websocket-accept") != accept:
                raise ConnectionError("bad Sec-WebSocket-Accept")
        else:
            n = int(self.headers.get("content-length", "0"))
            while len(self.buf) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
            self.body = self.buf[:n]

    def close_socket(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send_frame(self, opcode, payload=b"", fin=True, masked=True, rsv=0):
        first = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        mbit = 0x80 if masked else 0
        if n < 126:
            header = bytes([first, mbit | n])
        elif n < 65536:
            header = bytes([first, mbit | 126]) + struct.pack("!H", n)
        else:
            header = bytes([first, mbit | 127]) + struct.pack("!Q", n)
        if masked:
            key = os.urandom(4)
            self.sock.sendall(header + key + mask_bytes(payload, key))
        else:
            self.sock.sendall(header + payload)

    def send_text(self, text):
        self.send_frame(0x1, text.encode())

    def send_binary(self, data):
        self.send_frame(0x2, data)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """The next data message (opcode, payload); answers pings; WsClosed on a close frame."""
        parts, first_opcode = [], None
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if b1 & 0x80:
                raise ConnectionError("the server masked a frame")
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise WsClosed(code, payload[2:].decode("utf-8", "replace"))
            if opcode == 0x9:
                self.send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                return ("pong", payload)
            if opcode != 0x0:
                first_opcode = opcode
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                return ("text" if first_opcode == 0x1 else "binary", data)

    def recv_json(self):
        kind, data = self.recv()
        if kind != "text":
            raise ValueError(f"expected a text message, got {kind}")
        return json.loads(data)

    def close(self, code=1000):
        """Normal close: send ours, read until the server's close frame."""
        self.send_frame(0x8, struct.pack("!H", code))
        try:
            while True:
                self.recv()
        except WsClosed as c:
            return c.code
        finally:
            self.close_socket()


# ---------------------------------------------------------------------------------------
# The traffic


class Soak:
    def __init__(self, args, host, port, key, model):
        self.args = args
        self.client = Client(host, port, key, args.timeout)
        self.key = key
        self.model = model
        self.stats = Stats()
        self.stop = threading.Event()
        self.limit = args.max_body_bytes
        config = json.loads((args.model / "config.json").read_text())
        self.labels = sorted(config["id2label"].values())
        self.files = {}
        for name in ["photo.png", "photo_exif.jpg", "gray.png", "rgba.png"]:
            data = (IMAGES / name).read_bytes()
            mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
            self.files[name] = (data, f"data:{mime};base64," + base64.b64encode(data).decode())
        self.http_kinds = self._http_kinds()
        self.stream_sessions = 0

    # -- checks shared by the HTTP kinds

    def expect(self, kind, r, statuses, code=None, check=None, started=None):
        latency = time.perf_counter() - started if started else None
        status = str(r.status)
        problem = None
        if status.startswith("5"):
            problem = f"{status} {r.body[:200]!r}"
        elif status not in statuses and status not in INFERENCE_BUSY:
            problem = f"answered {status}, expected {'/'.join(sorted(statuses))}: {r.body[:200]!r}"
        elif status == "429" and status not in statuses:
            if not r.headers.get("retry-after"):
                problem = "429 without Retry-After"
        elif r.status >= 400:
            try:
                err = r.json()["error"]
                assert {"message", "type", "param", "code"} <= set(err), err
                if code and err["code"] != code:
                    problem = f"{status} with code {err['code']!r}, expected {code!r}"
            except (ValueError, KeyError, TypeError, AssertionError) as e:
                problem = f"{status} not in the error shape ({e!r}): {r.body[:200]!r}"
        elif check is not None:
            try:
                check(r)
            except Exception as e:  # a malformed 2xx answer
                problem = f"{status} answer fails its check: {e!r}: {r.body[:200]!r}"
        if problem is None and "x-request-id" not in r.headers and kind != "malformed_request_line":
            problem = f"{status} without x-request-id"
        self.stats.record(kind, status, latency, problem)

    def call(self, kind, method, path, body=None, headers=None, key=True, statuses=("200",), code=None, check=None):
        started = time.perf_counter()
        try:
            r = self.client.request(method, path, body, headers, key)
        except OSError as e:
            self.stats.record(kind, "lost", None, f"no response: {e!r}")
            return
        self.expect(kind, r, set(statuses), code, check, started)

    # -- validators of 2xx answers

    def check_detection(self, r, with_image=False):
        d = r.json()
        assert d["model"] == self.model and d["width"] > 0 and d["height"] > 0
        assert isinstance(d["detections"], list) and "timings_ms" in d
        for det in d["detections"]:
            assert det["label"] in self.labels and 0 <= det["score"] <= 1, det
        if with_image:
            assert d["annotated_image"].startswith("data:image/jpeg;base64,")

    def check_chat(self, n_images):
        def check(r):
            d = r.json()
            assert d["object"] == "chat.completion" and d["model"] == self.model
            results = json.loads(d["choices"][0]["message"]["content"])["results"]
            assert len(results) == n_images, len(results)

        return check

    def check_chat_stream(self, r):
        assert r.headers.get("content-type", "").startswith("text/event-stream"), r.headers
        events = [line[5:].strip() for line in r.body.decode().splitlines() if line.startswith("data:")]
        assert events and events[-1] == "[DONE]", events[-1:]
        content = ""
        for e in events[:-1]:
            chunk = json.loads(e)
            assert chunk["object"] == "chat.completion.chunk"
            for c in chunk["choices"]:
                content += c["delta"].get("content") or ""
        assert len(json.loads(content)["results"]) == 1

    # -- the HTTP kinds: name -> (weight, function)

    def _http_kinds(self):
        k = {}

        def kind(weight):
            def register(f):
                k[f.__name__] = (weight, f)
                return f

            return register

        @kind(10)
        def detections_json(rng):
            name = rng.choice(list(self.files))
            body = {"image": self.files[name][1], "threshold": round(rng.uniform(0.1, 0.9), 2)}
            if rng.random() < 0.3:
                body["classes"] = rng.sample(self.labels, rng.randint(1, len(self.labels)))
            self.call("detections_json", "POST", "/v1/detections", *json_body(body), check=self.check_detection)

        @kind(3)
        def detections_raw_base64(rng):
            data = self.files[rng.choice(list(self.files))][0]
            b, h = json_body({"image": base64.b64encode(data).decode(), "max_detections": rng.randint(1, 50)})
            self.call("detections_raw_base64", "POST", "/v1/detections", b, h, check=self.check_detection)

        @kind(2)
        def detections_return_image(rng):
            b, h = json_body({"image": self.files["gray.png"][1], "return_image": True})
            self.call(
                "detections_return_image", "POST", "/v1/detections", b, h,
                check=lambda r: self.check_detection(r, with_image=True),
            )

        @kind(6)
        def detections_multipart(rng):
            name = rng.choice(list(self.files))
            fields = {"threshold": "0.3"}
            if rng.random() < 0.5:
                fields["classes"] = ",".join(rng.sample(self.labels, 2))
            b, h = multipart(fields, {"image": (name, self.files[name][0])})
            self.call("detections_multipart", "POST", "/v1/detections", b, h, check=self.check_detection)

        @kind(6)
        def chat(rng):
            names = rng.sample(list(self.files), rng.randint(1, 3))
            content = [{"type": "text", "text": "what is there?"}]
            content += [{"type": "image_url", "image_url": {"url": self.files[n][1]}} for n in names]
            b, h = json_body({"model": self.model, "messages": [{"role": "user", "content": content}], "threshold": 0.4})
            self.call("chat", "POST", "/v1/chat/completions", b, h, check=self.check_chat(len(names)))

        @kind(3)
        def chat_stream(rng):
            content = [{"type": "image_url", "image_url": {"url": self.files["photo_exif.jpg"][1]}}]
            b, h = json_body({
                "model": self.model, "messages": [{"role": "user", "content": content}],
                "stream": True, "stream_options": {"include_usage": rng.random() < 0.5},
            })
            self.call("chat_stream", "POST", "/v1/chat/completions", b, h, check=self.check_chat_stream)

        @kind(2)
        def models_health_metrics(rng):
            path, key = rng.choice([("/v1/models", True), ("/health", False), ("/metrics", False),
                                    (f"/v1/models/{self.model}", True), ("/openapi.json", False)])
            self.call("models_health_metrics", "GET", path, key=key)

        @kind(2)
        def bad_base64(rng):
            b, h = json_body({"image": "data:image/png;base64,@@not*base64@@"})
            self.call("bad_base64", "POST", "/v1/detections", b, h, statuses=("400",), code="invalid_base64")

        @kind(2)
        def not_an_image(rng):
            b, h = json_body({"image": base64.b64encode(os.urandom(rng.randint(1, 4000))).decode()})
            self.call("not_an_image", "POST", "/v1/detections", b, h, statuses=("400",), code="unsupported_image_format")

        @kind(2)
        def truncated_image(rng):
            data = self.files["photo.png"][0]
            b, h = json_body({"image": base64.b64encode(data[: rng.randint(100, len(data) // 2)]).decode()})
            self.call("truncated_image", "POST", "/v1/detections", b, h, statuses=("400",), code="invalid_image")

        @kind(1)
        def pixel_bomb(rng):
            b, h = json_body({"image": base64.b64encode(png_header_only(20000, 20000)).decode()})
            self.call("pixel_bomb", "POST", "/v1/detections", b, h, statuses=("413",), code="image_too_large")

        @kind(2)
        def bad_json(rng):
            body = rng.choice([b'{"image":', b"[1,2]", b"\xff\xfe", b"", b'{"image": "x",}'])
            self.call("bad_json", "POST", rng.choice(["/v1/detections", "/v1/chat/completions"]), body,
                      {"Content-Type": "application/json"}, statuses=("400",), code="invalid_json")

        @kind(2)
        def bad_params(rng):
            extra = rng.choice([{"threshold": 3}, {"threshold": "high"}, {"max_detections": 0},
                                {"max_detections": 10**9}, {"classes": []}, {"classes": ["no-such-class"]},
                                {"return_image": "yes"}])
            b, h = json_body({"image": self.files["gray.png"][1], **extra})
            self.call("bad_params", "POST", "/v1/detections", b, h, statuses=("422",), code="invalid_parameter")

        @kind(2)
        def chat_errors(rng):
            gray = {"type": "image_url", "image_url": {"url": self.files["gray.png"][1]}}
            case = rng.choice([
                ({"model": "gpt-4o", "messages": [{"role": "user", "content": [gray]}]}, "404", "model_not_found"),
                ({"model": self.model, "messages": [{"role": "user", "content": "hello"}]}, "400", "no_image"),
                ({"model": self.model, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "400",
                 "unsupported_content_part"),
                ({"model": self.model, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "ftp://127.0.0.1/x.png"}}]}]}, "400", None),
                ({"messages": []}, "422", "invalid_parameter"),
            ])
            b, h = json_body(case[0])
            self.call("chat_errors", "POST", "/v1/chat/completions", b, h, statuses=(case[1],), code=case[2])

        @kind(2)
        def wrong_content_type(rng):
            path, ct = rng.choice([("/v1/detections", "text/plain"), ("/v1/detections", "application/xml"),
                                   ("/v1/chat/completions", "multipart/form-data; boundary=x"),
                                   ("/v1/chat/completions", "image/png")])
            self.call("wrong_content_type", "POST", path, b"hello", {"Content-Type": ct}, statuses=("415",),
                      code="unsupported_media_type")

        @kind(1)
        def oversized_json(rng):
            # Above the limit, below the drain cap: the server reads it all and answers 413.
            n = self.limit + rng.randint(1, min(DRAIN_CAP - self.limit, 256 * 1024) if DRAIN_CAP > self.limit else 1)
            self.call("oversized_json", "POST", "/v1/detections", b"{" + b" " * (n - 2) + b"}",
                      {"Content-Type": "application/json"}, statuses=("413",), code="request_too_large")

        @kind(1)
        def oversized_multipart(rng):
            b, h = multipart({}, {"image": ("big.png", os.urandom(self.limit + 1000))})
            self.call("oversized_multipart", "POST", "/v1/detections", b, h, statuses=("413",), code="request_too_large")

        @kind(1)
        def oversized_chunked(rng):
            started = time.perf_counter()
            try:
                s = self.client.connect()
                try:
                    s.sendall(self.client.head("POST", "/v1/detections", {
                        **self.client.auth(), "Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
                    piece = b" " * 65536
                    sent = 0
                    try:
                        while sent <= self.limit + 65536:
                            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                            sent += len(piece)
                        s.sendall(b"0\r\n\r\n")
                    except OSError:
                        pass  # the server may stop reading once it has refused: its answer is waiting
                    r = read_response(s)
                finally:
                    s.close()
            except OSError as e:
                self.stats.record("oversized_chunked", "lost", None, f"no response: {e!r}")
                return
            self.expect("oversized_chunked", r, {"413"}, "request_too_large", None, started)

        @kind(1)
        def oversized_expect_continue(rng):
            # 200 MB announced with Expect: 100-continue: the answer must be 413 without a 100.
            started = time.perf_counter()
            try:
                s = self.client.connect()
                try:
                    s.sendall(self.client.head("POST", "/v1/detections", {
                        **self.client.auth(), "Content-Type": "application/json",
                        "Content-Length": str(200 * 1024 * 1024), "Expect": "100-continue"}))
                    r = read_response(s)
                finally:
                    s.close()
            except OSError as e:
                self.stats.record("oversized_expect_continue", "lost", None, f"no response: {e!r}")
                return
            self.expect("oversized_expect_continue", r, {"413"}, "request_too_large", None, started)

        @kind(2)
        def unknown_route(rng):
            method, path = rng.choice([("GET", "/v1/nothing"), ("POST", "/v2/detections"), ("GET", "/v1/models/"),
                                       ("GET", "/%2e%2e/etc/passwd"), ("DELETE", "/nope")])
            self.call("unknown_route", method, path, key=rng.random() < 0.5, statuses=("404",), code="not_found")

        @kind(1)
        def wrong_method(rng):
            method, path = rng.choice([("GET", "/v1/detections"), ("PUT", "/v1/chat/completions"),
                                       ("DELETE", "/v1/models"), ("POST", "/health")])
            self.call("wrong_method", method, path, statuses=("405",), code="method_not_allowed")

        @kind(3)
        def missing_or_wrong_key(rng):
            key = rng.choice([None, "Bearer wrong", "Basic Zm9vOmJhcg==", f"Bearer {self.key}x", self.key])
            path = rng.choice(["/v1/detections", "/v1/chat/completions"])
            b, h = json_body({"image": self.files["gray.png"][1]})
            self.call("missing_or_wrong_key", "POST", path, b, h, key=key, statuses=("401",), code="invalid_api_key")

        @kind(1)
        def refused_url(rng):
            # Loopback only: this server has no --allow-private-urls, so it refuses them without
            # connecting (and a server that did connect would reach nothing but this machine).
            url = rng.choice(["http://127.0.0.1:9/x.png", "http://[::1]:9/x.png", "http://localhost:9/x.png",
                              "https://127.0.0.2:9/x.png"])
            b, h = json_body({"image": url})
            self.call("refused_url", "POST", "/v1/detections", b, h, statuses=("400",), code="url_not_allowed")

        @kind(1)
        def malformed_request_line(rng):
            started = time.perf_counter()
            try:
                s = self.client.connect()
                try:
                    s.sendall(rng.choice([b"HELLO WORLD\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                                          b"POST /v1/detections HTTP/1.1\r\nContent-Length: -1\r\n\r\n"]))
                    r = read_response(s)
                finally:
                    s.close()
            except OSError as e:
                self.stats.record("malformed_request_line", "lost", None, f"no response: {e!r}")
                return
            # hyper answers these itself: 400 (or 505 for the version, which is fine here)
            status = str(r.status)
            ok = status in ("400", "505")
            self.stats.record("malformed_request_line", status, time.perf_counter() - started,
                              None if ok else f"answered {status}")

        @kind(2)
        def client_hangs_up(rng):
            # Mid-body, or after a whole valid request without reading the answer.
            try:
                s = self.client.connect()
                b, h = json_body({"image": self.files["photo.png"][1]})
                if rng.random() < 0.5:
                    s.sendall(self.client.head("POST", "/v1/detections", {
                        **self.client.auth(), **h, "Content-Length": str(len(b))}) + b[: len(b) // 3])
                    outcome = "hung up mid-body"
                else:
                    s.sendall(self.client.head("POST", "/v1/detections", {
                        **self.client.auth(), **h, "Content-Length": str(len(b))}) + b)
                    outcome = "hung up before the answer"
                s.close()
            except OSError as e:
                self.stats.record("client_hangs_up", "connect failed", None, repr(e))
                return
            self.stats.record("client_hangs_up", outcome)

        @kind(1)
        def stream_refused(rng):
            # Not a WebSocket request, or no key: plain HTTP answers before any upgrade.
            if rng.random() < 0.5:
                self.call("stream_refused", "GET", "/v1/stream", statuses=("426",), code="websocket_required")
            else:
                started = time.perf_counter()
                try:
                    ws = WebSocket(self.client, "/v1/stream?api_key=wrong", {}, self.args.timeout)
                    ws.close_socket()
                except OSError as e:
                    self.stats.record("stream_refused", "lost", None, repr(e))
                    return
                r = Response(ws.status, ws.headers, ws.body)
                self.expect("stream_refused", r, {"401"}, "invalid_api_key", None, started)

        return k

    # -- workers

    def http_worker(self, seed):
        rng = random.Random(seed)
        names = list(self.http_kinds)
        weights = [self.http_kinds[n][0] for n in names]
        while not self.stop.is_set():
            name = rng.choices(names, weights)[0]
            self.http_kinds[name][1](rng)

    def ws_worker(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                self.ws_session(rng)
            except Exception as e:  # an unexpected failure of the session itself
                self.stats.record("ws_session", "error", None, f"{type(e).__name__}: {e}")
                time.sleep(0.2)

    def ws_session(self, rng):
        by_query = rng.random() < 0.5
        path = "/v1/stream" + (f"?api_key={self.key}" if by_query else "")
        headers = {} if by_query else {"Authorization": f"Bearer {self.key}"}
        started = time.perf_counter()
        try:
            ws = WebSocket(self.client, path, headers, self.args.timeout)
        except OSError as e:
            self.stats.record("ws_connect", "lost", None, f"handshake: {e!r}")
            return
        status = str(ws.status)
        if status != "101":
            r = Response(ws.status, ws.headers, ws.body)
            ws.close_socket()
            # 429 too_many_streams would mean a stream slot was not given back in time.
            self.expect("ws_connect", r, {"101"}, None, None, started)
            if status == "429":
                time.sleep(1)
            return
        self.stats.record("ws_connect", "101", time.perf_counter() - started)
        with self.stats.lock:
            self.stream_sessions += 1
        next_frame = 0
        try:
            for _ in range(rng.randint(3, 25)):
                if self.stop.is_set():
                    break
                step = rng.choices(
                    ["frame", "burst", "options", "bad_options", "not_an_image", "truncated", "too_large", "ping"],
                    [10, 3, 2, 2, 2, 1, 1, 1],
                )[0]
                next_frame = self.ws_step(ws, rng, step, next_frame)
            ending = "close" if self.stop.is_set() else rng.choices(
                ["close", "hang_up", "too_big", "protocol"], [10, 2, 1, 1])[0]
            self.ws_end(ws, rng, ending)
        except WsClosed as c:
            self.stats.record("ws_session", f"closed {c.code}", None, f"unexpected close {c.code} {c.reason!r}")
        except (OSError, ValueError) as e:
            self.stats.record("ws_session", "lost", None, f"{type(e).__name__}: {e}")
        finally:
            ws.close_socket()

    def ws_answer(self, ws, kind, frame, started):
        """Reads one frame answer; checks its number. Returns the answer."""
        try:
            a = ws.recv_json()
        except WsClosed:
            raise
        except (OSError, ValueError) as e:
            self.stats.record(kind, "lost", None, f"frame {frame}: no answer: {e!r}")
            raise
        if a.get("frame") != frame:
            self.stats.record(kind, "out of order", None, f"expected frame {frame}, got {str(a)[:200]}")
            raise ValueError("answers out of order")
        return a

    def ws_step(self, ws, rng, step, n):
        if step == "frame":
            name = rng.choice(list(self.files))
            t = time.perf_counter()
            ws.send_binary(self.files[name][0])
            a = self.ws_answer(ws, "ws_frame", n, t)
            ok = "detections" in a and a.get("width", 0) > 0 and isinstance(a.get("latency_ms"), (int, float))
            if "error" in a and a["error"].get("code") == "queue_full":
                self.stats.record("ws_frame", "busy", time.perf_counter() - t)
            else:
                self.stats.record("ws_frame", "processed" if ok else "bad answer", time.perf_counter() - t,
                                  None if ok else f"frame {n}: {str(a)[:200]}")
            return n + 1
        if step == "burst":
            k = rng.randint(2, 6)
            t = time.perf_counter()
            for _ in range(k):
                ws.send_binary(self.files[rng.choice(["gray.png", "photo_exif.jpg"])][0])
            outcomes = []
            for i in range(k):
                a = self.ws_answer(ws, "ws_burst", n + i, t)
                outcomes.append("dropped" if a.get("dropped") else ("processed" if "detections" in a else "error"))
            problem = None
            if outcomes[-1] != "processed":
                problem = f"the newest frame of a burst was {outcomes[-1]}: {outcomes}"
            elif "error" in outcomes:
                problem = f"an error in a burst of valid frames: {outcomes}"
            self.stats.record("ws_burst", f"{k} frames", time.perf_counter() - t, problem)
            with self.stats.lock:
                self.stats.outcomes["ws_burst_frames"].update(outcomes)
            return n + k
        if step in ("not_an_image", "truncated", "too_large"):
            data = {
                "not_an_image": lambda: os.urandom(rng.randint(1, 5000)),
                "truncated": lambda: self.files["photo.png"][0][:3000],
                "too_large": lambda: b"\x89PNG" + os.urandom(self.limit + rng.randint(1, 1000)),
            }[step]()
            code = {"not_an_image": "unsupported_image_format", "truncated": "invalid_image",
                    "too_large": "frame_too_large"}[step]
            t = time.perf_counter()
            ws.send_binary(data)
            a = self.ws_answer(ws, f"ws_{step}", n, t)
            got = (a.get("error") or {}).get("code")
            self.stats.record(f"ws_{step}", got or "no error", time.perf_counter() - t,
                              None if got == code else f"frame {n}: expected error {code}, got {str(a)[:200]}")
            return n + 1
        if step == "options":
            opts = {"threshold": round(rng.uniform(0, 1), 2)}
            if rng.random() < 0.5:
                opts["classes"] = rng.sample(self.labels, 2)
            if rng.random() < 0.5:
                opts["max_detections"] = rng.randint(1, 100)
            t = time.perf_counter()
            ws.send_text(json.dumps(opts))
            a = ws.recv_json()
            ok = "options" in a and abs(a["options"]["threshold"] - opts["threshold"]) < 1e-6  # echoed as f32
            self.stats.record("ws_options", "ack" if ok else "bad answer", time.perf_counter() - t,
                              None if ok else str(a)[:200])
            return n
        if step == "bad_options":
            text = rng.choice(['{"threshold": 7}', "not json", '{"colour": "red"}', "[1]",
                               '{"classes": ["no-such-class"]}', '{"max_detections": -1}'])
            t = time.perf_counter()
            ws.send_text(text)
            a = ws.recv_json()
            ok = "error" in a and {"message", "type", "param", "code"} <= set(a["error"])
            self.stats.record("ws_bad_options", "error" if ok else "bad answer", time.perf_counter() - t,
                              None if ok else f"{text!r} -> {str(a)[:200]}")
            return n
        if step == "ping":
            t = time.perf_counter()
            payload = os.urandom(8)
            ws.send_frame(0x9, payload)
            kind, data = ws.recv()
            ok = kind == "pong" and data == payload
            self.stats.record("ws_ping", "pong" if ok else "bad answer", time.perf_counter() - t,
                              None if ok else f"{kind} {data[:50]!r}")
            return n
        raise AssertionError(step)

    def ws_end(self, ws, rng, ending):
        if ending == "close":
            code = ws.close()
            self.stats.record("ws_end", f"close {code}", None, None if code == 1000 else f"close answered {code}")
        elif ending == "hang_up":
            ws.send_binary(self.files["photo.png"][0])  # a frame in flight
            ws.close_socket()
            self.stats.record("ws_end", "hung up with a frame in flight")
        elif ending == "too_big":
            # Above twice --max-body-bytes: not read at all, the connection is closed with 1009.
            try:
                ws.send_binary(os.urandom(2 * self.limit + 1024))
            except OSError:
                pass
            try:
                while True:
                    ws.recv()
            except WsClosed as c:
                self.stats.record("ws_end", f"too big: close {c.code}", None,
                                  None if c.code == 1009 else f"a message above 2x the limit closed with {c.code}")
            except OSError as e:
                self.stats.record("ws_end", "too big: no close frame", None, f"no 1009 close frame: {e!r}")
        elif ending == "protocol":
            violation = rng.choice(["unmasked", "reserved opcode", "rsv bits", "fragmented ping"])
            if violation == "unmasked":
                ws.send_frame(0x2, b"abc", masked=False)
            elif violation == "reserved opcode":
                ws.send_frame(0x3, b"abc")
            elif violation == "rsv bits":
                ws.send_frame(0x1, b"{}", rsv=0b100)
            else:
                ws.send_frame(0x9, b"x", fin=False)
            try:
                while True:
                    ws.recv()
            except WsClosed as c:
                self.stats.record("ws_end", f"{violation}: close {c.code}", None,
                                  None if c.code == 1002 else f"{violation}: closed with {c.code}, expected 1002")
            except OSError:
                # The connection dropped without a close frame: acceptable for a broken peer.
                self.stats.record("ws_end", f"{violation}: dropped")


# ---------------------------------------------------------------------------------------
# The server and its process


class Server:
    def __init__(self, args):
        self.key = "soak-" + secrets.token_hex(12)
        cmd = [
            str(args.bin), "serve", "--model", str(args.model), "--host", "127.0.0.1", "--port", "0",
            "--max-body-bytes", str(args.max_body_bytes), "--max-streams-per-key", str(args.max_streams),
            "--request-timeout-secs", str(int(args.timeout)),
        ]
        env = dict(os.environ, RTDETR_API_KEYS=self.key, RTDETR_LOG=os.environ.get("RTDETR_LOG", "warn"))
        args.log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(args.log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env)
        line = self.proc.stdout.readline().decode(errors="replace")
        threading.Thread(target=self._drain, daemon=True).start()
        m = re.search(r"http://(127\.0\.0\.1):(\d+)", line)
        if not m:
            self.proc.kill()
            raise SystemExit(f"soak: the server did not print its address: {line!r} (log: {args.log})")
        self.host, self.port = m.group(1), int(m.group(2))
        self.pid = self.proc.pid

    def _drain(self):
        for chunk in iter(lambda: self.proc.stdout.read(4096), b""):
            self.log.write(chunk)

    def wait_healthy(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"soak: the server exited with {self.proc.returncode}")
            try:
                if Client(self.host, self.port, None, 2).request("GET", "/health", key=False).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("soak: /health never answered 200")

    def status(self):
        """(VmRSS MiB, threads, open fds) of the server process."""
        rss, threads = None, None
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        return rss, threads, len(os.listdir(f"/proc/{self.pid}/fd"))

    def terminate(self, timeout=30):
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "killed after SIGTERM timeout"
        finally:
            self.log.flush()


class Sampler(threading.Thread):
    def __init__(self, server, interval):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.samples = []  # (t, rss MiB, threads, fds)
        self.halt = threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        while not self.halt.is_set():
            try:
                rss, threads, fds = self.server.status()
                self.samples.append((time.perf_counter() - self.t0, rss, threads, fds))
            except OSError:
                return
            self.halt.wait(self.interval)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=ROOT / "target/release/rtdetr", type=pathlib.Path)
    p.add_argument("--model", default=ROOT / "crates/rtdetr/tests/fixtures/tiny-bottleneck", type=pathlib.Path)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of traffic (default 300)")
    p.add_argument("--warmup", type=float, help="seconds before the RSS fit starts (default half of --duration)")
    p.add_argument("--http-workers", type=int, default=4, help="closed-loop HTTP clients (default 4)")
    p.add_argument("--ws-workers", type=int, default=2, help="closed-loop WebSocket clients (default 2)")
    p.add_argument("--max-rss-slope", type=float, default=2.0, help="MiB/min after the warm-up (default 2; see above)")
    p.add_argument("--max-rss-mib", type=float, default=1024.0, help="peak RSS, MiB (default 1024)")
    p.add_argument("--max-body-bytes", type=int, default=512 * 1024, help="the server's limit (default 512 KiB)")
    p.add_argument("--sample-interval", type=float, default=0.5, help="RSS sampling period, seconds")
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout and the server's request timeout")
    p.add_argument("--seed", type=int, default=None, help="traffic seed (default: random, printed)")
    p.add_argument("--log", default=ROOT / "target/soak-serve.log", type=pathlib.Path, help="the server's log")
    p.add_argument("--json", type=pathlib.Path, help="also write the report as JSON here")
    args = p.parse_args()
    if args.duration < 20:
        raise SystemExit("soak: --duration must be at least 20 s (a warm-up and an RSS fit)")
    warmup = args.warmup if args.warmup is not None else max(10.0, 0.5 * args.duration)
    if warmup > args.duration - 10:
        raise SystemExit("soak: --warmup leaves less than 10 s for the RSS fit")
    if not args.bin.is_file():
        raise SystemExit(f"soak: {args.bin} is not built (cargo build --release -p rtdetr-cli)")
    args.max_streams = args.ws_workers + 2
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)

    server = Server(args)
    problems = []
    try:
        server.wait_healthy()
        boot = server.status()
        model = Client(server.host, server.port, server.key, 10).request("GET", "/v1/models").json()["data"][0]["id"]
        soak = Soak(args, server.host, server.port, server.key, model)
        sampler = Sampler(server, args.sample_interval)
        sampler.start()
        threads = [threading.Thread(target=soak.http_worker, args=(seed + i,), daemon=True) for i in range(args.http_workers)]
        threads += [threading.Thread(target=soak.ws_worker, args=(seed + 1000 + i,), daemon=True) for i in range(args.ws_workers)]
        print(f"soak: {args.duration:.0f} s against {server.host}:{server.port} (pid {server.pid}), "
              f"{args.http_workers} HTTP + {args.ws_workers} WebSocket clients, seed {seed}", flush=True)
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        while time.perf_counter() - t_start < args.duration:
            if server.proc.poll() is not None:
                problems.append(f"the server exited during the soak with {server.proc.returncode}")
                break
            time.sleep(0.5)
        soak.stop.set()
        for t in threads:
            t.join(timeout=2 * args.timeout + 10)
            if t.is_alive():
                problems.append("a client thread did not finish (a request hung past its timeout)")
        traffic_seconds = time.perf_counter() - t_start

        # Every stream slot was given back: all of them open at once.
        time.sleep(1.0)
        sockets, statuses = [], []
        try:
            for _ in range(args.max_streams):
                ws = WebSocket(soak.client, "/v1/stream", {"Authorization": f"Bearer {server.key}"}, 10)
                sockets.append(ws)
                statuses.append(ws.status)
        except OSError as e:
            statuses.append(repr(e))
        finally:
            for ws in sockets:
                try:
                    ws.close() if ws.status == 101 else ws.close_socket()
                except OSError:
                    pass
        if any(s != 101 for s in statuses):
            problems.append(f"after the soak, {args.max_streams} streams (--max-streams-per-key) could not all open: {statuses}")

        # The clients are gone: open file descriptors come back to where the idle server was.
        deadline = time.time() + 10
        while True:
            rss_end, threads_end, fds_end = server.status()
            if fds_end <= boot[2] + 8 or time.time() > deadline:
                break
            time.sleep(0.5)
        if fds_end > boot[2] + 8:
            problems.append(f"open file descriptors: {boot[2]} when idle before, {fds_end} idle after")
        health = Client(server.host, server.port, None, 10).request("GET", "/health", key=False).status
        if health != 200:
            problems.append(f"/health answered {health} after the soak")
        sampler.halt.set()
        sampler.join()
    finally:
        code = server.terminate()
    if code != 0:
        problems.append(f"the server exited with {code} after SIGTERM (expected 0)")
    log_text = args.log.read_text(errors="replace")
    if "panicked" in log_text:
        problems.append("a panic in the server log: " + next(l for l in log_text.splitlines() if "panicked" in l)[:300])

    # RSS
    samples = sampler.samples
    fit = [(t, rss) for t, rss, _, _ in samples if t >= warmup]
    slope = slope_per_minute(fit)
    peak = max(rss for _, rss, _, _ in samples)
    rss_warm = fit[0][1] if fit else float("nan")
    rss_last = samples[-1][1]
    if not fit or len(fit) < 10:
        problems.append(f"only {len(fit)} RSS samples after the warm-up")
    elif slope > args.max_rss_slope:
        problems.append(f"RSS grows {slope:.2f} MiB/min after the warm-up (limit {args.max_rss_slope})")
    if peak > args.max_rss_mib:
        problems.append(f"RSS peaked at {peak:.0f} MiB (limit {args.max_rss_mib:.0f})")

    # Report
    st = soak.stats
    total = sum(sum(c.values()) for k, c in st.outcomes.items() if k != "ws_burst_frames")
    print(f"soak: {total} operations in {traffic_seconds:.0f} s ({soak.stream_sessions} stream sessions)")
    print(f"  {'kind':<28}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}  outcomes")
    for kind in sorted(st.outcomes):
        c = st.outcomes[kind]
        lat = st.latencies.get(kind, [])
        p50 = f"{percentile(lat, 50) * 1e3:.1f}" if lat else "-"
        p99 = f"{percentile(lat, 99) * 1e3:.1f}" if lat else "-"
        outs = ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))
        print(f"  {kind:<28}{sum(c.values()):>7}{p50:>9}{p99:>9}  {outs}")
    n5xx = sum(v for c in st.outcomes.values() for k, v in c.items() if re.fullmatch(r"5\d\d", k))
    n429 = sum(c.get("429", 0) for c in st.outcomes.values())
    lost = sum(c.get("lost", 0) for c in st.outcomes.values())
    print(f"  5xx: {n5xx}   429: {n429}   lost: {lost}   failed checks: {sum(st.failures.values())}")
    print(f"  RSS: {boot[0]:.1f} MiB idle at start, {rss_warm:.1f} after the {warmup:.0f} s warm-up, "
          f"{rss_last:.1f} at the end, peak {peak:.1f} (limit {args.max_rss_mib:.0f}); slope after the warm-up "
          f"{slope:+.3f} MiB/min over {len(fit)} samples (limit {args.max_rss_slope})")
    print(f"  threads: {boot[1]} -> {threads_end}; open fds idle: {boot[2]} -> {fds_end}; server exit: {code}")
    for kind, n in sorted(st.failures.items()):
        problems.append(f"{n} failed checks in {kind}")
    if st.examples:
        print("  failures (first ones):")
        for e in st.examples:
            print(f"    {e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "seed": seed, "duration_s": traffic_seconds, "warmup_s": warmup,
            "outcomes": {k: dict(v) for k, v in st.outcomes.items()},
            "latency_ms": {k: {"p50": percentile(v, 50) * 1e3, "p99": percentile(v, 99) * 1e3, "n": len(v)}
                           for k, v in st.latencies.items()},
            "rss_mib": {"boot": boot[0], "after_warmup": rss_warm, "end": rss_last, "peak": peak,
                        "slope_mib_per_min": slope, "limit_slope": args.max_rss_slope, "limit_peak": args.max_rss_mib},
            "rss_samples": [(round(t, 2), round(r, 2)) for t, r, _, _ in samples],
            "problems": problems, "failure_examples": st.examples,
        }, indent=1))
    if problems:
        print("soak: FAILED: " + "; ".join(problems))
        return 1
    print(f"soak: ok: no 5xx, none lost, every answer as expected ({n429} x 429), "
          f"RSS slope {slope:+.2f} MiB/min <= {args.max_rss_slope}, peak {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
