"""Shared paths and helpers of the Python package's tests.

The tests import the *installed* package (ci.sh installs the wheel into a fresh venv and
runs pytest from outside the source tree); `test_installed_package_is_used` checks that.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "crates" / "rtdetr" / "tests" / "fixtures"
FIXTURE_IMAGES = ["photo_exif.jpg", "photo.png", "gray.png", "rgba.png"]
# Every committed parity fixture: a checkpoint directory with transformers' post-processed
# detections (tools/gen_fixtures.py).
FIXTURE_MODELS = sorted(p.parent.name for p in FIXTURES.glob("*/detections.json"))
DEMO = ROOT / "models" / "shapes-demo"
EXAMPLES = sorted((ROOT / "examples").glob("*.png"))
HELDOUT = ROOT / "tests" / "data" / "shapes-heldout"


def rtdetr_bin() -> Path:
    path = Path(os.environ.get("RTDETR_BIN", ROOT / "target" / "release" / "rtdetr"))
    if not path.is_file():
        pytest.fail(f"the CLI binary {path} is missing: cargo build --release -p rtdetr-cli (or set RTDETR_BIN)")
    return path


def run_cli(*args: str) -> str:
    """Runs `rtdetr ARGS` from the repository root; returns stdout."""
    out = subprocess.run([str(rtdetr_bin()), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"rtdetr {' '.join(args)} failed: {out.stderr}"
    return out.stdout


def cli_json_lines(*args: str) -> list:
    return [json.loads(line) for line in run_cli(*args).splitlines() if line.strip()]


def assert_same_detections(got, want, score_tol=0.0, box_tol=0.0, ctx=""):
    """`got`: an rtdetr.Detections; `want`: a list of {"label","class_id","score","box"}
    dicts. Tolerance 0 means equal as float32."""
    assert len(got) == len(want), f"{ctx}: {len(got)} detections, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        assert (g.class_id, g.label) == (w["class_id"], w["label"]), f"{ctx} #{k}: class"
        ws = np.float32(w["score"])
        assert abs(np.float32(g.score) - ws) <= score_tol, f"{ctx} #{k}: score {g.score} vs {ws}"
        wb = np.array([w["box"][c] for c in ("xmin", "ymin", "xmax", "ymax")], dtype=np.float32)
        gb = np.array(g.box, dtype=np.float32)
        assert np.all(np.abs(gb - wb) <= box_tol), f"{ctx} #{k}: box {gb} vs {wb}"


@pytest.fixture(scope="session")
def demo():
    import rtdetr

    return rtdetr.Detector(str(DEMO))
