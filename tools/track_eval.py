#!/usr/bin/env python3
"""Tracking quality of crates/rtdetr-track (ByteTrack) on RT-DETR detections.

Dev-only. Renders short clips of moving shapes with ground-truth identities (crossings,
an occluding band, objects entering and leaving; the shapes of tools/train_demo.py, which
the demo model models/shapes-demo detects), detects every frame with the already built
CLI (`target/release/rtdetr detect --json`), tracks the detections with our tracker
(`examples/track_jsonl.rs`, several settings) and with the reference (supervision 0.30.9
`sv.ByteTrack`), and scores all of them with TrackEval (HOTA, MOTA, IDF1, ID switches).

    /work/pyenv/bin/pip install supervision==0.30.9 trackeval==1.3.0
    CARGO_TARGET_DIR=/tmp/track-target cargo build --release -p rtdetr-track --examples
    /work/pyenv/bin/python tools/track_eval.py [--track-jsonl /tmp/track-target/release/examples/track_jsonl]

`--write-test-data crates/rtdetr-track/tests/data/track_metrics.json` also writes one clip's
ground truth and detections (`--test-clip`, default 0; boxes rounded to 0.01 px, scores to
1e-4, only scores above the tracker's `low_thresh` 0.1, which it ignores otherwise) with the
TrackEval figures of our tracker (defaults and two deliberately worse settings) and of the
reference on exactly those detections: `crates/rtdetr-track/tests/metrics.rs` recomputes HOTA,
MOTA, IDF1 and ID switches in Rust from them, without Python.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import train_demo as td  # noqa: E402

W, H, FRAMES = 640, 480, 150
MIN_VISIBLE = 0.3  # ground truth: at least this fraction of the shape visible


# ---------------------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------------------


class Shape:
    def __init__(self, rng, cls, size, p0, v, start=0, end=FRAMES - 1, bounce=False):
        self.cls, self.start, self.end, self.bounce = cls, start, end, bounce
        self.rel = td._shape_polygon(rng, cls, 0.0, 0.0, size)
        self.colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        self.p = list(p0)
        self.v = list(v)
        xs = [p[0] for p in self.rel]
        ys = [p[1] for p in self.rel]
        self.half = (max(xs) - min(xs)) / 2, (max(ys) - min(ys)) / 2
        # polygon area (shoelace): visibility = visible pixels / full area
        self.area = 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(self.rel, self.rel[1:] + self.rel[:1])))

    def step(self):
        for k, lim in ((0, W), (1, H)):
            self.p[k] += self.v[k]
            if self.bounce:
                lo, hi = self.half[k], lim - self.half[k]
                if self.p[k] < lo:
                    self.p[k], self.v[k] = 2 * lo - self.p[k], -self.v[k]
                elif self.p[k] > hi:
                    self.p[k], self.v[k] = 2 * hi - self.p[k], -self.v[k]

    def polygon(self):
        return [(self.p[0] + x, self.p[1] + y) for x, y in self.rel]


def clip_specs(seed):
    """(shapes, occluders) of clip `seed` (0: crossings, 1: occluding band, 2: busy)."""
    rng = np.random.default_rng([7, seed])
    occluders = []
    if seed == 0:
        shapes = [
            Shape(rng, 0, 70, (60, 200), (3.5, 0.2)),
            Shape(rng, 0, 70, (580, 215), (-3.5, 0.0)),   # crosses the first (same class)
            Shape(rng, 2, 90, (320, 40), (0.0, 2.6)),
            Shape(rng, 4, 80, (150, 380), (2.5, -0.3)),
            Shape(rng, 3, 80, (600, 380), (-2.8, -0.2)),  # crosses the star
        ]
    elif seed == 1:
        occluders = [(260, 0, 380, H)]
        shapes = [
            Shape(rng, 1, 90, (40, 120), (3.0, 0.3)),
            Shape(rng, 0, 60, (600, 250), (-2.5, 0.0)),
            Shape(rng, 3, 70, (100, 400), (3.2, -0.5)),
            Shape(rng, 4, 70, (-40, 320), (4.0, 0.0), start=40),  # enters left, leaves right
            Shape(rng, 2, 80, (520, 70), (-1.5, 0.4)),
        ]
    else:
        shapes = []
        for i in range(8):
            start = 0 if i < 5 else int(rng.integers(10, 60))
            end = FRAMES - 1 if i % 3 else int(rng.integers(90, FRAMES))
            size = rng.uniform(50, 100)
            ang = rng.uniform(0, 2 * math.pi)
            speed = rng.uniform(1.5, 4.0)
            shapes.append(Shape(rng, int(rng.integers(0, 5)), size,
                                (rng.uniform(80, W - 80), rng.uniform(80, H - 80)),
                                (speed * math.cos(ang), speed * math.sin(ang)), start, end, bounce=True))
    return rng, shapes, occluders


def render_clip(seed, out_dir):
    """Writes frame PNGs; returns ground truth per frame: [(gt_id, [x1, y1, x2, y2])]."""
    rng, shapes, occluders = clip_specs(seed)
    bg = td._distractors(rng, td._background(rng, W, H))
    band = [td._background(rng, x1 - x0, y1 - y0) * 0.6 + rng.normal(0, 25, (y1 - y0, x1 - x0, 3))
            for x0, y0, x1, y1 in occluders]
    gt = []
    for t in range(FRAMES):
        pil = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(pil)
        owner = np.full((H, W), -1, dtype=np.int16)
        masks = {}
        for i, s in enumerate(shapes):
            if s.start <= t <= s.end:
                poly = s.polygon()
                m = Image.new("L", (W, H), 0)
                ImageDraw.Draw(m).polygon(poly, fill=255)
                mask = np.asarray(m) > 0
                draw.polygon(poly, fill=s.colour)
                owner[mask] = i
                masks[i] = mask
        arr = np.asarray(pil).astype(np.float32)
        for (x0, y0, x1, y1), tex in zip(occluders, band):
            arr[y0:y1, x0:x1] = tex
            owner[y0:y1, x0:x1] = -1
        arr += rng.normal(0, 3.0, arr.shape)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(out_dir / f"{t:04d}.png")
        rows = []
        for i, mask in masks.items():
            vis = float((owner == i).sum()) / max(1.0, shapes[i].area)
            ys, xs = np.nonzero(mask)
            if vis >= MIN_VISIBLE and len(xs):
                rows.append((i, [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]))
        gt.append(rows)
        for s in shapes:
            if s.start <= t:
                s.step()
    return gt


def detect(cli, frames_dir):
    paths = sorted(frames_dir.glob("*.png"))
    cmd = [str(cli), "detect", "--model", str(ROOT / "models" / "shapes-demo"), "--json",
           "--threshold", "0.05", "--max-detections", "100", "--batch-size", "8"] + [str(p) for p in paths]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    by_image = {}
    for line in out.splitlines():
        v = json.loads(line)
        by_image[v["image"]] = v
    return [by_image[str(p)] for p in paths]


# ---------------------------------------------------------------------------------------
# Trackers
# ---------------------------------------------------------------------------------------


def run_ours(exe, det_lines, args):
    text = "".join(json.dumps(v) + "\n" for v in det_lines)
    out = subprocess.run([str(exe)] + args, input=text, check=True, capture_output=True, text=True).stdout
    res = []
    for line in out.splitlines():
        v = json.loads(line)
        res.append([(t["track_id"], [t["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]) for t in v["tracks"]])
    return res


def run_reference(det_lines, track_thresh, match_thresh, sorted_unmatched=False):
    """sv.ByteTrack; `sorted_unmatched`: with unmatched indices in ascending order instead of
    Python set order (see tools/gen_track_reference.py)."""
    warnings.filterwarnings("ignore")
    import supervision as sv
    from supervision.tracker.byte_tracker import matching

    import gen_track_reference

    original = matching.indices_to_matches
    if sorted_unmatched:
        matching.indices_to_matches = gen_track_reference._sorted_indices_to_matches
    try:
        return _run_reference(sv, det_lines, track_thresh, match_thresh)
    finally:
        matching.indices_to_matches = original


def _run_reference(sv, det_lines, track_thresh, match_thresh):
    tracker = sv.ByteTrack(track_activation_threshold=track_thresh, lost_track_buffer=30,
                           minimum_matching_threshold=match_thresh, frame_rate=30, minimum_consecutive_frames=1)
    res = []
    for v in det_lines:
        arr = np.array([[d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] + [d["score"]]
                        for d in v["detections"]], dtype=np.float32).reshape(-1, 5)
        tracks = tracker.update_with_tensors(arr)
        res.append([(int(t.external_track_id), [float(x) for x in t.tlbr]) for t in tracks])
    return res


def compare_runs(a, b, tol=1e-3):
    """(identical, same up to a consistent renumbering of ids, max box difference)."""
    exact = all([i for i, _ in fa] == [i for i, _ in fb] for fa, fb in zip(a, b))
    fwd, back, max_d, ok = {}, {}, 0.0, True
    for fa, fb in zip(a, b):
        if len(fa) != len(fb):
            return exact, False, float("inf")
        used = set()
        for ia, ba in fa:
            best = min(((max(abs(x - y) for x, y in zip(ba, bb)), k) for k, (_, bb) in enumerate(fb) if k not in used),
                       default=(float("inf"), -1))
            max_d = max(max_d, best[0])
            if best[1] < 0 or best[0] > tol:
                ok = False
                continue
            used.add(best[1])
            ib = fb[best[1]][0]
            if fwd.setdefault(ia, ib) != ib or back.setdefault(ib, ia) != ia:
                ok = False
    return exact, ok, max_d


def run_detector_only(det_lines, thresh):
    """No tracking: every detection above `thresh` gets a fresh id (a lower bound)."""
    res, nid = [], 0
    for v in det_lines:
        rows = []
        for d in v["detections"]:
            if d["score"] > thresh:
                nid += 1
                rows.append((nid, [d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]))
        res.append(rows)
    return res


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


def iou_matrix(a, b):
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = np.asarray(a, float), np.asarray(b, float)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    ab = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (aa[:, None] + ab[None, :] - inter)


def trackeval_data(gt, res):
    gt_map, tr_map = {}, {}
    data = {"num_timesteps": len(gt), "gt_ids": [], "tracker_ids": [], "similarity_scores": [],
            "num_gt_dets": 0, "num_tracker_dets": 0}
    for g, r in zip(gt, res):
        data["gt_ids"].append(np.array([gt_map.setdefault(i, len(gt_map)) for i, _ in g], dtype=int))
        data["tracker_ids"].append(np.array([tr_map.setdefault(i, len(tr_map)) for i, _ in r], dtype=int))
        data["similarity_scores"].append(iou_matrix([b for _, b in g], [b for _, b in r]))
        data["num_gt_dets"] += len(g)
        data["num_tracker_dets"] += len(r)
    data["num_gt_ids"], data["num_tracker_ids"] = len(gt_map), len(tr_map)
    return data


def score(gts, results):
    """TrackEval's HOTA, CLEAR and Identity over the clips (HOTA, MOTA, IDF1 in percent)."""
    from trackeval.metrics import CLEAR, HOTA, Identity

    metrics = [HOTA(), CLEAR({"PRINT_CONFIG": False}), Identity({"PRINT_CONFIG": False})]
    per_seq = [{m.get_name(): m.eval_sequence(trackeval_data(g, r)) for m in metrics} for g, r in zip(gts, results)]
    total = {m.get_name(): m.combine_sequences({k: s[m.get_name()] for k, s in enumerate(per_seq)}) for m in metrics}
    return {
        "HOTA": float(np.mean(total["HOTA"]["HOTA"])) * 100,
        "MOTA": float(total["CLEAR"]["MOTA"]) * 100,
        "IDF1": float(total["Identity"]["IDF1"]) * 100,
        "IDSW": int(total["CLEAR"]["IDSW"]),
        "FP": int(total["CLEAR"]["CLR_FP"]),
        "FN": int(total["CLEAR"]["CLR_FN"]),
        "TP": int(total["CLEAR"]["CLR_TP"]),
        "IDTP": int(total["Identity"]["IDTP"]),
        "IDFP": int(total["Identity"]["IDFP"]),
        "IDFN": int(total["Identity"]["IDFN"]),
        "ids": sum(len({i for f in r for i, _ in f}) for r in results),
    }


