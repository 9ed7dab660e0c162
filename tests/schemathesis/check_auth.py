#!/usr/bin/env python3
"""Auth is enforced on every /v1 operation of the OpenAPI description (standard library only).

Schemathesis' `ignored_auth` check drops the credentials of some generated requests, but not
deterministically for every operation, not in every form, and never for the WebSocket route.
This script reads GET /openapi.json from a live `rtdetr serve` (loopback only) and, for every
operation under /v1:

- the operation documents `security` (without an empty, i.e. optional, alternative) and a
  401 answer (spec);
- the request, otherwise valid (a real image, the served model name), is answered 401 in the
  error shape (`authentication_error` / `invalid_api_key`) with an `x-request-id` header when
  the key is missing, wrong, in another case, without the `Bearer` scheme, under `Basic`,
  empty, or given as `?api_key=` (only /v1/stream takes the key in the query string);
- with the right key the same request is not refused (positive control);
- every 405 for a method the operation does not have is also preceded by auth (401 without key);
- /v1/stream: a real WebSocket handshake is answered 401 without a key, with a wrong header key,
  a wrong `?api_key=`, and a wrong header next to a right `?api_key=` (the header wins); 101
  with the right key in either place.

Usage: check_auth.py URL KEY [MODEL_NAME]. Exit 1 on any failure, printing each one.
"""

import base64
import http.client
import ipaddress
import json
import os
import pathlib
import sys
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGE = ROOT / "crates/rtdetr/tests/fixtures/images/gray.png"


