#!/usr/bin/env python3
"""Dev-only: benchmark the Rust engine against its CPU peers on the same machine, in one run.

Not needed to build, test or use the Rust crates. Requirements: tools/requirements-dev.txt.

For each checkpoint directory (Hugging Face layout), at one input size, batch and thread
count, it times:

  pytorch        transformers' model of the checkpoint's architecture (RTDetrForObjectDetection,
                 RTDetrV2ForObjectDetection: AutoModelForObjectDetection), eager fp32,
                 torch.inference_mode()
  onnxruntime    ONNX Runtime fp32 (CPU EP, all graph optimizations)
  openvino_fp32  OpenVINO CPU, INFERENCE_PRECISION_HINT=f32, PERFORMANCE_HINT=LATENCY
  openvino_bf16  OpenVINO CPU, INFERENCE_PRECISION_HINT=bf16 (falls back to f32 where the
                 CPU lacks bf16; the report says which precision was actually used)
  rtdetr         `rtdetr bench --json` (subprocess, RAYON_NUM_THREADS=threads)
  rtdetr_bf16    `rtdetr bench --precision bf16 --json` (f32 where the CPU lacks AVX512-BF16;
                 the report says which precision was used)

ONNX Runtime and OpenVINO run the same ONNX graph, exported once from the PyTorch model
with torch.onnx.export (torch.export-based "dynamo" exporter; the TorchScript exporter is
the fallback) and cached under --work-dir. Each runtime gets --warmup untimed runs and
--runs timed runs on the same seeded input; median and min are reported, plus
rtdetr's median divided by each peer's (> 1: rtdetr is slower). The peers are timed
tensor-in, logits/boxes-out; `rtdetr bench` is timed tensor-in, detections-out (its
post-processing is ~0.2 ms).

Correctness sanity check: max |diff| of logits (and pred_boxes) between PyTorch,
ONNX Runtime and OpenVINO fp32 on the same input, each query compared with its closest
query of the other runtime (exactly tied top-k positions of random checkpoints may be
selected in another order). An fp32 pair above --tol makes the exit
status 1 (the peers would not be running the same graph). The bf16 diff is informative.

Usage:
  python tools/bench_peers.py --model /tmp/rtdetr-full/r18vd --model /tmp/rtdetr-full/r50vd
  python tools/bench_peers.py --model DIR1,DIR2 --size 640 --threads 2 --runs 10 --json
  python tools/bench_peers.py --model DIR --skip pytorch,openvino_bf16
"""

import argparse
import datetime
import gc
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ["pytorch", "onnxruntime", "openvino_fp32", "openvino_bf16", "rtdetr", "rtdetr_bf16"]
CPU_FLAGS = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]


def log(*a):
    print("[bench_peers]", *a, file=sys.stderr, flush=True)


