"""Every input type gives the same detections as the file path; batches equal one-by-one
calls; threads sharing one Detector get the same results; the GIL is released."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rtdetr
from PIL import Image

from conftest import DEMO, EXAMPLES, FIXTURE_IMAGES, FIXTURES

THR = 0.05  # low, so that every comparison covers many detections


def as_records(result):
    return [(d.label, d.class_id, np.float32(d.score), tuple(np.float32(d.box))) for d in result]


def assert_equal_results(a, b, ctx=""):
    assert (a.width, a.height) == (b.width, b.height), ctx
    assert as_records(a) == as_records(b), ctx


def assert_close_results(a, b, ctx=""):
    """crates/rtdetr/tests/parity.rs' batch tolerance: scores 1e-5, boxes 1e-3 px."""
    assert (a.width, a.height) == (b.width, b.height), ctx
    assert len(a) == len(b) and a.labels == b.labels, ctx
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0, err_msg=ctx)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=0, err_msg=ctx)


@pytest.fixture(scope="module")
def fixture_det():
    return rtdetr.Detector(FIXTURES / "tiny-bottleneck")


def test_path_str_pathlib_bytes_bytearray(demo):
    path = EXAMPLES[0]
    want = demo(str(path), threshold=THR)
    assert len(want) > 2
    assert_equal_results(demo(Path(path), threshold=THR), want, "pathlib")
    data = path.read_bytes()
    assert_equal_results(demo(data, threshold=THR), want, "bytes")
    assert_equal_results(demo(bytearray(data), threshold=THR), want, "bytearray")


@pytest.mark.parametrize("name", FIXTURE_IMAGES)
def test_pil_images_equal_files(fixture_det, name):
    """PIL images as transformers' load_image sees them: EXIF orientation applied, then
    convert("RGB"); the engine decodes files to the same pixels."""
    path = FIXTURES / "images" / name
    want = fixture_det(path, threshold=THR)
    with Image.open(path) as im:
        mode = im.mode
        got = fixture_det(im, threshold=THR)
    assert_equal_results(got, want, f"PIL {mode}")


def test_pil_modes_are_covered():
    modes = set()
    for name in FIXTURE_IMAGES:
        with Image.open(FIXTURES / "images" / name) as im:
            modes.add(im.mode)
    assert {"RGBA", "L", "RGB"} <= modes, modes


def test_pil_exif_orientation_is_applied(fixture_det):
    path = FIXTURES / "images" / "photo_exif.jpg"
    with Image.open(path) as im:
        assert im.getexif().get(0x0112, 1) != 1, "the fixture has an EXIF rotation"
        raw_w, raw_h = im.size
        got = fixture_det(im, threshold=THR)
    assert (got.width, got.height) == (raw_h, raw_w)


def test_numpy_rgb_and_bgr(demo):
    path = EXAMPLES[1]
    want = demo(path, threshold=THR)
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[2] == 3 and rgb.dtype == np.uint8
    assert_equal_results(demo(rgb, threshold=THR), want, "numpy RGB")
    bgr_view = rgb[..., ::-1]  # what cv2.imread gives, here a negative-stride view
    assert_equal_results(demo(bgr_view, threshold=THR, bgr=True), want, "bgr view")
    assert_equal_results(demo(np.ascontiguousarray(bgr_view), threshold=THR, bgr=True), want, "bgr contiguous")
    # Without bgr=True, BGR pixels are another image: the results differ.
    assert as_records(demo(np.ascontiguousarray(bgr_view), threshold=THR)) != as_records(want)


def test_numpy_strided_equals_contiguous(demo):
    with Image.open(EXAMPLES[2]) as im:
        rgb = np.asarray(im.convert("RGB"))
    view = rgb[::2, 1::2]
    assert not view.flags.c_contiguous
    assert_equal_results(demo(view, threshold=THR), demo(np.ascontiguousarray(view), threshold=THR))
    fortran = np.asfortranarray(rgb)
    assert_equal_results(demo(fortran, threshold=THR), demo(rgb, threshold=THR))


def test_batch_equals_one_by_one(demo):
    singles = [demo(p, threshold=THR) for p in EXAMPLES]
    batch = demo(list(EXAMPLES), threshold=THR)
    assert isinstance(batch, list) and len(batch) == len(EXAMPLES)
    for p, s, b in zip(EXAMPLES, singles, batch):
        assert_close_results(b, s, p.name)
    as_tuple = demo(tuple(EXAMPLES[:2]), threshold=THR)
    assert isinstance(as_tuple, list) and len(as_tuple) == 2


def test_mixed_batch_and_array_batch(demo):
    with Image.open(EXAMPLES[0]) as im:
        pil = im.convert("RGB")
    arr = np.asarray(pil)
    mixed = demo([EXAMPLES[0], arr, pil, EXAMPLES[0].read_bytes()], threshold=THR)
    for r in mixed[1:]:
        assert_close_results(r, mixed[0])
    stacked = np.stack([arr, arr[:, ::-1]])
    from_array = demo(stacked, threshold=THR)
    from_list = demo([arr, np.ascontiguousarray(arr[:, ::-1])], threshold=THR)
    assert isinstance(from_array, list) and len(from_array) == 2
    for a, b in zip(from_array, from_list):
        assert_equal_results(a, b)


def test_empty_batch(demo):
    assert demo([]) == []


def test_threads_share_one_detector(demo):
    want = {p: as_records(demo(p, threshold=THR)) for p in EXAMPLES}
    jobs = [p for p in EXAMPLES for _ in range(3)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda p: (p, as_records(demo(p, threshold=THR))), jobs))
    for p, records in got:
        assert records == want[p], p.name


def test_gil_is_released_during_inference():
    """While one thread runs a long batch, the main thread keeps running Python code.

    The main thread records the time of each step of a Python loop while the other thread
    is inside `det(batch)`. Holding the GIL for the call would leave no step in the middle
    half of the call (only its first and last microseconds are Python); not a timing
    threshold, so a loaded machine only means fewer steps, never a false failure.
    """
    det = rtdetr.Detector(DEMO, size=640)
    batch = [EXAMPLES[0]] * 4
    det(batch[:1])  # warm-up: builds the kernels' weight forms
    window = {}
    finished = threading.Event()

    def work():
        window["enter"] = time.perf_counter()
        det(batch)
        window["exit"] = time.perf_counter()
        finished.set()

    thread = threading.Thread(target=work)
    steps = []
    thread.start()
    while not finished.is_set():
        steps.append(time.perf_counter())  # needs the GIL
        time.sleep(0.001)
    thread.join()
    enter, exit_ = window["enter"], window["exit"]
    quarter = (exit_ - enter) / 4
    inside = [t for t in steps if enter + quarter < t < exit_ - quarter]
    assert inside, (len(steps), exit_ - enter)
