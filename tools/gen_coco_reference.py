#!/usr/bin/env python3
"""Generate COCO bbox-evaluation fixtures and pycocotools reference numbers.

Dev-only tool for the `rtdetr-coco` crate. It writes seeded synthetic COCO
ground-truth / results JSON pairs into `crates/rtdetr-coco/tests/data/`, runs
pycocotools' COCOeval (iouType="bbox") on each pair and records the 12 summary
stats, the per-category AP (IoU .50:.95, area all, maxDets 100) and the printed
summary lines in `reference.json`. The Rust parity test
(`crates/rtdetr-coco/tests/parity.rs`) only reads the committed files, so CI
does not need Python.

Usage (from the repository root):

    /work/pyenv/bin/python tools/gen_coco_reference.py

Requires pycocotools (tested with 2.0.11) and numpy.
"""

import argparse
import contextlib
import io
import json
import os

import numpy as np
import pycocotools
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "rtdetr-coco", "tests", "data"
)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


class Gen:
    """Small builder around a seeded numpy RNG."""

    def __init__(self, seed, decimals=2):
        self.rng = np.random.default_rng(seed)
        self.decimals = decimals
        self.images = []
        self.anns = []
        self.dets = []
        self.next_ann_id = 1

    def r(self, v):
        v = float(v)
        if self.decimals is None:
            return v
        return round(v, self.decimals)

    def score(self):
        return self.r(self.rng.uniform(0.01, 1.0)) if self.decimals is None else round(
            float(self.rng.uniform(0.01, 1.0)), 4
        )

    def image(self, img_id, w=640, h=480):
        self.images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": w, "height": h})
        return img_id

    def rand_box(self, img_w, img_h, size=None):
        """Random box; size in {small, medium, large, huge, any}."""
        size = size or self.rng.choice(["small", "medium", "large", "any"])
        if size == "small":
            w, h = self.rng.uniform(2, 40, 2)
        elif size == "medium":
            w, h = self.rng.uniform(30, 110, 2)
        elif size == "large":
            w, h = self.rng.uniform(90, 400, 2)
        elif size == "huge":
            w, h = self.rng.uniform(500, 3000, 2)
        else:
            w, h = self.rng.uniform(2, 300, 2)
        # up to 10% left/above the image and up to half the box past the right/bottom edge
        x = self.rng.uniform(-0.1 * img_w, max(img_w - 0.5 * w, 0.5 * img_w))
        y = self.rng.uniform(-0.1 * img_h, max(img_h - 0.5 * h, 0.5 * img_h))
        return [self.r(x), self.r(y), self.r(w), self.r(h)]

    def jitter(self, box, amount):
        x, y, w, h = box
        dx, dy = self.rng.normal(0, amount * max(w, 1.0)), self.rng.normal(0, amount * max(h, 1.0))
        sw, sh = np.exp(self.rng.normal(0, amount, 2))
        return [self.r(x + dx), self.r(y + dy), self.r(w * sw), self.r(h * sh)]

    def gt(self, img_id, cat_id, box, iscrowd=0, area=None, ann_id=None, **extra):
        if ann_id is None:
            ann_id = self.next_ann_id
            self.next_ann_id += 1
        a = {
            "id": ann_id,
            "image_id": img_id,
            "category_id": cat_id,
            "bbox": box,
            "area": self.r(box[2] * box[3]) if area is None else area,
            "iscrowd": iscrowd,
        }
        a.update(extra)
        self.anns.append(a)
        return a

    def det(self, img_id, cat_id, box, score=None):
        self.dets.append(
            {
                "image_id": img_id,
                "category_id": cat_id,
                "bbox": box,
                "score": self.score() if score is None else score,
            }
        )

    def dataset(self, cat_ids):
        cats = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in cat_ids]
        return {
            "info": {"description": "rtdetr-coco synthetic fixture"},
            "images": self.images,
            "annotations": self.anns,
            "categories": cats,
        }