def parse_size(s):
    s = s.lower()
    if "x" in s:
        h, w = s.split("x", 1)
        h, w = int(h), int(w)
    else:
        h = w = int(s)
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"--size {s}: want a multiple of 32 or HxW of multiples of 32")
    return h, w


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", nargs="+", required=True,
                   help="checkpoint directory; repeatable, or several / comma-separated")
    p.add_argument("--size", type=parse_size, default=(640, 640), help="640 or HxW (default 640x640)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10, help="timed runs per runtime (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs per runtime (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON line per model instead of Markdown")
    p.add_argument("--skip", action="append", nargs="+", default=[],
                   help=f"runtimes to skip ({', '.join(RUNTIMES)}; 'openvino' = both OpenVINO runs)")
    p.add_argument("--work-dir", default="/tmp/rtdetr-bench-peers", help="ONNX export cache")
    p.add_argument("--rtdetr-bin", default=str(ROOT / "target" / "release" / "rtdetr"))
    p.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo",
                   help="torch.onnx.export flavour to try first (the other is the fallback)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--tol", type=float, default=1e-3, help="max fp32 logits diff between peers")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.model = [m for group in a.model for item in group for m in item.split(",") if m]
    skip = set()
    for group in a.skip:
        for item in group:
            for s in item.split(","):
                s = s.strip().lower()
                if not s:
                    continue
                if s == "openvino":
                    skip |= {"openvino_fp32", "openvino_bf16"}
                elif s in ("ort", "onnx"):
                    skip.add("onnxruntime")
                elif s in ("torch",):
                    skip.add("pytorch")
                elif s in RUNTIMES:
                    skip.add(s)
                else:
                    p.error(f"--skip {s}: unknown runtime (choose from {', '.join(RUNTIMES)}, openvino)")
    a.skip = skip
    if a.batch < 1 or a.threads < 1 or a.runs < 1 or a.warmup < 0:
        p.error("--batch, --threads, --runs must be >= 1 and --warmup >= 0")
    for m in a.model:
        if not (Path(m) / "config.json").is_file():
            p.error(f"--model {m}: not a checkpoint directory (no config.json)")
    return a


# Thread settings must be in place before torch / onnxruntime / openvino are imported.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402


# ---------------------------------------------------------------------------- machine info

def machine_info():
    model_name, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model_name is None:
                model_name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    model_name = model_name or platform.processor() or "unknown"
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": model_name,
        "cpu_class": cpu_class(flags),
        "logical_cpus": os.cpu_count(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "loadavg_at_start": load,
        "python": platform.python_version(),
    }


def cpu_class(flags):
    """The CPU class of the README's speed tables (one table per class)."""
    if {"amx_tile", "amx_bf16"} <= flags:
        return "Intel with AMX (AVX-512, AVX512-BF16, AMX-BF16)"
    if {"avx512f", "avx512_bf16"} <= flags:
        return "AVX-512 + AVX512-BF16 (e.g. AMD Zen 4)"
    if "avx512f" in flags:
        return "AVX-512 without bf16"
    if {"avx2", "fma"} <= flags:
        return "AVX2 + FMA only (e.g. AMD Zen 3)"
    return "no AVX2"


def versions():
    v = {"torch": torch.__version__}
    for mod in ["transformers", "onnx", "onnxruntime", "openvino", "onnxscript"]:
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = None
    return v


def rtdetr_version(binary):
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------- timing

def time_fn(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": float(np.median(times)), "min_ms": float(min(times)),
            "times_ms": [round(t, 3) for t in times]}


def settle():
    """Free the previous runtime and let its worker threads stop spinning."""
    gc.collect()
    time.sleep(0.5)


def query_matched_diff(a, b):
    """Max |diff| of (logits, boxes) with each of a's queries compared with its closest query
    of b (same image): random full-size checkpoints have exactly tied top-k positions
    that runtimes select in different orders, which permutes whole query rows."""
    rows = [np.concatenate([np.asarray(x[0], np.float64), np.asarray(x[1], np.float64)], -1) for x in (a, b)]
    c = np.asarray(a[0]).shape[-1]
    worst = np.zeros(2)
    for ra, rb in zip(*rows):  # per image: (queries, classes + 4)
        d = np.abs(ra[:, None, :] - rb[None, :, :])  # (qa, qb, classes + 4)
        best = d.max(-1).argmin(1)  # a's query -> closest b query
        m = d[np.arange(len(ra)), best]
        worst = np.maximum(worst, [m[:, :c].max(), m[:, c:].max()])
    return {"logits": float(worst[0]), "pred_boxes": float(worst[1])}


# ---------------------------------------------------------------------------- ONNX export

class _Wrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        return out.logits, out.pred_boxes


def export_onnx(model, model_dir, x, args):
    """Exports (or reuses) the ONNX graph. Returns (path, exporter used, seconds, cached)."""
    import transformers

    model_dir = Path(model_dir).resolve()
    h = hashlib.sha256()
    st = model_dir / "model.safetensors"
    stat = st.stat() if st.exists() else None
    h.update(json.dumps([str(model_dir), (model_dir / "config.json").read_text(),
                         [stat.st_size, stat.st_mtime_ns] if stat else None, list(x.shape),
                         torch.__version__, transformers.__version__, args.opset]).encode())
    b, _, hh, ww = x.shape
    key = f"{model_dir.name}-{b}x{hh}x{ww}-{h.hexdigest()[:12]}"
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    order = [args.exporter] + [e for e in ("dynamo", "legacy") if e != args.exporter]
    wrapper = _Wrapper(model).eval()
    errors = []
    for exporter in order:
        final = work / f"{key}-{exporter}"
        if (final / "model.onnx").is_file():
            return final / "model.onnx", exporter, 0.0, True
        tmp = work / f"{key}-{exporter}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        try:
            import contextlib
            import warnings
            # The exporter prints its progress on stdout, which is reserved for the report.
            with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
                warnings.simplefilter("ignore")
                kw = dict(input_names=["pixel_values"], output_names=["logits", "pred_boxes"],
                          opset_version=args.opset, dynamo=(exporter == "dynamo"))
                if exporter == "legacy":
                    kw["opset_version"] = min(args.opset, 17)
                torch.onnx.export(wrapper, (x,), str(tmp / "model.onnx"), **kw)
            secs = time.perf_counter() - t0
            try:
                os.rename(tmp, final)
            except OSError:  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
            return final / "model.onnx", exporter, secs, False
        except Exception as e:  # noqa: BLE001
            shutil.rmtree(tmp, ignore_errors=True)
            msg = f"{exporter} exporter failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            log(msg)
            errors.append(msg)
    raise RuntimeError("; ".join(errors))


# ---------------------------------------------------------------------------- one model

def bench_model(model_dir, args, ov_core):
    from transformers import AutoModelForObjectDetection

    h, w = args.size
    res = {"model": model_dir, "size": [h, w], "batch": args.batch, "threads": args.threads,
           "runs": args.runs, "warmup": args.warmup, "runtimes": {}, "errors": {}}
    rts = res["runtimes"]
    torch.manual_seed(args.seed)
    # Pixel values as the image processor makes them (rescale to [0, 1], no normalisation).
    x = torch.rand(args.batch, 3, h, w, dtype=torch.float32)
    x_np = x.numpy().copy()
    outs = {}

    need_torch = any(r not in args.skip for r in RUNTIMES[:4])
    model = None
    if need_torch:
        log(f"{model_dir}: loading PyTorch model")
        model = AutoModelForObjectDetection.from_pretrained(model_dir).eval()
        with torch.inference_mode():
            o = model(pixel_values=x)
        outs["pytorch"] = (o.logits.numpy().copy(), o.pred_boxes.numpy().copy())

    if "pytorch" not in args.skip:
        log("timing pytorch")

        def run_pt():
            with torch.inference_mode():
                model(pixel_values=x)

        rts["pytorch"] = time_fn(run_pt, args.warmup, args.runs)
        settle()

    onnx_path = None
    if any(r not in args.skip for r in ("onnxruntime", "openvino_fp32", "openvino_bf16")):
        try:
            log("exporting ONNX (cached under --work-dir)")
            onnx_path, exporter, secs, cached = export_onnx(model, model_dir, x, args)
            res["onnx"] = {"path": str(onnx_path), "exporter": exporter,
                           "export_s": round(secs, 1), "cached": cached, "opset": args.opset
                           if exporter == "dynamo" else min(args.opset, 17)}
            log(f"ONNX: {onnx_path} ({exporter} exporter{', cached' if cached else f', {secs:.0f} s'})")
        except Exception as e:  # noqa: BLE001
            res["errors"]["onnx_export"] = str(e)
    del model
    settle()

    if "onnxruntime" not in args.skip:
        if onnx_path is None:
            res["errors"]["onnxruntime"] = "no ONNX graph (export failed)"
        else:
            try:
                import onnxruntime as ort
                log("timing onnxruntime")
                so = ort.SessionOptions()
                so.intra_op_num_threads = args.threads
                so.inter_op_num_threads = 1
                so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
                feed = {sess.get_inputs()[0].name: x_np}
                r = sess.run(["logits", "pred_boxes"], feed)
                outs["onnxruntime"] = (r[0], r[1])
                rts["onnxruntime"] = time_fn(lambda: sess.run(None, feed), args.warmup, args.runs)
                del sess
            except Exception as e:  # noqa: BLE001
                res["errors"]["onnxruntime"] = f"{type(e).__name__}: {e}"
            settle()

    for name, prec in (("openvino_fp32", "f32"), ("openvino_bf16", "bf16")):
        if name in args.skip:
            continue
        if onnx_path is None or ov_core is None:
            res["errors"][name] = "no ONNX graph (export failed)" if onnx_path is None else "openvino not importable"
            continue
        try:
            log(f"timing {name}")
            compiled = ov_core.compile_model(str(onnx_path), "CPU", {
                "INFERENCE_PRECISION_HINT": prec,
                "INFERENCE_NUM_THREADS": args.threads,
                "PERFORMANCE_HINT": "LATENCY",
            })
            req = compiled.create_infer_request()
            r = req.infer({0: x_np})
            outs[name] = (np.array(r[compiled.output("logits")]), np.array(r[compiled.output("pred_boxes")]))
            t = time_fn(lambda: req.infer({0: x_np}), args.warmup, args.runs)
            try:
                pt = compiled.get_property("INFERENCE_PRECISION_HINT")
                t["precision_used"] = pt.to_string() if hasattr(pt, "to_string") else str(pt)
                t["threads_used"] = int(compiled.get_property("INFERENCE_NUM_THREADS"))
            except Exception:  # noqa: BLE001
                pass
            rts[name] = t
            del req, compiled
        except Exception as e:  # noqa: BLE001
            res["errors"][name] = f"{type(e).__name__}: {e}"
        settle()

    for rt_name, extra in (("rtdetr", []), ("rtdetr_bf16", ["--precision", "bf16"])):
        if rt_name in args.skip:
            continue
        cmd = [args.rtdetr_bin, "bench", "--model", model_dir, "--size", f"{h}x{w}",
               "--batch", str(args.batch), "--runs", str(args.runs), "--warmup", str(args.warmup), "--json"] + extra
        res[f"{rt_name}_command"] = f"RAYON_NUM_THREADS={args.threads} " + shlex.join(cmd)
        log(f"timing {rt_name}: {res[f'{rt_name}_command']}")
        try:
            env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip()[-500:]}")
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1]
            rep = json.loads(line)
            rts[rt_name] = {k: rep[k] for k in ("median_ms", "min_ms", "gflop", "gflop_per_s",
                                                "stages", "threads", "precision") if k in rep}
            if "precision" in rep:
                rts[rt_name]["precision_used"] = rep["precision"]
        except Exception as e:  # noqa: BLE001
            res["errors"][rt_name] = f"{type(e).__name__}: {e}"
        settle()

    # Ratios: rtdetr median / peer median (> 1 means rtdetr is slower).
    if "rtdetr" in rts:
        rt = rts["rtdetr"]
        res["ratios"] = {f"rtdetr / {k}": round(rt["median_ms"] / v["median_ms"], 3)
                         for k, v in rts.items() if not k.startswith("rtdetr")}
        res["ratios_min"] = {f"rtdetr / {k}": round(rt["min_ms"] / v["min_ms"], 3)
                             for k, v in rts.items() if not k.startswith("rtdetr")}
    if "rtdetr_bf16" in rts:
        for peer in ("openvino_bf16", "openvino_fp32"):
            if peer in rts:
                res.setdefault("ratios", {})[f"rtdetr_bf16 / {peer}"] = round(
                    rts["rtdetr_bf16"]["median_ms"] / rts[peer]["median_ms"], 3)

    # Correctness: the peers must run the same graph.
    chk = {}
    pairs = [("pytorch", "onnxruntime"), ("pytorch", "openvino_fp32"), ("onnxruntime", "openvino_fp32")]
    for a_, b_ in pairs:
        if a_ in outs and b_ in outs:
            chk[f"{a_} vs {b_}"] = query_matched_diff(outs[a_], outs[b_])
    ok = all(v["logits"] <= args.tol for v in chk.values())
    ref = "pytorch" if "pytorch" in outs else ("openvino_fp32" if "openvino_fp32" in outs else None)
    if "openvino_bf16" in outs and ref:
        chk[f"{ref} vs openvino_bf16 (informative)"] = query_matched_diff(outs[ref], outs["openvino_bf16"])
    res["max_abs_diff"] = chk
    res["fp32_parity_ok"] = ok if any("informative" not in k for k in chk) else None
    res["tol"] = args.tol
    return res


