"""Dev-only: the package against transformers' `pipeline("object-detection")` run here and
now, on the parity fixtures. Skipped when torch or transformers is not installed (CI's venv
has neither; there the committed detections.json, transformers' output, is the reference:
test_parity.py)."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import rtdetr  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import FIXTURE_IMAGES, FIXTURES  # noqa: E402

MODELS = ["tiny-bottleneck", "tiny-basic-legacy", "tiny-v2", "tiny-v2-discrete"]


@pytest.mark.parametrize("name", MODELS)
def test_equals_transformers_pipeline(name):
    torch.set_num_threads(2)
    pipe = transformers.pipeline("object-detection", model=str(FIXTURES / name), device="cpu")
    det = rtdetr.Detector(FIXTURES / name)
    for f in FIXTURE_IMAGES:
        path = FIXTURES / "images" / f
        with Image.open(path) as im:
            im.load()
            want = pipe(im.copy(), threshold=0.3)
            got = det(im, threshold=0.3)
        want.sort(key=lambda d: -d["score"])  # the pipeline keeps the processor's order
        assert len(got) == len(want), f"{name} {f}"
        for k, (g, w) in enumerate(zip(got.to_list(integer_boxes=True), want)):
            ctx = f"{name} {f} #{k}"
            assert g["label"] == w["label"], ctx
            assert abs(g["score"] - w["score"]) <= 1e-4, ctx
            # The pipeline truncates unclipped boxes to int; rtdetr clips first.
            for key, limit in (("xmin", got.width), ("ymin", got.height), ("xmax", got.width), ("ymax", got.height)):
                assert abs(g["box"][key] - min(max(w["box"][key], 0), limit)) <= 1, (ctx, g["box"], w["box"])