def random_scene(g, n_images, cat_ids, max_gt=6, recall=0.85, fp_rate=2, jit=0.08, first_id=1):
    for i in range(n_images):
        img = g.image(first_id + i, int(g.rng.integers(320, 1000)), int(g.rng.integers(240, 800)))
        w, h = g.images[-1]["width"], g.images[-1]["height"]
        for _ in range(int(g.rng.integers(0, max_gt + 1))):
            c = int(g.rng.choice(cat_ids))
            crowd = 1 if g.rng.random() < 0.03 else 0
            box = g.rand_box(w, h, "large" if crowd else None)
            g.gt(img, c, box, iscrowd=crowd)
            if g.rng.random() < recall:
                g.det(img, c, g.jitter(box, jit))
            if g.rng.random() < 0.1:  # confused class
                g.det(img, int(g.rng.choice(cat_ids)), g.jitter(box, jit))
        for _ in range(int(g.rng.integers(0, fp_rate + 1))):
            g.det(img, int(g.rng.choice(cat_ids)), g.rand_box(w, h))


# ----------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------


def case_random_small():
    """Random scenes, full-precision float coordinates and scores."""
    g = Gen(1, decimals=None)
    cats = [1, 2, 3, 4]
    random_scene(g, 40, cats)
    return g.dataset(cats), g.dets


def case_random_medium():
    """Larger random set with non-contiguous category ids."""
    g = Gen(2)
    cats = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]
    random_scene(g, 300, cats, max_gt=8, recall=0.8, fp_rate=4, jit=0.1)
    return g.dataset(cats), g.dets


def case_crowd():
    """Crowd regions: dets inside crowds are ignored, crowds match many dets."""
    g = Gen(3)
    cats = [1, 2]
    for i in range(30):
        img = g.image(100 + i)
        # one or two crowd regions
        crowds = []
        for _ in range(int(g.rng.integers(1, 3))):
            c = int(g.rng.choice(cats))
            box = g.rand_box(640, 480, "large")
            crowds.append((c, box))
            g.gt(img, c, box, iscrowd=1)
        # normal objects, some inside the crowd region
        for c, cb in crowds:
            for _ in range(int(g.rng.integers(0, 4))):
                w, h = g.rng.uniform(10, 80, 2)
                x = cb[0] + g.rng.uniform(0, max(cb[2] - w, 1))
                y = cb[1] + g.rng.uniform(0, max(cb[3] - h, 1))
                box = [g.r(x), g.r(y), g.r(w), g.r(h)]
                g.gt(img, c, box)
                if g.rng.random() < 0.7:
                    g.det(img, c, g.jitter(box, 0.1))
            # many detections inside the crowd
            for _ in range(int(g.rng.integers(1, 8))):
                w, h = g.rng.uniform(5, 120, 2)
                x = cb[0] + g.rng.uniform(-10, max(cb[2] - w, 1))
                y = cb[1] + g.rng.uniform(-10, max(cb[3] - h, 1))
                g.det(img, c, [g.r(x), g.r(y), g.r(w), g.r(h)])
            # a det covering the crowd itself, and a small one in the crowd
            g.det(img, c, g.jitter(cb, 0.05))
        # plain objects elsewhere
        for _ in range(int(g.rng.integers(0, 3))):
            c = int(g.rng.choice(cats))
            box = g.rand_box(640, 480)
            g.gt(img, c, box)
            g.det(img, c, g.jitter(box, 0.05))
    # a small crowd and a medium crowd
    img = g.image(999)
    g.gt(img, 1, [10.0, 10.0, 20.0, 20.0], iscrowd=1)
    g.gt(img, 1, [100.0, 100.0, 60.0, 60.0], iscrowd=1)
    g.gt(img, 1, [12.0, 12.0, 10.0, 10.0])
    g.det(img, 1, [12.0, 12.0, 10.0, 10.0], 0.3)
    g.det(img, 1, [11.0, 11.0, 12.0, 12.0], 0.9)
    g.det(img, 1, [110.0, 110.0, 20.0, 20.0], 0.8)
    g.det(img, 1, [95.0, 95.0, 70.0, 70.0], 0.7)
    return g.dataset(cats), g.dets