# ---------------------------------------------------------------------------- report

def fmt_ms(v):
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def markdown(results, info, vers, bf16, args, rt_version):
    L = []
    h, w = args.size
    L.append(f"### CPU peers, {h}x{w}, batch {args.batch}, {args.threads} threads "
             f"({info['date'][:10]})")
    L.append("")
    L.append(f"- Date: {info['date']}; loadavg at start: {info['loadavg_at_start']}")
    L.append(f"- CPU class: **{info['cpu_class']}**")
    L.append(f"- CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs); flags: "
             f"{', '.join(info['cpu_flags']) or 'none of ' + ', '.join(CPU_FLAGS)}")
    L.append(f"- OpenVINO CPU OPTIMIZATION_CAPABILITIES: {', '.join(bf16['capabilities']) if bf16['capabilities'] else 'n/a'}"
             f" (bf16 supported: {'yes' if bf16['supported'] else 'no'})")
    L.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v)
             + (f", {rt_version}" if rt_version else "") + f", Python {info['python']}")
    L.append(f"- {args.warmup} warm-up + {args.runs} timed runs each, same seeded input; peers timed "
             "tensor in -> logits/boxes out, `rtdetr bench` tensor in -> detections out. "
             "Ratio = rtdetr median / peer median (> 1: rtdetr slower).")
    L.append("- Command: `" + shlex.join(["python", "tools/bench_peers.py"] + sys.argv[1:]) + "`")
    for r in results:
        for key in ("rtdetr_command", "rtdetr_bf16_command"):
            if key in r:
                L.append(f"  - `{r[key]}`")
    L.append("")
    L.append("| model | runtime | median ms | min ms | rtdetr / runtime |")
    L.append("| --- | --- | ---: | ---: | ---: |")
    for r in results:
        name = Path(r["model"]).name
        for rt in RUNTIMES:
            if rt in r["runtimes"]:
                t = r["runtimes"][rt]
                label = rt
                asked = {"openvino_fp32": ("f32", "float32"), "openvino_bf16": ("bf16", "bfloat16"),
                         "rtdetr_bf16": ("bf16",)}.get(rt)
                if asked and t.get("precision_used") and t["precision_used"] not in asked:
                    label += f" (ran {t['precision_used']})"
                ratios = r.get("ratios", {})
                if rt == "rtdetr":
                    ratio = "1.00"
                elif rt == "rtdetr_bf16":
                    ratio = (f"{ratios['rtdetr_bf16 / openvino_bf16']:.2f} vs openvino_bf16"
                             if "rtdetr_bf16 / openvino_bf16" in ratios else "-")
                else:
                    ratio = f"{ratios[f'rtdetr / {rt}']:.2f}" if f"rtdetr / {rt}" in ratios else "-"
                L.append(f"| {name} | {label} | {fmt_ms(t['median_ms'])} | {fmt_ms(t['min_ms'])} | {ratio} |")
            elif rt in r["errors"]:
                L.append(f"| {name} | {rt} | failed | - | - |")
    L.append("")
    L.append("Correctness (same input, max |diff|, each query against its closest query of the other runtime):")
    L.append("")
    L.append("| model | pair | logits | pred_boxes |")
    L.append("| --- | --- | ---: | ---: |")
    for r in results:
        name = Path(r["model"]).name
        for pair, d in r["max_abs_diff"].items():
            L.append(f"| {name} | {pair} | {d['logits']:.2e} | {d['pred_boxes']:.2e} |")
    notes = []
    for r in results:
        name = Path(r["model"]).name
        if r.get("onnx"):
            o = r["onnx"]
            notes.append(f"{name}: ONNX via torch.onnx.export ({o['exporter']} exporter, opset {o['opset']})"
                         + (", cached" if o["cached"] else f", exported in {o['export_s']} s"))
        if r["fp32_parity_ok"] is False:
            notes.append(f"{name}: **fp32 peers disagree by more than {r['tol']:g}**")
        for k, v in r["errors"].items():
            notes.append(f"{name}: {k} failed: {v}")
        if "rtdetr" in r["runtimes"]:
            t = r["runtimes"]["rtdetr"]
            notes.append(f"{name}: rtdetr {t.get('gflop', 0):.1f} GFLOP per forward, "
                         f"{t.get('gflop_per_s', 0):.1f} GFLOP/s, stages (median ms) "
                         + ", ".join(f"{k} {v}" for k, v in t.get("stages", {}).items()))
    if notes:
        L.append("")
        L.extend(f"- {n}" for n in notes)
    return "\n".join(L)


