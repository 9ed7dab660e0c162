"""Fixtures for the real-client test of `rtdetr serve`.

The server under test is either already running (RTDETR_SERVER_URL, as `.ci/run` does) or
started here from RTDETR_BIN (default target/release/rtdetr) on an ephemeral loopback port.
Either way it serves two fixture models (an RT-DETR first, the default, and an RT-DETRv2 of
other classes and input size: `--model A --model B`) with --allow-private-urls and an API key.
"""

import functools
import http.server
import json
import os
import pathlib
import re
import secrets
import subprocess
import threading
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "crates/rtdetr/tests/fixtures/tiny-bottleneck"
# The second model of the server (served under its directory name).
SECOND_MODEL_DIR = ROOT / "crates/rtdetr/tests/fixtures/tiny-v2"
IMAGES_DIR = ROOT / "crates/rtdetr/tests/fixtures/images"
BIN = pathlib.Path(os.environ.get("RTDETR_BIN", ROOT / "target/release/rtdetr"))


def _wait_healthy(url, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}/health did not answer 200 within {timeout}s")


@pytest.fixture(scope="session")
def server():
    """(base_url, api_key, model_name) of a ready server."""
    url = os.environ.get("RTDETR_SERVER_URL")
    if url:
        key = os.environ["RTDETR_API_KEY"]
        name = os.environ.get("RTDETR_MODEL_NAME", MODEL_DIR.name)
        _wait_healthy(url)
        yield url.rstrip("/"), key, name
        return
    assert BIN.is_file(), f"{BIN} not built: cargo build --release"
    key = "test-" + secrets.token_hex(8)
    env = dict(os.environ, RTDETR_API_KEYS=key)
    proc = subprocess.Popen(
        [
            str(BIN),
            "serve",
            "--model",
            str(MODEL_DIR),
            "--model",
            str(SECOND_MODEL_DIR),
            "--port",
            "0",
            "--allow-private-urls",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://[0-9.:\[\]]+", line)
        assert m, f"no address in {line!r}"
        url = m.group(0)
        _wait_healthy(url)
        yield url, key, MODEL_DIR.name
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0, "server did not exit cleanly on SIGTERM"
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="session")
def image_server():
    """A loopback HTTP server for the fixture images; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(IMAGES_DIR))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@functools.lru_cache(maxsize=None)
def cli_detections(image_name, threshold, model_dir=MODEL_DIR):
    """What `rtdetr detect --json` prints for one fixture image."""
    out = subprocess.run(
        [
            str(BIN),
            "detect",
            "--json",
            "--model",
            str(model_dir),
            "--threshold",
            str(threshold),
            str(IMAGES_DIR / image_name),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return lines[0]
