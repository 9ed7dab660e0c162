"""The type stubs (python/rtdetr/__init__.pyi, shipped in the wheel with py.typed) match
the compiled module, and typical code type-checks against them."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mypy")


def test_stubtest():
    out = subprocess.run([sys.executable, "-m", "mypy.stubtest", "rtdetr"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_usage_type_checks(tmp_path):
    code = textwrap.dedent(
        """
        import numpy as np
        import rtdetr

        det = rtdetr.Detector("models/shapes-demo", precision="f32", size=(256, 256))
        r = det("examples/shapes-1.png", threshold=0.5, classes=["triangle"])
        boxes: np.ndarray = r.boxes
        batch = det(["a.png", b"raw bytes"], max_detections=10)
        first: rtdetr.Detections = batch[0]
        label: str = first[0].label
        for d in r:
            x0: float = d.box[0]
        pipeline_shape: list[dict[str, object]] = r.to_list(integer_boxes=True)
        stats = det.eval("images", "instances.json", batch_size=4, limit=10)
        ap: float = stats["AP"]
        size = det.input_size
        """
    )
    (tmp_path / "example.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), "example.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # A wrong use is caught.
    (tmp_path / "bad.py").write_text("import rtdetr\nn: int = rtdetr.Detector('m')('x.png').labels\n")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), "bad.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 1 and "incompatible types" in out.stdout.lower(), out.stdout
