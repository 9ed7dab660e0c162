"""Detector.eval equals `rtdetr eval` (the same rtdetr_coco::detector code) and the
transformers + pycocotools reference on the committed held-out set."""

import json

import pytest
import rtdetr

from conftest import DEMO, FIXTURES, HELDOUT, cli_json_lines

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
IMAGES = HELDOUT / "images"
ANNOTATIONS = HELDOUT / "instances.json"


def test_eval_equals_cli_and_reference(demo):
    got = demo.eval(IMAGES, ANNOTATIONS, batch_size=4)
    assert list(got) == KEYS
    cli = cli_json_lines(
        "eval", "--model", str(DEMO), "--images", str(IMAGES), "--annotations", str(ANNOTATIONS),
        "--batch-size", "4", "--json",
    )[0]
    assert got == cli, (got, cli)
    reference = json.loads((HELDOUT / "reference.json").read_text())["stats"]
    for k in KEYS:
        assert abs(got[k] - reference[k]) <= 2e-3, (k, got[k], reference[k])
    assert got["AP"] >= 0.80


def test_eval_limit_and_results_file(demo, tmp_path):
    ours, theirs = tmp_path / "ours.json", tmp_path / "cli.json"
    got = demo.eval(str(IMAGES), str(ANNOTATIONS), limit=20, out=ours)
    cli = cli_json_lines(
        "eval", "--model", str(DEMO), "--images", str(IMAGES), "--annotations", str(ANNOTATIONS),
        "--limit", "20", "--out", str(theirs), "--json",
    )[0]
    assert got == cli
    assert json.loads(ours.read_text()) == json.loads(theirs.read_text())
    assert len(json.loads(ours.read_text())) > 20


def test_eval_errors(demo, tmp_path):
    with pytest.raises(FileNotFoundError):
        demo.eval(IMAGES, tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        demo.eval(tmp_path / "missing", ANNOTATIONS)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"images\": [")
    with pytest.raises(ValueError, match="invalid COCO annotation file"):
        demo.eval(IMAGES, bad)
    with pytest.raises(ValueError, match="batch_size"):
        demo.eval(IMAGES, ANNOTATIONS, batch_size=0)
    # An image named by the annotations but absent from the directory.
    (tmp_path / "imgs").mkdir()
    with pytest.raises(FileNotFoundError, match="0000.jpg"):
        demo.eval(tmp_path / "imgs", ANNOTATIONS, limit=1)
    # A model whose labels do not match the dataset's categories.
    other = rtdetr.Detector(FIXTURES / "tiny-bottleneck")
    with pytest.raises(ValueError, match="have no matching label"):
        other.eval(IMAGES, ANNOTATIONS, limit=1)