def case_empty_and_missing():
    """Empty images, images without dets, categories without GT / without dets."""
    g = Gen(4)
    cats = [1, 2, 3, 4, 7]  # 3: no GT but dets; 4: GT but no dets; 7: nothing
    for i in range(1, 31):
        img = g.image(i)
        kind = i % 3
        if kind == 0:  # empty image: no GT, only false positives
            for _ in range(int(g.rng.integers(0, 4))):
                g.det(img, int(g.rng.choice([1, 2, 3])), g.rand_box(640, 480))
            continue
        for _ in range(int(g.rng.integers(1, 5))):
            c = int(g.rng.choice([1, 2, 4]))
            box = g.rand_box(640, 480)
            g.gt(img, c, box)
            if kind == 1 and c != 4:  # kind 2: GT but no detections at all
                g.det(img, c, g.jitter(box, 0.1))
        if kind == 1:
            g.det(img, 3, g.rand_box(640, 480))  # category without GT
            g.det(img, 42, g.rand_box(640, 480))  # category not in the GT file
    # GT annotation on an image that is not listed in "images" (never evaluated)
    g.gt(12345, 1, [1.0, 1.0, 50.0, 50.0])
    return g.dataset(cats), g.dets


def case_tied_scores():
    """Scores quantized to a few values: stable sort order decides matches."""
    g = Gen(5)
    cats = [1, 2, 3]
    levels = [0.1, 0.5, 0.5, 0.9, 1.0]
    for i in range(1, 41):
        img = g.image(i)
        for _ in range(int(g.rng.integers(0, 5))):
            c = int(g.rng.choice(cats))
            box = g.rand_box(640, 480)
            g.gt(img, c, box)
            # two equal-score candidates for the same GT: the first one wins
            s = float(g.rng.choice(levels))
            g.det(img, c, g.jitter(box, 0.2), s)
            g.det(img, c, g.jitter(box, 0.05), s)
        for _ in range(int(g.rng.integers(0, 3))):
            g.det(img, int(g.rng.choice(cats)), g.rand_box(640, 480), float(g.rng.choice(levels)))
    return g.dataset(cats), g.dets


def case_sizes():
    """Tiny and huge boxes, area-range boundaries, area != w*h, boxes outside the image."""
    g = Gen(6)
    cats = [1, 2]
    img = g.image(1)
    # exact boundary areas (32^2 and 96^2 are in both neighbouring ranges)
    g.gt(img, 1, [10.0, 10.0, 32.0, 32.0])
    g.det(img, 1, [10.0, 10.0, 32.0, 32.0], 0.9)
    g.gt(img, 1, [100.0, 100.0, 96.0, 96.0])
    g.det(img, 1, [101.0, 101.0, 96.0, 96.0], 0.8)
    g.gt(img, 1, [300.0, 10.0, 16.0, 64.0])  # area 1024, non-square
    g.det(img, 1, [300.0, 12.0, 16.0, 64.0], 0.7)
    # tiny boxes
    g.gt(img, 2, [5.0, 5.0, 1.0, 1.0])
    g.det(img, 2, [5.0, 5.0, 1.0, 1.0], 0.6)
    g.gt(img, 2, [20.0, 20.0, 0.5, 0.25])
    g.det(img, 2, [20.1, 20.0, 0.5, 0.25], 0.5)
    # zero-width GT and det
    g.gt(img, 2, [40.0, 40.0, 0.0, 10.0])
    g.det(img, 2, [40.0, 40.0, 0.0, 10.0], 0.4)
    # area field differs from w*h (e.g. segmentation area): large box, small area
    img = g.image(2)
    g.gt(img, 1, [0.0, 0.0, 200.0, 200.0], area=900.0)
    g.det(img, 1, [2.0, 2.0, 198.0, 199.0], 0.95)
    g.gt(img, 1, [300.0, 300.0, 20.0, 20.0], area=20000.0)
    g.det(img, 1, [300.0, 300.0, 21.0, 20.0], 0.85)
    # huge and partly outside the image
    img = g.image(3)
    g.gt(img, 2, [-100.0, -50.0, 2000.0, 1500.0])
    g.det(img, 2, [-90.0, -40.0, 1900.0, 1450.0], 0.99)
    g.gt(img, 2, [600.0, 400.0, 200.0, 200.0])
    g.det(img, 2, [590.0, 410.0, 210.0, 180.0], 0.4)
    g.det(img, 2, [-5.0, -5.0, 20.0, 20.0], 0.3)  # small FP partly outside
    # detections whose own area is out of range but would be unmatched
    g.det(img, 1, [0.0, 0.0, 3000.0, 3000.0], 0.2)
    g.det(img, 1, [0.0, 0.0, 3.0, 3.0], 0.2)
    # random mixture of sizes
    for i in range(4, 40):
        img = g.image(i, 800, 600)
        for _ in range(int(g.rng.integers(1, 6))):
            c = int(g.rng.choice(cats))
            size = str(g.rng.choice(["small", "medium", "large", "huge"]))
            box = g.rand_box(800, 600, size)
            g.gt(img, c, box)
            if g.rng.random() < 0.8:
                g.det(img, c, g.jitter(box, 0.1))
        for _ in range(2):
            g.det(img, int(g.rng.choice(cats)), g.rand_box(800, 600, "small"))
    return g.dataset(cats), g.dets


