#!/usr/bin/env python3
"""Dev-only: time the Python package's `det(image)` against transformers' PyTorch
`pipeline("object-detection")` on the same checkpoint and image, in one run.

Not needed to build, test or use anything. Needs torch + transformers (the dev environment,
e.g. /work/pyenv) and the `rtdetr` wheel importable (pip install target/wheels-py/rtdetr-*.whl,
or PYTHONPATH pointing at an unpacked wheel).

Both sides get the same decoded PIL image and do the whole job: preprocessing (resize to the
checkpoint's input size, rescale, normalise), the forward pass and post-processing to a
list of detections (threshold 0.5, no cap on their number). The PyTorch model's forward
pass alone is timed too, for reference (--no-forward skips it). Runs are interleaved
(pipeline, rtdetr, forward, pipeline, ...) so that the machine's load drifts affect all alike; median and min of --runs after
--warmup untimed runs of each. PyTorch gets --threads intra-op threads
(torch.set_num_threads); rtdetr uses its rayon pool (RAYON_NUM_THREADS, set to the same
number by this script before the package is imported). /proc/loadavg is printed before and
after: on a shared machine the numbers are only comparable within one run.

Usage:
  python tools/gen_fixtures.py --full r50vd r18vd        # if /tmp/rtdetr-full/r50vd is missing
  python tools/bench_python.py --model /tmp/rtdetr-full/r50vd --model /tmp/rtdetr-full/r18vd
  python tools/bench_python.py --model DIR --image examples/shapes-1.png --runs 10 --json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def loadavg():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return None


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="checkpoint directory (repeatable)")
    ap.add_argument("--image", default=str(ROOT / "crates/rtdetr/tests/fixtures/images/photo.png"))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--no-forward", dest="forward", action="store_false",
                    help="do not also time the PyTorch model's forward pass alone")
    args = ap.parse_args()

    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch
    import transformers
    from PIL import Image

    import rtdetr

    torch.set_num_threads(args.threads)
    with Image.open(args.image) as im:
        image = im.convert("RGB")
    report = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "image": f"{Path(args.image).name} {image.width}x{image.height}",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "rtdetr": rtdetr.__version__},
        "loadavg_before": loadavg(),
        "models": [],
    }
    for model in args.model:
        pipe = transformers.pipeline("object-detection", model=model, device="cpu")
        det = rtdetr.Detector(model)
        # The pipeline keeps every detection above the threshold; so does rtdetr here
        # (its default cap is 100).
        runners = {
            "transformers pipeline (PyTorch)": lambda: pipe(image, threshold=args.threshold),
            "rtdetr det(image)": lambda: det(image, threshold=args.threshold, max_detections=10_000),
        }
        if args.forward:
            inputs = pipe.image_processor(images=image, return_tensors="pt")
            runners["PyTorch forward only (no pre/post-processing)"] = lambda: pipe.model(**inputs)
        times = {name: [] for name in runners}
        with torch.inference_mode():
            for _ in range(args.warmup):
                for fn in runners.values():
                    fn()
            for _ in range(args.runs):
                for name, fn in runners.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) * 1000)
        n_pipe = len(pipe(image, threshold=args.threshold))
        n_ours = len(det(image, threshold=args.threshold, max_detections=10_000))
        rows = {name: {"median_ms": statistics.median(t), "min_ms": min(t)} for name, t in times.items()}
        ours = rows["rtdetr det(image)"]["median_ms"]
        theirs = rows["transformers pipeline (PyTorch)"]["median_ms"]
        report["models"].append(
            {
                "model": model,
                "input_size": det.input_size,
                "detections": {"pipeline": n_pipe, "rtdetr": n_ours},
                "runs": rows,
                "speedup": theirs / ours,
            }
        )
        del pipe, det
    report["loadavg_after"] = loadavg()
    if args.json:
        print(json.dumps(report))
        return
    print(f"CPU: {report['cpu']}, {args.threads} threads, image {report['image']}")
    print(f"versions: {report['versions']}")
    print(f"load average before: {report['loadavg_before']}, after: {report['loadavg_after']}")
    print("| model | runtime | median ms | min ms |")
    print("| --- | --- | ---: | ---: |")
    for m in report["models"]:
        for name, r in m["runs"].items():
            print(f"| {Path(m['model']).name} | {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f} |")
    for m in report["models"]:
        print(f"{Path(m['model']).name}: rtdetr {m['speedup']:.2f}x faster (median); detections {m['detections']}")


if __name__ == "__main__":
    sys.exit(main())
