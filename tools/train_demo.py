#!/usr/bin/env python3
"""Dev-only: train the tiny RT-DETR "shapes" demo checkpoint shipped in models/shapes-demo/.

Not needed to build or use the Rust crates. Requires torch, transformers (>=5),
pycocotools, pillow, numpy, safetensors.

Modes:
  python tools/train_demo.py train --out models/shapes-demo [--minutes 75] [--target-ap 0.82]
  python tools/train_demo.py gen-examples --out examples/ --n 6 --seed 1234
  python tools/train_demo.py gen-coco --out DIR --n 200 --seed 2024
  python tools/train_demo.py smoke            # config + forward/loss + a few steps

The data generator (`make_sample`) is procedural and fully determined by the numpy
Generator passed in. `sample_for(seed, i)` gives the i-th image of a seeded stream, so
`gen-coco --seed 2024 --n 200` reproduces exactly the held-out set that `train` evaluates on.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["circle", "ellipse", "rectangle", "triangle", "star"]
INPUT_SIZE = 256
TRAIN_SEED = 1
EVAL_SEED = 2024  # held-out stream (train uses TRAIN_SEED, a different stream)
EVAL_N = 200

# ----------------------------------------------------------------------------
# Procedural data
# ----------------------------------------------------------------------------


def _rot(points, angle_deg, cx, cy):
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _shape_polygon(rng, cls, cx, cy, size):
    """Polygon (list of (x, y)) for a shape whose larger extent is about `size` pixels."""
    r = size / 2.0
    if cls == 0:  # circle
        pts = [(r * math.cos(t), r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 72, endpoint=False)]
        return _rot(pts, 0, cx, cy)
    if cls == 1:  # ellipse, aspect 1.8..2.6, roughly axis aligned (wide or tall)
        ar = rng.uniform(1.8, 2.6)
        a, b = r, r / ar
        pts = [(a * math.cos(t), b * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 72, endpoint=False)]
        ang = rng.choice([0.0, 90.0]) + rng.uniform(-15, 15)
        return _rot(pts, ang, cx, cy)
    if cls == 2:  # rectangle, aspect 1.8..3.0, roughly axis aligned (wide or tall)
        ar = rng.uniform(1.8, 3.0)
        a, b = r, r / ar
        pts = [(-a, -b), (a, -b), (a, b), (-a, b)]
        ang = rng.choice([0.0, 90.0]) + rng.uniform(-12, 12)
        return _rot(pts, ang, cx, cy)
    if cls == 3:  # triangle, near-equilateral, any rotation
        base = [-90.0, 30.0, 150.0]
        pts = []
        for b in base:
            t = math.radians(b + rng.uniform(-8, 8))
            rr = r * rng.uniform(0.9, 1.0)
            pts.append((rr * math.cos(t), rr * math.sin(t)))
        return _rot(pts, rng.uniform(0, 360), cx, cy)
    if cls == 4:  # five-pointed star, any rotation
        inner = rng.uniform(0.38, 0.5)
        pts = []
        for k in range(10):
            t = math.radians(-90 + 36 * k)
            rr = r if k % 2 == 0 else r * inner
            pts.append((rr * math.cos(t), rr * math.sin(t)))
        return _rot(pts, rng.uniform(0, 360), cx, cy)
    raise ValueError(cls)


def _background(rng, w, h):
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(ang) + yy * math.sin(ang))
    t = (t - t.min()) / max(1e-6, t.max() - t.min())
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += rng.normal(0, rng.uniform(2, 10), (h, w, 3))
    return img


def _distractors(rng, img):
    """Texture that is not an object: stripe patches, blurred noise blobs, thin lines."""
    h, w, _ = img.shape
    # stripe patches (soft, blended, partially transparent)
    for _ in range(rng.integers(0, 3)):
        pw, ph = int(rng.uniform(0.2, 0.6) * w), int(rng.uniform(0.2, 0.6) * h)
        x0, y0 = int(rng.uniform(0, w - pw)), int(rng.uniform(0, h - ph))
        period = rng.uniform(4, 12)
        ang = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
        s = 0.5 + 0.5 * np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period)
        # feather the patch edges so it does not read as a rectangle
        fx = np.minimum(xx, pw - 1 - xx) / max(1, pw * 0.25)
        fy = np.minimum(yy, ph - 1 - yy) / max(1, ph * 0.25)
        feather = np.clip(np.minimum(fx, fy), 0, 1)
        alpha = (rng.uniform(0.15, 0.35) * s * feather)[..., None]
        col = rng.uniform(0, 255, 3)
        patch = img[y0:y0 + ph, x0:x0 + pw]
        img[y0:y0 + ph, x0:x0 + pw] = patch * (1 - alpha) + col * alpha
    # blurred noise blobs
    for _ in range(rng.integers(0, 3)):
        bw = max(8, int(rng.uniform(0.1, 0.3) * w))
        bh = max(8, int(rng.uniform(0.1, 0.3) * h))
        x0, y0 = int(rng.uniform(0, w - bw)), int(rng.uniform(0, h - bh))
        yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
        d = ((xx - bw / 2) / (bw / 2)) ** 2 + ((yy - bh / 2) / (bh / 2)) ** 2
        env = np.clip(1 - d, 0, 1) ** 1.5
        noise = rng.normal(0, 1, (bh, bw, 3)) * rng.uniform(25, 60)
        img[y0:y0 + bh, x0:x0 + bw] += noise * env[..., None]
    return img


def _draw_lines(rng, pil):
    h, w = pil.height, pil.width
    d = ImageDraw.Draw(pil)
    for _ in range(rng.integers(0, 4)):
        p0 = (rng.uniform(0, w), rng.uniform(0, h))
        p1 = (rng.uniform(0, w), rng.uniform(0, h))
        col = tuple(int(v) for v in rng.uniform(0, 255, 3))
        d.line([p0, p1], fill=col, width=int(rng.integers(1, 3)))


def make_sample(rng, min_shapes=1, max_shapes=6, min_side=200, max_side=480, min_visible=0.4,
                require_all_visible=False):
    """Draw one image.

    Returns (PIL.Image RGB, [(class_id, x0, y0, x1, y1), ...]) with boxes in source pixels
    (x1/y1 exclusive, i.e. the full shape's pixel extent even when partially occluded).
    Shapes more than (1 - min_visible) hidden by later shapes are dropped from the ground truth.
    With require_all_visible=True, returns None instead if any shape got dropped.
    """
    while True:
        w = int(rng.integers(min_side, max_side + 1))
        h = int(rng.integers(min_side, max_side + 1))
        if abs(w - h) >= 24:
            break
    bg = _distractors(rng, _background(rng, w, h))
    pil = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    _draw_lines(rng, pil)
    draw = ImageDraw.Draw(pil)
    owner = np.full((h, w), -1, dtype=np.int16)
    shapes = []
    n = int(rng.integers(min_shapes, max_shapes + 1))
    m = min(w, h)
    for i in range(n):
        cls = int(rng.integers(0, len(CLASSES)))
        size = rng.uniform(0.13, 0.42) * m
        if cls == 0:
            size *= 0.85
        half = size / 2 + 2
        cx = rng.uniform(half, w - half)
        cy = rng.uniform(half, h - half)
        poly = _shape_polygon(rng, cls, cx, cy, size)
        mask_img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask_img).polygon(poly, fill=255)
        mask = np.asarray(mask_img) > 0
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        # colour with clear contrast against the background under the shape
        local = np.asarray(pil)[mask].reshape(-1, 3).mean(0)
        for _ in range(20):
            col = rng.uniform(0, 255, 3)
            if np.abs(col - local).sum() > 150:
                break
        draw.polygon(poly, fill=tuple(int(v) for v in col))
        owner[mask] = i
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        shapes.append((i, cls, box, int(mask.sum())))
    # mild sensor noise over everything
    arr = np.asarray(pil).astype(np.float32)
    arr += rng.normal(0, rng.uniform(1, 6), arr.shape)
    if rng.uniform() < 0.3:
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").filter(
            ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    else:
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    gt = []
    for i, cls, box, area in shapes:
        vis = float((owner == i).sum()) / max(1, area)
        if vis < min_visible:
            if require_all_visible:
                return None
            continue
        if require_all_visible and vis < 0.75:
            return None
        gt.append((cls, *box))
    return img, gt


def sample_for(seed, i, **kw):
    """The i-th sample of the stream `seed` (independent of how many are drawn)."""
    rng = np.random.default_rng([seed, i])
    while True:
        out = make_sample(rng, **kw)
        if out is not None:
            return out


# ----------------------------------------------------------------------------
# Model / processor
# ----------------------------------------------------------------------------


def build_config(encoder_heads=8):
    from transformers import RTDetrConfig, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(
        layer_type="basic",
        depths=[1, 1, 1, 1],
        hidden_sizes=[32, 64, 128, 256],
        embedding_size=32,
        out_features=["stage2", "stage3", "stage4"],
    )
    return RTDetrConfig(
        backbone_config=backbone,
        encoder_in_channels=[64, 128, 256],
        encoder_hidden_dim=128,
        encoder_ffn_dim=256,
        hidden_expansion=0.5,
        d_model=128,
        decoder_in_channels=[128, 128, 128],
        decoder_ffn_dim=512,
        decoder_layers=3,
        decoder_attention_heads=4,
        encoder_attention_heads=encoder_heads,
        num_queries=100,
        num_denoising=50,
        num_labels=len(CLASSES),
        id2label={i: c for i, c in enumerate(CLASSES)},
        label2id={c: i for i, c in enumerate(CLASSES)},
        anchor_image_size=None,
    )


def build_processor():
    import logging
    from transformers import RTDetrImageProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return RTDetrImageProcessor(
        do_resize=True,
        size={"height": INPUT_SIZE, "width": INPUT_SIZE},
        resample=2,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=False,
        do_pad=False,
    )


def make_batch(processor, samples):
    import torch

    images = [s[0] for s in samples]
    pv = processor(images=images, return_tensors="pt")["pixel_values"]
    labels = []
    for img, gt in samples:
        w, h = img.size
        if gt:
            a = np.array([g[1:] for g in gt], dtype=np.float32)
            boxes = np.stack([
                (a[:, 0] + a[:, 2]) / 2 / w, (a[:, 1] + a[:, 3]) / 2 / h,
                (a[:, 2] - a[:, 0]) / w, (a[:, 3] - a[:, 1]) / h,
            ], 1)
        else:
            boxes = np.zeros((0, 4), np.float32)
        labels.append({
            "class_labels": torch.tensor([g[0] for g in gt], dtype=torch.long),
            "boxes": torch.from_numpy(boxes),
        })
    return pv, labels


# ----------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------


def coco_gt_dict(samples, file_names=None):
    images, anns = [], []
    aid = 1
    for k, (img, gt) in enumerate(samples):
        w, h = img.size
        images.append({"id": k + 1, "width": w, "height": h,
                       "file_name": file_names[k] if file_names else f"{k:04d}.png"})
        for cls, x0, y0, x1, y1 in gt:
            bw, bh = x1 - x0, y1 - y0
            anns.append({"id": aid, "image_id": k + 1, "category_id": cls + 1,
                         "bbox": [x0, y0, bw, bh], "area": bw * bh, "iscrowd": 0})
            aid += 1
    cats = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_evaluate(model, processor, samples, batch_size=8, quiet=True):
    import contextlib
    import io

    import torch
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = coco_gt_dict(samples)
    dets = []
    model.eval()
    with torch.no_grad():
        for b in range(0, len(samples), batch_size):
            chunk = samples[b:b + batch_size]
            pv = processor(images=[s[0] for s in chunk], return_tensors="pt")["pixel_values"]
            out = model(pixel_values=pv)
            sizes = [(s[0].height, s[0].width) for s in chunk]
            res = processor.post_process_object_detection(out, threshold=0.0, target_sizes=sizes)
            for j, r in enumerate(res):
                for sc, lb, bx in zip(r["scores"][:100].tolist(), r["labels"][:100].tolist(),
                                      r["boxes"][:100].tolist()):
                    x0, y0, x1, y1 = bx
                    dets.append({"image_id": b + j + 1, "category_id": int(lb) + 1,
                                 "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(sc)})
    model.train()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        cd = cg.loadRes(dets) if dets else COCO()
        ev = COCOeval(cg, cd, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if not quiet:
        print(buf.getvalue(), flush=True)
    return ev.stats.tolist(), buf.getvalue()


# ----------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------


def cmd_gen_examples(args):
    os.makedirs(args.out, exist_ok=True)
    meta = {}
    rng = np.random.default_rng(args.seed)
    k = 0
    while k < args.n:
        out = make_sample(rng, min_shapes=2, max_shapes=5, require_all_visible=True)
        if out is None:
            continue
        img, gt = out
        if not (2 <= len(gt) <= 5):
            continue
        k += 1
        name = f"shapes-{k}.png"
        img.save(os.path.join(args.out, name))
        meta[name] = {"width": img.width, "height": img.height,
                      "objects": [{"label": CLASSES[c], "class_id": c, "box": [x0, y0, x1, y1]}
                                  for c, x0, y0, x1, y1 in gt]}
        print(name, img.size, [CLASSES[g[0]] for g in gt])
    with open(os.path.join(args.out, "shapes-ground-truth.json"), "w") as f:
        json.dump({"box_format": "x0,y0,x1,y1 source pixels", "seed": args.seed, "images": meta}, f, indent=1)


def cmd_gen_coco(args):
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    samples, names = [], []
    for i in range(args.n):
        img, gt = sample_for(args.seed, i)
        name = f"{i:04d}.png"
        img.save(os.path.join(args.out, "images", name))
        samples.append((img, gt))
        names.append(name)
    with open(os.path.join(args.out, "instances.json"), "w") as f:
        json.dump(coco_gt_dict(samples, names), f)
    print(f"wrote {args.n} images + instances.json to {args.out}")


def cmd_smoke(args):
    import torch
    from transformers import RTDetrForObjectDetection

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = build_config(args.encoder_heads)
    model = RTDetrForObjectDetection(cfg)
    print("params", sum(p.numel() for p in model.parameters()))
    proc = build_processor()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=1e-4)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        samples = [sample_for(TRAIN_SEED, step * 8 + j) for j in range(8)]
        pv, labels = make_batch(proc, samples)
        out = model(pixel_values=pv, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        print(f"step {step} loss {out.loss.item():.3f} {time.time() - t0:.1f}s", flush=True)
    stats, _ = coco_evaluate(model, proc, [sample_for(EVAL_SEED, i) for i in range(8)])
    print("AP", stats[0])
    d = "/tmp/train_demo_smoke"
    model.save_pretrained(d)
    proc.save_pretrained(d)
    from safetensors import safe_open
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    print(len(keys), "tensors;", keys[:3], "...", [k for k in keys if "embedder" in k][:2])
    print(open(os.path.join(d, "preprocessor_config.json")).read())


def write_model_card(out, info):
    lines = [
        "# shapes-demo: tiny RT-DETR trained on procedural shapes",
        "",
        "Demo checkpoint for the `rtdetr` crates (Hugging Face `RTDetrForObjectDetection` layout:",
        "`config.json`, `model.safetensors`, `preprocessor_config.json`). Trained from scratch on CPU",
        "on synthetic images; it only knows these classes and is not useful on real photos.",
        "",
        f"- Classes (id: label): {', '.join(f'{i}: {c}' for i, c in enumerate(CLASSES))}",
        f"- Parameters: {info['params']:,} (ResNet-basic [1,1,1,1] backbone, d_model 128, 3 decoder layers,"
        " 100 queries)",
        f"- Input: {INPUT_SIZE}x{INPUT_SIZE} (bilinear resize, rescale 1/255, no normalization)",
        f"- Training: `{info['command']}`",
        f"- Steps: {info['best_step']} (best checkpoint) of {info['steps']} run, batch 8, AdamW lr {info['lr']:g},"
        f" wall time {info['minutes']:.1f} min on {info['threads']} CPU threads",
        f"- Data: `make_sample` in `tools/train_demo.py` (train seed stream {TRAIN_SEED}); evaluation on"
        f" {EVAL_N} held-out images, reproducible with",
        f"  `python tools/train_demo.py gen-coco --out DIR --n {EVAL_N} --seed {EVAL_SEED}`",
        "",
        "COCO bbox evaluation of this checkpoint (pycocotools, threshold 0.0, top 100):",
        "",
        "```",
        info["summary"].strip(),
        "```",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def cmd_train(args):
    import torch
    from transformers import RTDetrForObjectDetection

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.init:
        # Continue from an earlier checkpoint (same graph); fresh optimizer state, new data.
        model = RTDetrForObjectDetection.from_pretrained(args.init)
        model.train()
    else:
        model = RTDetrForObjectDetection(build_config(args.encoder_heads))
    proc = build_processor()
    params = sum(p.numel() for p in model.parameters())
    print(f"params {params}  classes {CLASSES}  init {args.init or 'random'}", flush=True)
    eval_samples = [sample_for(EVAL_SEED, i) for i in range(EVAL_N)]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60.0
    t0 = time.time()
    best_ap, best_step, best_summary, best_stats = -1.0, 0, "", None
    step = 0
    ema = None
    model.train()
    if args.init:
        stats, summary = coco_evaluate(model, proc, eval_samples)
        print(f"eval of --init: AP {stats[0]:.4f}", flush=True)
        best_ap, best_summary, best_stats = stats[0], summary, stats
        model.train()

    def lr_at(step, el):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        start = args.decay_from * budget
        if el < start:
            return args.lr
        frac = min(1.0, (el - start) / max(1.0, budget - start))
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    while True:
        el = time.time() - t0
        for g in opt.param_groups:
            g["lr"] = lr_at(step, el)
        first = (args.start_step + step) * args.batch
        samples = [sample_for(TRAIN_SEED, first + j) for j in range(args.batch)]
        pv, labels = make_batch(proc, samples)
        out = model(pixel_values=pv, labels=labels)
        loss = out.loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        step += 1
        li = loss.item()
        ema = li if ema is None else 0.95 * ema + 0.05 * li
        el = time.time() - t0
        if step % 10 == 0 or step <= 5:
            print(f"step {step} loss {li:.3f} ema {ema:.3f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"elapsed {el:.0f}s ({step / el:.3f} steps/s)", flush=True)
        out_of_time = el >= budget
        if step % args.eval_every == 0 or out_of_time:
            te = time.time()
            stats, summary = coco_evaluate(model, proc, eval_samples)
            print(f"eval step {step}: AP {stats[0]:.4f} AP50 {stats[1]:.4f} AP75 {stats[2]:.4f} "
                  f"({time.time() - te:.0f}s)", flush=True)
            if stats[0] > best_ap:
                best_ap, best_step, best_summary, best_stats = stats[0], step, summary, stats
                model.save_pretrained(args.out)
                proc.save_pretrained(args.out)
                print(f"  saved best -> {args.out}", flush=True)
            if best_ap >= args.target_ap or out_of_time:
                break
    total = time.time() - t0
    print(f"done: {step} steps in {total / 60:.1f} min; best AP {best_ap:.4f} at step {best_step}", flush=True)
    print("COCO summary (best checkpoint):", flush=True)
    print(best_summary, flush=True)
    print("stats", json.dumps([round(s, 4) for s in best_stats]), flush=True)
    write_model_card(args.out, {
        "params": params, "command": "python tools/train_demo.py " + " ".join(sys.argv[1:]),
        "best_step": best_step, "steps": step, "lr": args.lr, "minutes": total / 60, "threads": args.threads,
        "summary": best_summary,
    })
    # sanity: keys look like HF's
    from safetensors import safe_open
    with safe_open(os.path.join(args.out, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.backbone.model.embedder.") for k in keys), keys[:5]
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"model.safetensors: {len(keys)} tensors, {size / 1e6:.1f} MB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", default="models/shapes-demo")
    t.add_argument("--minutes", type=float, default=75.0)
    t.add_argument("--target-ap", type=float, default=0.82)
    t.add_argument("--lr", type=float, default=4e-4)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--decay-from", type=float, default=0.65, help="fraction of the time budget")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--eval-every", type=int, default=300)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--encoder-heads", type=int, default=8)
    t.add_argument("--init", help="checkpoint directory to continue training from")
    t.add_argument("--start-step", type=int, default=0,
                   help="offset into the training sample stream (continue with unseen images)")
    e = sub.add_parser("gen-examples")
    e.add_argument("--out", default="examples")
    e.add_argument("--n", type=int, default=6)
    e.add_argument("--seed", type=int, default=1234)
    c = sub.add_parser("gen-coco")
    c.add_argument("--out", required=True)
    c.add_argument("--n", type=int, default=EVAL_N)
    c.add_argument("--seed", type=int, default=EVAL_SEED)
    s = sub.add_parser("smoke")
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--encoder-heads", type=int, default=8)
    args = ap.parse_args()
    {"train": cmd_train, "gen-examples": cmd_gen_examples, "gen-coco": cmd_gen_coco,
     "smoke": cmd_smoke}[args.cmd](args)


if __name__ == "__main__":
    main()