def case_duplicates():
    """Several detections per GT (identical and near-identical boxes)."""
    g = Gen(7)
    cats = [1, 2, 3]
    for i in range(1, 31):
        img = g.image(i)
        for _ in range(int(g.rng.integers(1, 5))):
            c = int(g.rng.choice(cats))
            box = g.rand_box(640, 480)
            g.gt(img, c, box)
            for _ in range(int(g.rng.integers(1, 5))):
                if g.rng.random() < 0.4:
                    g.det(img, c, list(box))
                else:
                    g.det(img, c, g.jitter(box, 0.04))
    return g.dataset(cats), g.dets


def case_iou_ties():
    """Detections with exactly equal IoU to two GTs: the first GT in (ignore-sorted)
    order wins, which decides what later detections can match."""
    g = Gen(14)
    cats = [1]
    for i in range(1, 16):
        img = g.image(i, 1000, 1000)
        ox, oy = float(g.rng.integers(0, 400)), float(g.rng.integers(0, 400))
        sz = float(g.rng.choice([20, 40, 100, 200]))
        sh = float(g.rng.choice([0.1, 0.2, 0.3])) * sz
        # A and B symmetric around D1: IoU(D1, A) == IoU(D1, B) exactly
        g.gt(img, 1, [ox, oy, sz, sz])
        g.gt(img, 1, [ox + 2 * sh, oy, sz, sz])
        g.det(img, 1, [ox + sh, oy, sz, sz], 0.9)
        # D2 sits on B (or on A): it only finds a match if D1 took the other one
        target = ox + 2 * sh if i % 2 else ox
        g.det(img, 1, [target, oy, sz, sz], 0.8)
        # identical GT boxes whose `area` puts them in different ranges
        g.gt(img, 1, [600.0, 600.0, 50.0, 50.0], area=float(g.rng.choice([500.0, 2000.0, 20000.0])))
        g.gt(img, 1, [600.0, 600.0, 50.0, 50.0], area=float(g.rng.choice([500.0, 2000.0, 20000.0])))
        g.det(img, 1, [601.0, 600.0, 50.0, 50.0], 0.7)
    return g.dataset(cats), g.dets


def case_many_dets():
    """More than 100 detections on an image (top-100 truncation, AR@1/10/100)."""
    g = Gen(8)
    cats = [1, 2]
    img = g.image(1, 1024, 1024)
    for _ in range(150):
        box = g.rand_box(1024, 1024, "any")
        g.gt(img, 1, box)
        g.det(img, 1, g.jitter(box, 0.05))
        if g.rng.random() < 0.5:
            g.det(img, 1, g.rand_box(1024, 1024))
    img = g.image(2, 1024, 1024)
    for _ in range(30):
        box = g.rand_box(1024, 1024)
        g.gt(img, 1, box)
        g.gt(img, 2, g.jitter(box, 0.3))
    for _ in range(130):
        g.det(img, int(g.rng.choice(cats)), g.rand_box(1024, 1024))
    for i in range(3, 13):
        img = g.image(i)
        for _ in range(int(g.rng.integers(5, 20))):
            c = int(g.rng.choice(cats))
            box = g.rand_box(640, 480)
            g.gt(img, c, box)
            g.det(img, c, g.jitter(box, 0.1))
    return g.dataset(cats), g.dets


