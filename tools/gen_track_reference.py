#!/usr/bin/env python3
"""Reference fixtures for crates/rtdetr-track (ByteTrack): synthetic detection
sequences run through supervision's `sv.ByteTrack`, written as small JSON files under
crates/rtdetr-track/tests/data/. The Rust test `tests/reference.rs` replays each file and
asserts identical track ids, output order and detection indices, and boxes within 1e-3 px.

Reference: supervision 0.30.9 `sv.ByteTrack` (MIT; the last release that ships it; a
faithful port of the ByteTrack authors' tracker: (cx, cy, aspect, h) Kalman filter,
score-fused IoU, three association stages). We call its `update_with_tensors`, which is
the tracker itself (`update_with_detections` only adds an IoU re-match back onto the
input detections). Dev-only:

    /work/pyenv/bin/pip install supervision==0.30.9
    /work/pyenv/bin/python tools/gen_track_reference.py            # writes the fixtures
    /work/pyenv/bin/python tools/gen_track_reference.py --check    # regenerates in memory, diffs

What the generator adds around the reference, each stated in the fixture's
"reference_extensions" when used:

* detection index / class of an output track: every detection in a frame gets a distinct
  f32 score (multiples of 1/256), and an output track's `score` is the score of the
  detection it was matched to in that frame, so the index is recovered exactly.
* "class_gate": class-aware matching = the reference with its `matching.iou_distance`
  wrapped so that a pair of different classes gets distance 1.0 (IoU 0), which no
  threshold below 1 accepts. A track's class is the class of the detection that started it.
* "frame_gap": frames that were never seen (frame index jumps by g+1) = the reference's
  frame counter advanced by g and `STrack.multi_predict` run g extra times on the pool
  the next update would predict (confirmed tracked + lost). Lost-time is counted in frames.
* "sorted_unmatched": supervision returns unmatched rows/columns as `tuple(set(...))`,
  whose order is CPython's set layout (not sorted once an index reaches the set's table
  size, e.g. (9, 3)). That order decides the order new tracks are numbered in. The
  authors' ByteTrack (lap.lapjv + np.where) returns them ascending, as the Rust crate
  does. Every fixture is run both ways; the file records whether the unpatched
  reference gave exactly the same answers ("unpatched_identical").
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
import supervision as sv  # noqa: E402
from supervision.tracker.byte_tracker import core as sv_core  # noqa: E402
from supervision.tracker.byte_tracker import matching  # noqa: E402
from supervision.tracker.byte_tracker.single_object_track import STrack  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent.parent / "crates" / "rtdetr-track" / "tests" / "data"
REFERENCE = f"supervision {sv.__version__} sv.ByteTrack (update_with_tensors)"
W, H = 640, 480

# ---------------------------------------------------------------------------------------
# Synthetic scenes
# ---------------------------------------------------------------------------------------


def q4(x: float) -> float:
    """Quarter pixels: exact in f32 and short in JSON."""
    return round(x * 4.0) / 4.0


class Obj:
    def __init__(self, cls, start, end, c0, v, size, score=0.85, hidden=(), score_at=None,
                 accel=(0.0, 0.0), grow=0.0):
        self.cls, self.start, self.end = cls, start, end
        self.c0, self.v, self.size, self.accel, self.grow = c0, v, size, accel, grow
        self.score, self.hidden, self.score_at = score, set(hidden), score_at

    def det(self, t, rng, jitter):
        if t < self.start or t > self.end or t in self.hidden:
            return None
        k = t - self.start
        cx = self.c0[0] + self.v[0] * k + 0.5 * self.accel[0] * k * k
        cy = self.c0[1] + self.v[1] * k + 0.5 * self.accel[1] * k * k
        w = self.size[0] * (1.0 + self.grow * k) * (1.0 + rng.uniform(-0.02, 0.02))
        h = self.size[1] * (1.0 + self.grow * k) * (1.0 + rng.uniform(-0.02, 0.02))
        x1 = cx - w / 2 + rng.uniform(-jitter, jitter)
        y1 = cy - h / 2 + rng.uniform(-jitter, jitter)
        x2 = cx + w / 2 + rng.uniform(-jitter, jitter)
        y2 = cy + h / 2 + rng.uniform(-jitter, jitter)
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(W), x2), min(float(H), y2)
        if x2 - x1 < 3 or y2 - y1 < 3:
            return None  # left the image
        s = self.score_at(k) if self.score_at else self.score + rng.uniform(-0.06, 0.06)
        return [q4(x1), q4(y1), q4(x2), q4(y2), s, self.cls]


def render(objs, frames, seed, jitter=1.5, false_pos=0.0, fp_cls=(0,)):
    """-> list of (frame_index, [[x1, y1, x2, y2, score, cls], ...]) in a shuffled order."""
    rng = random.Random(seed)
    out = []
    for t in frames:
        dets = [d for o in objs if (d := o.det(t, rng, jitter)) is not None]
        if false_pos and rng.random() < false_pos:
            w, h = rng.uniform(20, 60), rng.uniform(20, 60)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            dets.append([q4(x), q4(y), q4(x + w), q4(y + h), rng.uniform(0.3, 0.6),
                         rng.choice(fp_cls)])
        rng.shuffle(dets)
        unique_scores(dets)
        out.append((t, dets))
    return out


def unique_scores(dets):
    """Scores on a 1/256 grid in [1/256, 255/256], distinct within the frame."""
    seen = set()
    for d in dets:
        if not isinstance(d[4], float) or not math.isfinite(d[4]):
            continue
        k = min(255, max(1, round(d[4] * 256)))
        while k in seen:
            k = k + 1 if k < 255 else 1
        seen.add(k)
        d[4] = k / 256.0


def scene_crossing():
    objs = [
        Obj(0, 0, 49, (60, 220), (8.5, 0.3), (50, 120), score=0.88),
        Obj(0, 0, 49, (580, 235), (-8.0, -0.2), (55, 125), score=0.84,
            score_at=lambda k: 0.4 if 27 <= k <= 33 else 0.82 + 0.05 * math.sin(k)),
        Obj(0, 3, 49, (330, 40), (0.2, 6.5), (45, 100), score=0.9, hidden=(30, 31)),
    ]
    return render(objs, range(50), seed=11)


def scene_occlusion():
    # lost_track_buffer=10 at 30 fps: a lost track is dropped 11 frames after its last
    # update, and (a quirk of the reference kept here) can still be re-found one frame later.
    objs = [
        Obj(0, 0, 55, (80, 100), (4.0, 0.5), (40, 90), hidden=range(15, 23)),   # 8 missing frames
        Obj(1, 0, 55, (500, 300), (-3.0, 0.0), (70, 50), hidden=range(20, 41)),  # too long: new id
        Obj(0, 0, 55, (300, 380), (2.0, -1.0), (40, 80), hidden=range(25, 36)),  # 11 missing: re-found
        Obj(2, 0, 55, (150, 420), (1.0, -2.0), (60, 40), hidden=range(30, 42)),  # 12 missing: new id
    ]
    return render(objs, range(56), seed=12, jitter=1.0)


def scene_low_score():
    def dip(k):  # below the high threshold for 6 frames: the second association keeps it
        return 0.18 + 0.01 * (k % 3) if 12 <= k <= 17 else 0.8

    def vanish(k):  # below 0.1 (ignored) for 3 frames: lost, then re-found from the lost pool
        return 0.05 if 20 <= k <= 22 else 0.7

    def late(k):  # >= 0.25 (high) but < 0.35 (new-track threshold) until frame 10
        return 0.3 if k < 10 else 0.6

    objs = [
        Obj(0, 0, 39, (100, 200), (3.0, 0.0), (50, 110), score_at=dip),
        Obj(0, 0, 39, (400, 150), (-2.5, 1.0), (60, 120), score_at=vanish),
        Obj(1, 0, 39, (250, 400), (2.0, -1.5), (80, 50), score_at=late),
        Obj(2, 5, 39, (550, 420), (-1.0, -1.0), (40, 40), score_at=lambda k: 0.2),  # never tracked
        Obj(0, 0, 39, (320, 60), (0.0, 2.0), (30, 60), score_at=lambda k: 0.12 if k >= 8 else 0.9),
    ]
    return render(objs, range(34), seed=13)


def scene_enter_leave():
    objs = []
    rng = random.Random(14)
    for i in range(8):
        start = rng.randrange(0, 30)
        speed = rng.uniform(6, 14)
        y = rng.uniform(60, 420)
        left = i % 2 == 0
        c0 = (-20.0, y) if left else (W + 20.0, y)
        v = (speed if left else -speed, rng.uniform(-1, 1))
        objs.append(Obj(i % 3, start, start + 80, c0, v, (rng.uniform(30, 70), rng.uniform(40, 100)),
                        score=rng.uniform(0.55, 0.9)))
    return render(objs, range(40), seed=15, false_pos=0.3, fp_cls=(0, 1, 2))


def scene_multiclass():
    # A car (class 2) drops out for 10 frames; meanwhile a person (0) appears where the car's
    # lost track is predicted to be: class-agnostic matching gives the person the car's id
    # (and the car a new one when it comes back), class-aware matching cannot. Plus a
    # bicycle (1) under its rider (0) with nearly the same box.
    objs = [
        Obj(2, 0, 44, (80, 250), (9.0, 0.0), (90, 60), score=0.85, hidden=range(20, 30)),
        Obj(0, 23, 44, (300, 250), (1.0, 0.0), (40, 90), score=0.8),
        Obj(0, 0, 44, (300, 100), (1.5, 0.5), (50, 90), score=0.9),
        Obj(1, 0, 44, (300, 105), (1.5, 0.5), (52, 88), score=0.7),
        Obj(3, 10, 44, (100, 400), (4.0, -2.0), (30, 30), score=0.6),
    ]
    return render(objs, range(45), seed=16)


def scene_dropped_frames():
    # fast objects (12 px/frame, 40 px wide): without predicting through the gaps
    # the boxes no longer overlap their tracks after 3 dropped frames.
    objs = [
        Obj(0, 0, 59, (40, 120), (12.0, 0.0), (40, 80), score=0.9),
        Obj(1, 0, 59, (600, 300), (-11.0, 1.0), (45, 45), score=0.8),
        Obj(0, 5, 59, (200, 440), (3.0, -6.0), (35, 70), score=0.85),
    ]
    frames = [t for t in range(60) if t not in (10, 11, 12, 25, 31, 32, 33, 34)]
    return render(objs, frames, seed=17, jitter=1.0)


def scene_crowd(seed, n=14, frames=50):
    rng = random.Random(seed)
    objs = []
    for i in range(n):
        start = rng.randrange(0, 10)
        c0 = (rng.uniform(40, W - 40), rng.uniform(40, H - 40))
        v = (rng.uniform(-5, 5), rng.uniform(-4, 4))
        hidden = set()
        for _ in range(rng.randrange(0, 3)):
            a = rng.randrange(0, frames)
            hidden |= set(range(a, a + rng.randrange(1, 6)))
        base = rng.uniform(0.3, 0.95)
        objs.append(Obj(rng.randrange(0, 4), start, frames, c0, v,
                        (rng.uniform(25, 70), rng.uniform(25, 90)), score=base,
                        hidden=hidden, accel=(rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)),
                        grow=rng.uniform(-0.004, 0.004)))
    return render(objs, range(frames), seed=seed + 1, jitter=2.0, false_pos=0.4,
                  fp_cls=(0, 1, 2, 3))


def scene_duplicates():
    # Double detections (boxes 1 px apart, IoU ~0.97): when one of a pair goes missing its
    # lost track sits on the other's box and is de-duplicated (the younger is dropped), so
    # it comes back with a new id. Pair 1 is one class, pair 2 two classes (class-aware
    # de-duplication leaves pair 2 alone).
    objs = [
        Obj(0, 0, 27, (150, 200), (3.0, 0.5), (60, 120), score=0.9),
        Obj(0, 0, 27, (151, 200), (3.0, 0.5), (60, 120), score=0.6, hidden=range(10, 15)),
        Obj(1, 0, 27, (450, 250), (-2.0, 0.0), (80, 60), score=0.85),
        Obj(2, 0, 27, (451, 250), (-2.0, 0.0), (80, 60), score=0.55, hidden=range(12, 16)),
    ]
    return render(objs, range(28), seed=19, jitter=0.25)


def scene_invalid():
    objs = [
        Obj(0, 0, 29, (100, 100), (3.0, 1.0), (40, 80), score=0.9),
        Obj(1, 0, 29, (400, 300), (-2.0, 0.0), (60, 40), score=0.8),
    ]
    frames = render(objs, range(30), seed=18)
    nan, inf = float("nan"), float("inf")
    bad = [
        [nan, 10.0, 50.0, 60.0, 0.9, 0],
        [10.0, 10.0, inf, 60.0, 0.8, 0],
        [200.0, 200.0, 200.0, 260.0, 0.7, 1],   # zero width
        [300.0, 50.0, 250.0, 90.0, 0.7, 1],     # negative width
        [20.0, 300.0, 60.0, 340.0, nan, 0],     # NaN score
        [-inf, 0.0, 10.0, 10.0, 0.6, 0],
    ]
    for i, (t, dets) in enumerate(frames):
        if i % 3 == 0:
            dets.insert(i % (len(dets) + 1), list(bad[(i // 3) % len(bad)]))
    return frames


# ---------------------------------------------------------------------------------------
# Running the reference
# ---------------------------------------------------------------------------------------

DEFAULTS = dict(track_activation_threshold=0.25, lost_track_buffer=30,
                minimum_matching_threshold=0.8, frame_rate=30.0, minimum_consecutive_frames=1)


def _sorted_indices_to_matches(cost_matrix, indices, thresh):
    matched_cost = cost_matrix[tuple(zip(*indices))]
    matched_mask = matched_cost <= thresh
    matches = indices[matched_mask]
    unmatched_a = tuple(sorted(set(range(cost_matrix.shape[0])) - set(matches[:, 0].tolist())))
    unmatched_b = tuple(sorted(set(range(cost_matrix.shape[1])) - set(matches[:, 1].tolist())))
    return matches, unmatched_a, unmatched_b


def run_reference(frames, params, class_aware, sorted_unmatched):
    tracker = sv.ByteTrack(**params)
    orig_iou_distance = matching.iou_distance
    orig_indices_to_matches = matching.indices_to_matches
    track_class: dict[int, int] = {}   # internal_track_id -> class (class-aware mode)
    frame_class: dict[float, int] = {}  # this frame's score -> class
    prev_index = None
    out = []

    def class_of(st):
        if st.internal_track_id in track_class:
            return track_class[st.internal_track_id]
        return frame_class[float(st.score)]

    def gated_iou_distance(a, b):
        d = orig_iou_distance(a, b)
        if d.size == 0:
            return d
        ca = np.array([class_of(t) for t in a])
        cb = np.array([class_of(t) for t in b])
        d = d.copy()
        d[ca[:, None] != cb[None, :]] = 1.0
        return d

    try:
        if class_aware:
            matching.iou_distance = gated_iou_distance
        if sorted_unmatched:
            matching.indices_to_matches = _sorted_indices_to_matches
        for index, dets in frames:
            if prev_index is not None and index - prev_index > 1:
                gap = index - prev_index - 1
                tracker.frame_id += gap
                pool = sv_core.joint_tracks([t for t in tracker.tracked_tracks if t.is_activated],
                                            tracker.lost_tracks)
                for _ in range(gap):
                    STrack.multi_predict(pool, tracker.shared_kalman)
            prev_index = index
            arr = np.array([d[:5] for d in dets], dtype=np.float32).reshape(-1, 5)
            valid = np.isfinite(arr).all(axis=1) & (arr[:, 2] - arr[:, 0] > 0) & (arr[:, 3] - arr[:, 1] > 0)
            score_index = {float(arr[i, 4]): i for i in range(len(dets)) if valid[i]}
            assert len(score_index) == int(valid.sum()), "scores must be distinct within a frame"
            frame_class.clear()
            frame_class.update({s: dets[i][5] for s, i in score_index.items()})
            tracks = tracker.update_with_tensors(arr)
            for t in tracker.tracked_tracks + tracker.lost_tracks:
                if t.internal_track_id not in track_class:
                    track_class[t.internal_track_id] = frame_class[float(t.score)]
            rows = []
            for t in tracks:
                i = score_index[float(np.float32(t.score))]
                rows.append([int(t.external_track_id), i] + [round(float(v), 4) for v in t.tlbr])
            out.append(rows)
    finally:
        matching.iou_distance = orig_iou_distance
        matching.indices_to_matches = orig_indices_to_matches
    return out


def json_num(x):
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x == int(x) and abs(x) < 1e15:
            return int(x)
    return x


def fixture(name, description, frames, params=None, class_aware=False):
    params = {**DEFAULTS, **(params or {})}
    sorted_out = run_reference(frames, params, class_aware, sorted_unmatched=True)
    plain_out = run_reference(frames, params, class_aware, sorted_unmatched=False)
    ext = ["detection_index_from_score", "sorted_unmatched"]
    if class_aware:
        ext.append("class_gate")
    idx = [t for t, _ in frames]
    if any(b - a > 1 for a, b in zip(idx, idx[1:])):
        ext.append("frame_gap")
    return {
        "name": name,
        "description": description,
        "reference": REFERENCE,
        "reference_extensions": ext,
        "unpatched_identical": sorted_out == plain_out,
        "params": {**params, "class_aware": class_aware},
        "frames": [
            {"frame": t, "dets": [[json_num(v) for v in d] for d in dets], "tracks": rows}
            for (t, dets), rows in zip(frames, sorted_out)
        ],
    }


def all_fixtures():
    yield fixture("crossing", "three people crossing; one partly occluded (low score) at the crossing",
                  scene_crossing(), class_aware=False)
    yield fixture("occlusion", "objects missing 8, 11 (re-found at the edge of the buffer), 12 and 21 "
                  "frames with lost_track_buffer=10", scene_occlusion(), {"lost_track_buffer": 10})
    yield fixture("low_score", "score dips below the high threshold, below 0.1, a late start "
                  "between 0.25 and 0.35, a low-score-only object", scene_low_score())
    yield fixture("enter_leave", "eight objects entering and leaving at the edges, false positives",
                  scene_enter_leave())
    yield fixture("multiclass_agnostic", "car and person crossing, rider over bicycle; class-agnostic",
                  scene_multiclass(), class_aware=False)
    yield fixture("multiclass_aware", "car and person crossing, rider over bicycle; class-aware",
                  scene_multiclass(), class_aware=True)
    yield fixture("dropped_frames", "fast objects; frames 10-12, 25 and 31-34 never seen",
                  scene_dropped_frames())
    yield fixture("params", "non-default parameters: 15 fps, activation 0.5, matching 0.7, "
                  "3 consecutive frames to confirm", scene_crowd(21, n=10, frames=28),
                  {"frame_rate": 15.0, "track_activation_threshold": 0.5,
                   "minimum_matching_threshold": 0.7, "minimum_consecutive_frames": 3},
                  class_aware=True)
    yield fixture("duplicates_agnostic", "double detections, one of each pair missing for a while; "
                  "class-agnostic", scene_duplicates())
    yield fixture("duplicates_aware", "double detections, one of each pair missing for a while; "
                  "class-aware", scene_duplicates(), class_aware=True)
    yield fixture("invalid", "NaN / inf / zero- and negative-width boxes and a NaN score mixed in",
                  scene_invalid())
    yield fixture("crowd", "12 random movers with misses and false positives, class-aware",
                  scene_crowd(31, n=12, frames=32), class_aware=True)
    yield fixture("crowd_agnostic", "10 random movers with misses and false positives, "
                  "class-agnostic, lost_track_buffer=5", scene_crowd(41, n=10, frames=32), {"lost_track_buffer": 5})


def lsap_fixture():
    """scipy.optimize.linear_sum_assignment on small matrices with many ties (costs on a
    quarter grid), wide and tall: the Rust solver must return the same pairs."""
    from scipy.optimize import linear_sum_assignment
    import scipy

    rng = random.Random(99)
    cases = []
    for _ in range(48):
        r, c = rng.randrange(1, 7), rng.randrange(1, 7)
        m = [[rng.randrange(0, 5) / 4 for _ in range(c)] for _ in range(r)]
        rows, cols = linear_sum_assignment(np.array(m, dtype=np.float64))
        cases.append({"cost": [[json_num(v) for v in row] for row in m],
                      "pairs": [[int(a), int(b)] for a, b in zip(rows, cols)]})
    return {"name": "lsap", "reference": f"scipy {scipy.__version__} linear_sum_assignment",
            "cases": cases}


def dump(fx):
    return json.dumps(fx, separators=(",", ":")) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk")
    args = ap.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total, bad = 0, 0
    for fx in all_fixtures():
        path = OUT_DIR / f"{fx['name']}.json"
        text = dump(fx)
        total += len(text)
        n_tracks = len({r[0] for f in fx["frames"] for r in f["tracks"]})
        print(f"{path.name:26s} {len(fx['frames']):3d} frames {n_tracks:3d} ids "
              f"{len(text) / 1024:6.1f} KB unpatched_identical={fx['unpatched_identical']}")
        if args.check:
            if not path.exists() or path.read_text() != text:
                print(f"  differs from {path}")
                bad += 1
        else:
            path.write_text(text)
    fx = lsap_fixture()
    path = OUT_DIR / "lsap.json"
    text = dump(fx)
    total += len(text)
    print(f"{path.name:26s} {len(fx['cases'])} matrices {len(text) / 1024:6.1f} KB")
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"  differs from {path}")
            bad += 1
    else:
        path.write_text(text)
    print(f"total {total / 1024:.1f} KB")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