def request(base, method, path, headers=None, body=None):
    """(status, headers dict with lowercase keys, body bytes)."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def valid_request(path, method, model, key_headers):
    """Headers and body that the operation would accept with the right key."""
    headers = dict(key_headers)
    body = None
    data_url = "data:image/png;base64," + base64.b64encode(IMAGE.read_bytes()).decode()
    if method == "POST" and path == "/v1/detections":
        headers["Content-Type"] = "application/json"
        body = json.dumps({"image": data_url}).encode()
    elif method == "POST" and path == "/v1/chat/completions":
        headers["Content-Type"] = "application/json"
        content = [{"type": "image_url", "image_url": {"url": data_url}}]
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()
    elif method == "POST":
        headers["Content-Type"] = "application/json"
        body = b"{}"
    return headers, body


def ws_handshake_headers(extra=None):
    h = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    h.update(extra or {})
    return h


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    base, key = sys.argv[1].rstrip("/"), sys.argv[2]
    model = sys.argv[3] if len(sys.argv) > 3 else None
    host = urllib.parse.urlsplit(base).hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("check_auth: loopback servers only")
    status, _, raw = request(base, "GET", "/openapi.json")
    assert status == 200, f"GET /openapi.json answered {status}"
    spec = json.loads(raw)
    if model is None:
        _, _, raw = request(base, "GET", "/v1/models", {"Authorization": f"Bearer {key}"})
        model = json.loads(raw)["data"][0]["id"]

    failures, checked = [], 0

    def fail(what):
        failures.append(what)
        print(f"FAIL {what}")

    def expect_401(label, status, headers, body):
        nonlocal checked
        checked += 1
        if status != 401:
            fail(f"{label}: answered {status}, expected 401 ({body[:160]!r})")
            return
        try:
            err = json.loads(body)["error"]
            if err.get("type") != "authentication_error" or err.get("code") != "invalid_api_key":
                fail(f"{label}: 401 with error {err}")
        except (ValueError, KeyError, TypeError):
            fail(f"{label}: 401 without the error shape: {body[:160]!r}")
        if not headers.get("x-request-id"):
            fail(f"{label}: 401 without x-request-id")
        if "www-authenticate" in headers and not headers["www-authenticate"].lower().startswith("bearer"):
            fail(f"{label}: WWW-Authenticate {headers['www-authenticate']!r} is not Bearer")

    wrong_keys = {
        "no Authorization header": {},
        "wrong key": {"Authorization": "Bearer wrong-" + key},
        "key in another case": {"Authorization": "Bearer " + key.swapcase()} if key.swapcase() != key else None,
        "key with a suffix": {"Authorization": f"Bearer {key}x"},
        "key prefix only": {"Authorization": f"Bearer {key[:-1]}"},
        "no Bearer scheme": {"Authorization": key},
        "Basic scheme": {"Authorization": "Basic " + base64.b64encode(f"user:{key}".encode()).decode()},
        "empty Bearer": {"Authorization": "Bearer "},
        "empty header": {"Authorization": ""},
    }
    ops = []
    for path, item in spec.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for method, op in item.items():
            if method.lower() not in ("get", "post", "put", "patch", "delete", "head", "options"):
                continue
            ops.append((method.upper(), path, op))
    if not ops:
        fail("the OpenAPI description lists no /v1 operation")
    for method, path, op in ops:
        label = f"{method} {path}"
        concrete = path.replace("{model}", urllib.parse.quote(model, safe=""))
        # Spec: the operation requires the bearer scheme and documents 401.
        security = op.get("security")
        if not security:
            fail(f"{label}: no `security` in the OpenAPI description")
        elif any(not requirement for requirement in security):
            # `{}` among the alternatives means "or no credentials at all".
            fail(f"{label}: `security` {json.dumps(security)} lists an empty requirement: auth documented as optional")
        if "401" not in op.get("responses", {}):
            fail(f"{label}: 401 not documented in the OpenAPI description (responses: {', '.join(op.get('responses', {}))})")
        if path == "/v1/stream":
            continue  # below, with real handshakes
        for what, hdrs in wrong_keys.items():
            if hdrs is None:
                continue
            headers, body = valid_request(path, method, model, hdrs)
            expect_401(f"{label} [{what}]", *request(base, method, concrete, headers, body))
        # Only /v1/stream accepts ?api_key=.
        headers, body = valid_request(path, method, model, {})
        sep = "&" if "?" in concrete else "?"
        expect_401(
            f"{label} [right key as ?api_key=]",
            *request(base, method, concrete + sep + urllib.parse.urlencode({"api_key": key}), headers, body),
        )
        # Positive control: the same request with the right key is not refused.
        headers, body = valid_request(path, method, model, {"Authorization": f"Bearer {key}"})
        status, _, raw = request(base, method, concrete, headers, body)
        checked += 1
        if not 200 <= status < 300:
            fail(f"{label} [right key]: answered {status}, expected 2xx ({raw[:160]!r})")
        # A method the route does not have: auth still comes first.
        other = "DELETE" if method != "DELETE" else "PUT"
        expect_401(f"{other} {path} (undocumented method) [no key]", *request(base, other, concrete))

    # /v1/stream: real WebSocket handshakes.
    if any(p == "/v1/stream" for _, p, _ in ops):
        q_right = "/v1/stream?" + urllib.parse.urlencode({"api_key": key})
        q_wrong = "/v1/stream?" + urllib.parse.urlencode({"api_key": "wrong-" + key})
        for what, path, extra in [
            ("no key", "/v1/stream", {}),
            ("wrong header key", "/v1/stream", {"Authorization": "Bearer wrong-" + key}),
            ("wrong ?api_key", q_wrong, {}),
            ("wrong header, right ?api_key (the header wins)", q_right, {"Authorization": "Bearer wrong-" + key}),
            ("Basic scheme", "/v1/stream", {"Authorization": "Basic " + base64.b64encode(key.encode()).decode()}),
        ]:
            expect_401(f"GET /v1/stream handshake [{what}]", *request(base, "GET", path, ws_handshake_headers(extra)))
        for what, path, extra in [
            ("right header key", "/v1/stream", {"Authorization": f"Bearer {key}"}),
            ("right ?api_key", q_right, {}),
        ]:
            status, _, raw = request(base, "GET", path, ws_handshake_headers(extra))
            checked += 1
            if status != 101:
                fail(f"GET /v1/stream handshake [{what}]: answered {status}, expected 101 ({raw[:160]!r})")
        expect_401("GET /v1/stream without upgrade [no key]", *request(base, "GET", "/v1/stream"))

    ops_text = ", ".join(f"{m} {p}" for m, p, _ in ops)
    print(f"check_auth: {len(ops)} /v1 operations ({ops_text}); {checked} requests checked, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
