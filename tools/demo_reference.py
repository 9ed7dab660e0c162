#!/usr/bin/env python3
"""Dev-only: the demo checkpoint's end-to-end accuracy reference for CI.

Writes the held-out generated set (the same seeded stream `train_demo.py` evaluates on) as
JPEG files plus a COCO `instances.json` under tests/data/shapes-heldout/, runs the shipped
checkpoint with transformers on exactly those files, evaluates with pycocotools, and writes
`reference.json` with the 12 COCO numbers. CI's `rtdetr eval` must reproduce them.

  python tools/demo_reference.py [--model models/shapes-demo] [--n 200]
"""

import argparse
import contextlib
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402
from transformers import RTDetrForObjectDetection  # noqa: E402
from transformers.image_utils import load_image  # noqa: E402
from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil  # noqa: E402

import train_demo  # noqa: E402

STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/shapes-demo")
    ap.add_argument("--out", default="tests/data/shapes-heldout")
    ap.add_argument("--n", type=int, default=train_demo.EVAL_N)
    ap.add_argument("--seed", type=int, default=train_demo.EVAL_SEED)
    ap.add_argument("--quality", type=int, default=92)
    args = ap.parse_args()
    torch.set_num_threads(1)

    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    samples, names = [], []
    for i in range(args.n):
        img, gt = train_demo.sample_for(args.seed, i)
        name = f"{i:04d}.jpg"
        img.save(os.path.join(args.out, "images", name), quality=args.quality)
        samples.append((img, gt))
        names.append(name)
    gt = train_demo.coco_gt_dict(samples, names)
    with open(os.path.join(args.out, "instances.json"), "w") as f:
        json.dump(gt, f)

    model = RTDetrForObjectDetection.from_pretrained(args.model).eval()
    processor = RTDetrImageProcessorPil.from_pretrained(args.model)
    dets = []
    with torch.no_grad():
        for k, name in enumerate(names):
            img = load_image(os.path.join(args.out, "images", name))
            out = model(**processor(images=[img], return_tensors="pt"))
            r = processor.post_process_object_detection(out, threshold=0.0, target_sizes=[(img.height, img.width)])[0]
            for sc, lb, bx in list(zip(r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist()))[:100]:
                x0, y0, x1, y1 = (min(max(v, 0.0), lim) for v, lim in zip(bx, [img.width, img.height] * 2))
                dets.append({"image_id": k + 1, "category_id": int(lb) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": sc})
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    print(buf.getvalue())
    ref = {
        "model": args.model,
        "images": args.n,
        "seed": args.seed,
        "note": "transformers + pycocotools on these JPEG files, boxes clipped to the image as rtdetr does",
        "stats": dict(zip(STATS, ev.stats.tolist())),
    }
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(json.dumps(ref["stats"]))


if __name__ == "__main__":
    main()
