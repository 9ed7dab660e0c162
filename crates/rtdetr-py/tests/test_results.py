"""The result object: arrays, iteration, the pipeline's and the CLI's dict shapes,
supervision, and the Detector's properties."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import rtdetr

from conftest import DEMO, EXAMPLES


@pytest.fixture(scope="module")
def result(demo):
    r = demo(EXAMPLES[0], threshold=0.05)
    assert len(r) >= 3
    return r


def test_arrays(result):
    n = len(result)
    assert result.boxes.shape == (n, 4) and result.boxes.dtype == np.float32
    assert result.scores.shape == (n,) and result.scores.dtype == np.float32
    assert result.class_ids.shape == (n,) and result.class_ids.dtype == np.int64
    assert isinstance(result.labels, list) and len(result.labels) == n
    assert np.all(np.diff(result.scores) <= 0), "sorted by score"
    assert np.all(result.scores > 0.05)
    b = result.boxes
    assert np.all(b[:, 0] <= b[:, 2]) and np.all(b[:, 1] <= b[:, 3])
    assert np.all(b >= 0) and np.all(b[:, [0, 2]] <= result.width) and np.all(b[:, [1, 3]] <= result.height)


def test_iteration_and_indexing(demo, result):
    items = list(result)
    assert len(items) == len(result)
    for i, d in enumerate(items):
        assert isinstance(d, rtdetr.Detection)
        assert d.label == result.labels[i] == demo.labels[d.class_id]
        assert d.class_id == result.class_ids[i]
        assert np.float32(d.score) == result.scores[i]
        assert np.array_equal(np.float32(d.box), result.boxes[i])
        assert d.to_dict() == {
            "label": d.label,
            "class_id": d.class_id,
            "score": d.score,
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), d.box)),
        }
    assert result[-1].score == items[-1].score
    with pytest.raises(IndexError):
        result[len(result)]
    assert bool(result)
    assert "Detection(label=" in repr(items[0])
    assert repr(result).startswith(f"Detections({len(result)} in {result.width}x{result.height}")


def test_to_list_is_the_pipeline_shape(result):
    out = result.to_list()
    assert isinstance(out, list) and len(out) == len(result)
    for d, item in zip(result, out):
        assert list(item) == ["score", "label", "box"]
        assert list(item["box"]) == ["xmin", "ymin", "xmax", "ymax"]
        assert item["score"] == d.score and item["label"] == d.label
        assert tuple(item["box"].values()) == d.box
    ints = result.to_list(integer_boxes=True)
    for d, item in zip(result, ints):
        assert all(type(v) is int for v in item["box"].values())
        assert tuple(item["box"].values()) == tuple(int(v) for v in d.box)


def test_to_dict(result):
    d = result.to_dict()
    assert d["width"] == result.width and d["height"] == result.height
    assert d["detections"] == [x.to_dict() for x in result]


def test_empty_result(demo):
    r = demo(EXAMPLES[0], threshold=1.0)
    assert len(r) == 0 and not r
    assert r.boxes.shape == (0, 4) and r.scores.shape == (0,) and r.class_ids.shape == (0,)
    assert r.to_list() == [] and list(r) == []


def test_max_detections(demo):
    assert len(demo(EXAMPLES[0], threshold=0.0, max_detections=7)) == 7
    # Post-processing keeps the top num_queries (100) of queries x classes, as transformers.
    assert len(demo(EXAMPLES[0], threshold=0.0, max_detections=10_000)) == 100


def test_to_supervision_round_trips(result):
    sv = pytest.importorskip("supervision")
    s = result.to_supervision()
    assert isinstance(s, sv.Detections) and len(s) == len(result)
    assert np.array_equal(s.xyxy, result.boxes)
    assert np.array_equal(s.confidence, result.scores)
    assert np.array_equal(s.class_id, result.class_ids)
    assert list(s.data["class_name"]) == result.labels
    # supervision's own filtering keeps the names aligned.
    top = s[s.confidence > 0.5]
    assert list(top.data["class_name"]) == [d.label for d in result if d.score > 0.5]


def test_to_supervision_empty(demo):
    pytest.importorskip("supervision")
    s = demo(EXAMPLES[0], threshold=1.0).to_supervision()
    assert len(s) == 0 and s.xyxy.shape == (0, 4)


def test_to_supervision_without_the_package(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # makes `import supervision` fail
    with pytest.raises(ImportError, match="pip install supervision"):
        result.to_supervision()


def test_detector_properties(demo):
    assert demo.labels == ["circle", "ellipse", "rectangle", "triangle", "star"]
    assert demo.input_size == (256, 256)
    assert demo.precision == "f32"
    assert demo.decoder_layers == 3
    assert demo.model == str(DEMO)
    r = repr(demo)
    assert r.startswith("Detector(model=") and "shapes-demo" in r and "input_size=(256, 256)" in r
    assert rtdetr.DEFAULT_MODEL == "PekingU/rtdetr_r50vd"
    assert rtdetr.__version__


def test_bf16_request():
    # Runs bf16 where the CPU has AVX512-BF16, else warns and runs f32.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det = rtdetr.Detector(DEMO, precision="bf16")
    assert det.precision in ("f32", "bf16")
    if det.precision == "f32":
        assert any(issubclass(w.category, RuntimeWarning) and "bf16" in str(w.message) for w in caught)
    assert len(det(EXAMPLES[0])) > 0


def test_no_torch_imported():
    code = (
        "import sys, rtdetr; det = rtdetr.Detector(sys.argv[1]); det(sys.argv[2]).boxes; "
        "print(sorted(m for m in ('torch', 'transformers', 'PIL', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(DEMO), str(EXAMPLES[0])], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