def case_no_detections():
    """GT but an empty results list (pycocotools' loadRes cannot load [])."""
    g = Gen(9)
    cats = [1, 2]
    random_scene(g, 10, cats)
    return g.dataset(cats), []


def case_no_gt():
    """Images and categories but no annotations at all: everything is -1."""
    g = Gen(10)
    cats = [1, 2]
    for i in range(1, 6):
        img = g.image(i)
        for _ in range(3):
            g.det(img, int(g.rng.choice(cats)), g.rand_box(640, 480))
    return g.dataset(cats), g.dets


def case_small_and_crowd_only():
    """Only small GTs, one category only crowd: APm/APl/ARm/ARl and that category are -1."""
    g = Gen(11)
    cats = [1, 2, 3]
    for i in range(1, 21):
        img = g.image(i)
        for _ in range(int(g.rng.integers(1, 4))):
            c = int(g.rng.choice([1, 2]))
            box = g.rand_box(640, 480, "small")
            box[2], box[3] = min(box[2], 30.0), min(box[3], 30.0)
            g.gt(img, c, box)
            g.det(img, c, g.jitter(box, 0.1))
        box = g.rand_box(640, 480, "small")
        box[2], box[3] = min(box[2], 30.0), min(box[3], 30.0)
        g.gt(img, 3, box, iscrowd=1)
        g.det(img, 3, g.jitter(box, 0.1))
    # medium/large detections that match nothing (ignored in the medium/large ranges? no GT there)
    g.det(1, 1, [100.0, 100.0, 80.0, 80.0], 0.99)
    g.det(2, 2, [100.0, 100.0, 300.0, 300.0], 0.98)
    return g.dataset(cats), g.dets


def case_perfect():
    """Detections identical to the GT: every defined metric is 1."""
    g = Gen(12)
    cats = [1, 2, 3]
    for i in range(1, 21):
        img = g.image(i)
        for _ in range(int(g.rng.integers(1, 6))):
            c = int(g.rng.choice(cats))
            box = g.rand_box(640, 480, str(g.rng.choice(["small", "medium", "large"])))
            g.gt(img, c, box)
            g.det(img, c, list(box))
    return g.dataset(cats), g.dets


def case_quirks():
    """Odd-but-valid inputs: GT id 0, duplicate GT ids, duplicate/unsorted image ids,
    iscrowd as a bool, an `ignore` field (overwritten by pycocotools), integer scores."""
    g = Gen(13)
    cats = [7, 3]
    g.image(50)
    g.image(-4)
    g.image(7)
    g.image(50)  # duplicate image entry
    # GT with id 0: pycocotools counts a detection matched to it as a false positive
    g.gt(50, 7, [10.0, 10.0, 50.0, 50.0], ann_id=0)
    g.det(50, 7, [11.0, 10.0, 50.0, 50.0], 0.9)
    g.gt(50, 7, [200.0, 200.0, 40.0, 40.0])
    g.det(50, 7, [200.0, 201.0, 40.0, 40.0], 1)  # integer score
    # duplicate annotation ids: pycocotools' loadAnns resolves both to the last one
    g.gt(-4, 3, [10.0, 10.0, 100.0, 100.0], ann_id=500)
    g.gt(-4, 3, [300.0, 300.0, 100.0, 100.0], ann_id=500)
    g.det(-4, 3, [10.0, 10.0, 100.0, 100.0], 0.8)
    g.det(-4, 3, [300.0, 300.0, 100.0, 100.0], 0.7)
    g.det(-4, 3, [301.0, 300.0, 100.0, 100.0], 0.6)
    # iscrowd given as a JSON bool
    g.gt(7, 3, [0.0, 0.0, 300.0, 300.0], iscrowd=True)
    g.det(7, 3, [10.0, 10.0, 30.0, 30.0], 0.5)
    g.det(7, 3, [50.0, 50.0, 30.0, 30.0], 0)
    # `ignore: 1` on a normal GT: pycocotools overwrites it with iscrowd
    g.gt(7, 7, [400.0, 10.0, 60.0, 60.0], ignore=1)
    g.det(7, 7, [400.0, 12.0, 60.0, 60.0], 0.4)
    # integer coordinates
    g.gt(7, 7, [100, 300, 64, 32])
    g.det(7, 7, [101, 300, 64, 32], 0.45)
    return g.dataset(cats), g.dets


