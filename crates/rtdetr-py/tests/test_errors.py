"""Bad input raises the right Python exception with the engine's message, never a panic."""

import json
import math
import shutil

import numpy as np
import pytest
import rtdetr

from conftest import DEMO, EXAMPLES, FIXTURES


def test_missing_file(demo, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        demo(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match=r"images\[1\]: .*nope.png"):
        demo([EXAMPLES[0], str(tmp_path / "nope.png")])


def test_directory_as_image(demo, tmp_path):
    with pytest.raises(OSError):
        demo(tmp_path)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8\xff\xe0" + b"\0" * 100],
)
def test_non_image_bytes(demo, data):
    with pytest.raises(ValueError, match="image"):
        demo(data)


def test_truncated_file(demo, tmp_path):
    data = EXAMPLES[0].read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        demo(bad)


@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 4), (32, 32, 1), (0, 32, 3), (32, 0, 3), (3,)])
def test_wrong_array_shape(demo, shape):
    with pytest.raises(ValueError):
        demo(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint16, bool])
def test_wrong_array_dtype(demo, dtype):
    with pytest.raises((TypeError, ValueError), match="uint8"):
        demo(np.zeros((32, 32, 3), dtype=dtype))


def test_unsupported_types(demo):
    for obj in (5, 1.5, None, {"image": 1}, object()):
        with pytest.raises(TypeError, match="unsupported image type"):
            demo(obj)
    with pytest.raises(TypeError, match="nested"):
        demo([[EXAMPLES[0]]])


def test_bgr_only_for_arrays(demo):
    with pytest.raises(ValueError, match="bgr"):
        demo(EXAMPLES[0], bgr=True)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, math.nan, math.inf])
def test_bad_threshold(demo, threshold):
    with pytest.raises(ValueError, match="threshold"):
        demo(EXAMPLES[0], threshold=threshold)


def test_bad_options(demo):
    with pytest.raises(ValueError, match="max_detections"):
        demo(EXAMPLES[0], max_detections=0)
    with pytest.raises(ValueError, match="unknown class \"zebra\"; this model knows: circle"):
        demo(EXAMPLES[0], classes=["triangle", "zebra"])
    with pytest.raises(ValueError, match="empty"):
        demo(EXAMPLES[0], classes=[])
    with pytest.raises(TypeError, match="classes"):
        demo(EXAMPLES[0], classes=3)
    with pytest.raises(TypeError):
        demo(EXAMPLES[0], threshold="high")


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        rtdetr.Detector(tmp_path / "no" / "such" / "model")
    with pytest.raises(FileNotFoundError):
        rtdetr.Detector(tmp_path)  # a directory without config.json
    with pytest.raises(TypeError):
        rtdetr.Detector(42)


def copy_model(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(FIXTURES / "tiny-bottleneck", dst)
    return dst


def test_bad_model_files(tmp_path):
    dst = copy_model(tmp_path)
    (dst / "config.json").write_text('{"model_type": "rt_detr", "d_model": ')
    with pytest.raises(ValueError, match="config.json"):
        rtdetr.Detector(dst)
    shutil.copy(FIXTURES / "tiny-bottleneck" / "config.json", dst / "config.json")
    (dst / "model.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}garbage")
    with pytest.raises(ValueError):
        rtdetr.Detector(dst)
    (dst / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        rtdetr.Detector(dst)


def test_bad_config_values(tmp_path):
    dst = copy_model(tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["d_model"] = 7
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        rtdetr.Detector(dst)


def test_bad_load_options():
    with pytest.raises(ValueError, match="multiples of 32"):
        rtdetr.Detector(DEMO, size=100)
    with pytest.raises(ValueError, match="positive"):
        rtdetr.Detector(DEMO, size=(-32, 64))
    with pytest.raises(TypeError, match="size"):
        rtdetr.Detector(DEMO, size="640")
    with pytest.raises(ValueError, match="precision"):
        rtdetr.Detector(DEMO, precision="fp16")
    with pytest.raises(ValueError, match="decoder layers must be in 1..=3"):
        rtdetr.Detector(DEMO, decoder_layers=4)
    with pytest.raises(ValueError, match="decoder_layers"):
        rtdetr.Detector(DEMO, decoder_layers=0)


def test_hub_download_failure(tmp_path, monkeypatch):
    # A Hub id with no reachable Hub: a clear RuntimeError naming the demo model.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="models/shapes-demo"):
        rtdetr.Detector("nobody/no-such-model")