# Settings of the committed test clip: name -> track_jsonl flags (None: the reference,
# sv.ByteTrack at its defaults). The names are what tests/metrics.rs maps to configs.
TEST_SETTINGS = {
    "default": [],
    "reference": None,
    "track_buffer_1": ["--track-buffer", "1"],
    "match_thresh_0.1": ["--match-thresh", "0.1"],
}
LOW_THRESH = 0.1  # ByteTrackConfig's low_thresh: lower scores are ignored by every setting above


def write_test_data(path, clip, gt, det_lines, exe):
    """One clip, compact, with the TrackEval figures on exactly the detections written."""
    dets = []
    for v in det_lines:
        rows = []
        for d in v["detections"]:
            s = round(d["score"], 4)
            if s > LOW_THRESH:
                rows.append([round(d["box"][k], 2) for k in ("xmin", "ymin", "xmax", "ymax")] + [s, d["class_id"]])
        dets.append(rows)
    lines = [{"frame": t, "detections": [{"class_id": r[5], "score": r[4],
                                          "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), r[:4]))} for r in rows]}
             for t, rows in enumerate(dets)]
    figures = {}
    for name, flags in TEST_SETTINGS.items():
        res = run_reference(lines, 0.25, 0.8) if flags is None else run_ours(exe, lines, flags)
        figures[name] = score([gt], [res])
    import supervision
    import trackeval

    doc = {
        "about": f"clip {clip} of tools/track_eval.py ({FRAMES} frames, {W}x{H}): ground truth and the demo "
                 "model's detections (rtdetr detect --json --threshold 0.05; boxes rounded to 0.01 px, scores to "
                 f"1e-4, scores <= {LOW_THRESH} dropped), with TrackEval {trackeval.__version__} figures (HOTA, "
                 "MOTA, IDF1 in percent) of our tracker (track_jsonl flags per setting) and of supervision "
                 f"{supervision.__version__} sv.ByteTrack at its defaults on exactly these detections. "
                 "Written by tools/track_eval.py --write-test-data; checked by tests/metrics.rs.",
        "clip": clip,
        "settings": {name: flags for name, flags in TEST_SETTINGS.items()},
        "trackeval": figures,
        "gt": [[[i] + b for i, b in rows] for rows in gt],
        "dets": dets,
    }
    # one frame per line: small and diff-friendly
    text = json.dumps({k: v for k, v in doc.items() if k not in ("gt", "dets")}, indent=1)[:-2]
    for key in ("gt", "dets"):
        text += f',\n "{key}": [\n' + ",\n".join(json.dumps(f, separators=(",", ":")) for f in doc[key]) + "\n ]"
    Path(path).write_text(text + "\n}\n")
    assert json.loads(Path(path).read_text()) == json.loads(json.dumps(doc))
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cli", default=str(ROOT / "target" / "release" / "rtdetr"))
    ap.add_argument("--track-jsonl", default="/tmp/track-target/release/examples/track_jsonl")
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--json-out", help="write the table as JSON here")
    ap.add_argument("--cache", help="keep ground truth and detections in this JSON file (rendering and "
                    "detection take minutes; delete it to redo them)")
    ap.add_argument("--sweep", action="store_true", help="more threshold settings")
    ap.add_argument("--write-test-data", metavar="PATH", help="write one clip's ground truth, detections and "
                    "TrackEval figures here (for crates/rtdetr-track/tests/metrics.rs)")
    ap.add_argument("--test-clip", type=int, default=0, help="the clip --write-test-data writes (default 0)")
    args = ap.parse_args()
    for exe in (args.cli, args.track_jsonl):
        if not Path(exe).exists():
            sys.exit(f"error: {exe} not found (build it first)")

    gts, dets = [], []
    cache = Path(args.cache) if args.cache else None
    if cache and cache.exists():
        gts, dets = json.loads(cache.read_text())
        print(f"ground truth and detections from {cache}")
    with tempfile.TemporaryDirectory() as tmp:
        for c in range(len(gts), args.clips):
            d = Path(tmp) / f"clip{c}"
            d.mkdir()
            t0 = time.time()
            gts.append(render_clip(c, d))
            t1 = time.time()
            dets.append(detect(args.cli, d))
            print(f"clip {c}: {FRAMES} frames rendered in {t1 - t0:.1f} s, detected in {time.time() - t1:.1f} s, "
                  f"{sum(len(f) for f in gts[-1])} ground-truth boxes, "
                  f"{len({i for f in gts[-1] for i, _ in f})} identities", flush=True)
    if cache:
        cache.write_text(json.dumps([gts, dets]))
    gts, dets = gts[:args.clips], dets[:args.clips]

    settings = [("detector only, score > 0.5, no tracking", None)]
    settings += [("reference sv.ByteTrack (0.25, 0.8)", ("ref", 0.25, 0.8))]
    settings += [("reference sv.ByteTrack at our thresholds (0.5, 0.9)", ("ref", 0.5, 0.9))]
    grid = ((0.25, 0.4, 0.5, 0.6, 0.7), (0.7, 0.8, 0.9)) if args.sweep else ((0.25, 0.4, 0.5, 0.6), (0.8, 0.9))
    for cls_flag in (["--class-agnostic"], []):
        for tt in grid[0]:
            for mt in grid[1]:
                name = f"ours track {tt} match {mt} {'agnostic' if cls_flag else 'class-aware'}"
                if (tt, mt, cls_flag) == (0.5, 0.9, []):
                    name += " (default)"
                settings.append((name, ("ours", ["--track-thresh", str(tt), "--match-thresh", str(mt)] + cls_flag)))

    rows = []
    ref_out = None
    for name, how in settings:
        if how is None:
            results = [run_detector_only(d, 0.5) for d in dets]
        elif how[0] == "ref":
            results = [run_reference(d, how[1], how[2]) for d in dets]
            if how[1:] == (0.25, 0.8):
                ref_out = results
        else:
            results = [run_ours(args.track_jsonl, d, how[1]) for d in dets]
        m = score(gts, results)
        if how and how[0] == "ours" and how[1] == ["--track-thresh", "0.25", "--match-thresh", "0.8", "--class-agnostic"]:
            ref_sorted = [run_reference(d, 0.25, 0.8, sorted_unmatched=True) for d in dets]
            for c, (a, b, b2) in enumerate(zip(results, ref_out, ref_sorted)):
                exact, renumbered, max_d = compare_runs(a, b)
                exact2, _, max_d2 = compare_runs(a, b2)
                print(f"clip {c}: ours (class-agnostic, reference parameters) vs reference: ids identical: {exact}, "
                      f"same tracks up to a consistent renumbering: {renumbered}, max box difference {max_d:.1e} px; "
                      f"vs reference with sorted unmatched: ids identical: {exact2}, max box difference {max_d2:.1e} px")
        rows.append((name, m))

    print()
    print(f"| setting | HOTA | MOTA | IDF1 | ID sw. | FP | FN | ids |")
    print(f"|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in rows:
        print(f"| {name} | {m['HOTA']:.1f} | {m['MOTA']:.1f} | {m['IDF1']:.1f} | {m['IDSW']} | {m['FP']} | {m['FN']} | {m['ids']} |")
    gt_ids = sum(len({i for f in g for i, _ in f}) for g in gts)
    print(f"\n{args.clips} clips x {FRAMES} frames, {gt_ids} ground-truth identities, "
          f"{sum(len(f) for g in gts for f in g)} ground-truth boxes")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([{"setting": n, **m} for n, m in rows], indent=1))
    if args.write_test_data:
        c = args.test_clip
        if not 0 <= c < len(gts):
            sys.exit(f"error: --test-clip {c} is not one of the {len(gts)} clips")
        figures = write_test_data(args.write_test_data, c, gts[c], dets[c], args.track_jsonl)
        full = score([gts[c]], [run_ours(args.track_jsonl, dets[c], [])])
        size = Path(args.write_test_data).stat().st_size
        print(f"\nclip {c} written to {args.write_test_data} ({size / 1024:.0f} KiB); "
              f"TrackEval on exactly those detections:")
        print("| setting | HOTA | MOTA | IDF1 | ID sw. | FP | FN | ids |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, m in list(figures.items()) + [("default, unrounded detections", full)]:
            print(f"| {name} | {m['HOTA']:.1f} | {m['MOTA']:.1f} | {m['IDF1']:.1f} | {m['IDSW']} | {m['FP']} | {m['FN']} | {m['ids']} |")


if __name__ == "__main__":
    main()