CASES = [
    ("random_small", case_random_small),
    ("random_medium", case_random_medium),
    ("crowd", case_crowd),
    ("empty_and_missing", case_empty_and_missing),
    ("tied_scores", case_tied_scores),
    ("sizes", case_sizes),
    ("duplicates", case_duplicates),
    ("iou_ties", case_iou_ties),
    ("many_dets", case_many_dets),
    ("no_detections", case_no_detections),
    ("no_gt", case_no_gt),
    ("small_and_crowd_only", case_small_and_crowd_only),
    ("perfect", case_perfect),
    ("quirks", case_quirks),
]


# ----------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------


def run_cocoeval(gt_path, dt_path):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_path)
        with open(dt_path) as f:
            dets = json.load(f)
        if dets:
            coco_dt = coco_gt.loadRes(dt_path)
        else:
            # loadRes indexes anns[0]; build the (empty) result set it would make.
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(coco_gt.dataset["images"]),
                "categories": list(coco_gt.dataset["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.summarize()
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith(" Average")]
    assert len(lines) == 12, lines

    p = ev.params
    aind = p.areaRngLbl.index("all")
    mind = p.maxDets.index(100)
    per_cat = []
    for k, cat_id in enumerate(p.catIds):
        s = ev.eval["precision"][:, :, k, aind, mind]
        ap = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
        per_cat.append({"category_id": int(cat_id), "ap": ap})
    return [float(x) for x in ev.stats], per_cat, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    os.makedirs(out, exist_ok=True)

    p = COCOeval(iouType="bbox").params
    reference = {
        "generator": "tools/gen_coco_reference.py",
        "pycocotools_version": getattr(pycocotools, "__version__", "unknown"),
        "numpy_version": np.__version__,
        "iou_thrs": [float(x) for x in p.iouThrs],
        "rec_thrs": [float(x) for x in p.recThrs],
        "cases": [],
    }
    total = 0
    for name, fn in CASES:
        gt, dets = fn()
        gt_file, dt_file = f"{name}_gt.json", f"{name}_dt.json"
        for fname, obj in ((gt_file, gt), (dt_file, dets)):
            path = os.path.join(out, fname)
            with open(path, "w") as f:
                json.dump(obj, f, separators=(",", ":"))
                f.write("\n")
            total += os.path.getsize(path)
        stats, per_cat, lines = run_cocoeval(os.path.join(out, gt_file), os.path.join(out, dt_file))
        reference["cases"].append(
            {
                "name": name,
                "gt": gt_file,
                "dt": dt_file,
                "num_images": len(gt["images"]),
                "num_gt": len(gt["annotations"]),
                "num_dt": len(dets),
                "stats": stats,
                "per_category": per_cat,
                "summary_lines": lines,
            }
        )
        print(f"{name:22s} imgs={len(gt['images']):4d} gt={len(gt['annotations']):5d} "
              f"dt={len(dets):5d} AP={stats[0]:.4f} AP50={stats[1]:.4f} AR100={stats[8]:.4f}")
    ref_path = os.path.join(out, "reference.json")
    with open(ref_path, "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    total += os.path.getsize(ref_path)
    print(f"wrote {len(CASES)} cases to {out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