def main(args):
    torch.set_num_threads(args.threads)
    info = machine_info()
    vers = versions()
    rt_version = rtdetr_version(args.rtdetr_bin) if "rtdetr" not in args.skip else None
    if "rtdetr" not in args.skip and not Path(args.rtdetr_bin).is_file():
        sys.exit(f"error: {args.rtdetr_bin} not found (cargo build --release, or --rtdetr-bin, or --skip rtdetr)")
    ov_core, bf16 = None, {"capabilities": [], "supported": False}
    try:
        import openvino as ov
        ov_core = ov.Core()
        caps = list(ov_core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        bf16 = {"capabilities": caps, "supported": "BF16" in caps}
    except Exception as e:  # noqa: BLE001
        log(f"openvino unavailable: {e}")
    results = []
    for m in args.model:
        r = bench_model(m, args, ov_core)
        r.update({"machine": info, "versions": vers, "rtdetr_version": rt_version,
                  "openvino_bf16_supported": bf16["supported"],
                  "openvino_cpu_capabilities": bf16["capabilities"]})
        results.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
    if not args.json:
        print(markdown(results, info, vers, bf16, args, rt_version))
    failed = [r["model"] for r in results if r["fp32_parity_ok"] is False]
    if failed:
        log(f"fp32 peers disagree (> {args.tol:g}) for: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
