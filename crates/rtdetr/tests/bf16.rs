//! `Precision::Bf16` against f32: bounded drift on the trained demo checkpoint, and an
//! honest fallback on CPUs without bf16 dot products.
//!
//! The precision is a load option: the f32 and bf16 detectors of one checkpoint live side
//! by side in one process.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use common::max_abs_diff;
use rtdetr::{load_image, DetectOptions, Detection, Detector, LoadOptions, Precision};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Run {
    logits: Tensor,
    boxes: Tensor,
    detections: Vec<Vec<Detection>>,
}

fn run(det: &Detector, images: &[image::RgbImage], opts: &DetectOptions) -> Run {
    let pixels = det.pixel_batch(images).unwrap();
    let out = det.forward(&pixels, &mut Default::default()).unwrap();
    let sizes: Vec<(u32, u32)> = images.iter().map(|i| (i.width(), i.height())).collect();
    let detections = det.post_process(&out, &sizes, &vec![opts; images.len()]).unwrap();
    Run { logits: out.logits, boxes: out.boxes, detections }
}

fn drift(dir: &Path, images: &[image::RgbImage], opts: &DetectOptions) -> (Run, Run) {
    let f32_det = Detector::from_dir(dir, &LoadOptions::default()).unwrap();
    assert_eq!(f32_det.precision(), Precision::F32);
    let bf16_det = Detector::from_dir(dir, &LoadOptions { precision: Precision::Bf16, ..Default::default() }).unwrap();
    // Interleaved: neither detector's kernels depend on the other's.
    let f32_run = run(&f32_det, images, opts);
    let bf16_run = run(&bf16_det, images, opts);
    let again = run(&f32_det, images, opts);
    assert_eq!(max_abs_diff(&f32_run.logits, &again.logits), 0.0, "f32 changed after a bf16 run");
    (f32_run, bf16_run)
}

#[test]
fn bf16_drift_on_the_demo_checkpoint() {
    let names = ["shapes-1.png", "shapes-2.png", "shapes-3.png", "shapes-4.png", "shapes-5.png", "shapes-6.png"];
    let images: Vec<_> = names.iter().map(|n| load_image(&repo().join("examples").join(n)).unwrap()).collect();
    let opts = DetectOptions { threshold: 0.5, ..Default::default() };
    let (a, b) = drift(&repo().join("models/shapes-demo"), &images, &opts);
    let (dl, db) = (max_abs_diff(&a.logits, &b.logits), max_abs_diff(&a.boxes, &b.boxes));
    if Precision::Bf16.effective() == Precision::F32 {
        // No bf16 dot products: bf16 falls back to f32, bit for bit.
        assert_eq!((dl, db), (0.0, 0.0), "fallback must be exactly f32");
        // Past the test harness's capture (it captures `eprintln!`), so the skip is seen.
        let line = "SKIPPED bf16 drift (bf16_drift_on_the_demo_checkpoint): needs AVX512-BF16; checked that the \
                    fallback is bit-identical f32\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return;
    }
    // Raw outputs per query index: a query selection that differs by one near-tied position
    // shifts whole rows, so these maxima are large whenever the selection differs at all;
    // the detections below are what must agree.
    eprintln!("bf16 vs f32 on the demo checkpoint: max |Δ logit| {dl:.4}, max |Δ box| {db:.5} (per query index)");
    assert!(dl > 0.0, "bf16 mode did not change the arithmetic");
    // Same detections: classes, scores within 0.03, boxes within 2 px.
    let (mut matched, mut worst_score) = (0, 0f32);
    for ((name, da), dbf) in names.iter().zip(&a.detections).zip(&b.detections) {
        // A detection near the threshold may appear in one run only: compare the confident ones.
        let confident = |d: &&Detection| d.score >= opts.threshold + 0.05;
        let (ca, cb): (Vec<_>, Vec<_>) = (da.iter().filter(confident).collect(), dbf.iter().collect());
        for x in ca {
            // Near-duplicate boxes of one class exist (NMS-free): take the closest score.
            let m = cb
                .iter()
                .filter(|y| {
                    y.class_id == x.class_id
                        && (y.bbox.xmin - x.bbox.xmin).abs() <= 2.0
                        && (y.bbox.ymin - x.bbox.ymin).abs() <= 2.0
                        && (y.bbox.xmax - x.bbox.xmax).abs() <= 2.0
                        && (y.bbox.ymax - x.bbox.ymax).abs() <= 2.0
                })
                .min_by(|p, q| (p.score - x.score).abs().total_cmp(&(q.score - x.score).abs()));
            let m = m.unwrap_or_else(|| panic!("{name}: f32 detection {x:?} has no bf16 counterpart"));
            // Measured 0.042 with Winograd F(4x4) products in bf16 (0.012 multiplying directly).
            assert!((m.score - x.score).abs() <= 0.06, "{name}: score {} vs {}", m.score, x.score);
            worst_score = worst_score.max((m.score - x.score).abs());
            matched += 1;
        }
    }
    eprintln!("{matched} confident f32 detections all found by bf16; max |Δ score| {worst_score:.4}");
    assert!(matched >= names.len(), "too few detections compared");
}

/// Drift on the full-size healthy-random checkpoints, RT-DETR and RT-DETRv2
/// (`tools/gen_fixtures.py --full r18vd r50vd v2-r18vd v2-r50vd`; RTDETR_FULL_MODELS picks
/// others, e.g. dfine-n,dfine-s), for the README; not in CI (the weights are 15-170 MB).
#[test]
#[ignore]
fn bf16_drift_full_size() {
    let root = std::env::var("RTDETR_FULL_DIR").unwrap_or_else(|_| "/tmp/rtdetr-full".into());
    let images: Vec<_> = ["photo.png", "photo_exif.jpg", "gray.png", "rgba.png"]
        .iter()
        .map(|n| load_image(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images").join(n)).unwrap())
        .collect();
    let opts = DetectOptions { threshold: 0.3, ..Default::default() };
    let names = std::env::var("RTDETR_FULL_MODELS").unwrap_or_else(|_| "r18vd,r50vd,v2-r18vd,v2-r50vd".into());
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let (a, b) = drift(&Path::new(&root).join(name), &images, &opts);
        let agree: usize = a
            .detections
            .iter()
            .zip(&b.detections)
            .map(|(x, y)| x.iter().filter(|d| y.iter().any(|e| e.class_id == d.class_id && iou(d, e) >= 0.9)).count())
            .sum();
        let total: usize = a.detections.iter().map(Vec::len).sum();
        eprintln!(
            "{name}: max |Δ logit| {:.4}, max |Δ box| {:.5}; {agree}/{total} f32 detections (score >= 0.3) found by bf16 \
             (same class, IoU >= 0.9)",
            max_abs_diff(&a.logits, &b.logits),
            max_abs_diff(&a.boxes, &b.boxes)
        );
    }
}

fn iou(a: &Detection, b: &Detection) -> f32 {
    let (x0, y0) = (a.bbox.xmin.max(b.bbox.xmin), a.bbox.ymin.max(b.bbox.ymin));
    let (x1, y1) = (a.bbox.xmax.min(b.bbox.xmax), a.bbox.ymax.min(b.bbox.ymax));
    let inter = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
    let area = |d: &Detection| (d.bbox.xmax - d.bbox.xmin) * (d.bbox.ymax - d.bbox.ymin);
    inter / (area(a) + area(b) - inter)
}

/// RT-DETRv2 and D-FINE (both sampling methods each) in bf16: it runs, the arithmetic changes, outputs stay
/// finite and within the range f32 gives. Agreement of detections is not asserted on these
/// random tiny fixtures: their top-k query selection is full of near ties, so bf16 rounding
/// reorders it as much for v1 (measured on a Zen 4: tiny-bottleneck 33/80, tiny-basic-legacy
/// 40/50 f32 detections at 0.3 found by bf16) as for v2 (tiny-v2 8/60, tiny-v2-discrete
/// 45/50); the full-size drift test above and the demo checkpoint measure it.
#[test]
fn bf16_runs_rtdetr_v2_and_dfine() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let images: Vec<_> =
        ["photo.png", "gray.png"].iter().map(|n| load_image(&fixtures.join("images").join(n)).unwrap()).collect();
    let opts = DetectOptions { threshold: 0.3, ..Default::default() };
    for name in ["tiny-v2", "tiny-v2-discrete", "tiny-dfine-n", "tiny-dfine", "tiny-dfine-discrete"] {
        let (a, b) = drift(&fixtures.join(name), &images, &opts);
        let (dl, db) = (max_abs_diff(&a.logits, &b.logits), max_abs_diff(&a.boxes, &b.boxes));
        eprintln!("{name}: max |Δ logit| {dl:.4}, max |Δ box| {db:.5}");
        if Precision::Bf16.effective() == Precision::F32 {
            assert_eq!((dl, db), (0.0, 0.0), "{name}: the fallback must be exactly f32");
            continue;
        }
        assert!(dl > 0.0, "{name}: bf16 mode did not change the arithmetic");
        let range = |t: &Tensor| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite output");
            v.iter().fold(0f32, |m, x| m.max(x.abs()))
        };
        let (la, lb) = (range(&a.logits), range(&b.logits));
        assert!(lb <= la * 1.5 + 0.5, "{name}: bf16 logits reach {lb}, f32 {la}");
        let (ba, bb) = (range(&a.boxes), range(&b.boxes));
        assert!(ba <= 1.0 && bb <= 1.0, "{name}: boxes outside [0, 1]: {ba} {bb}");
        assert!(b.detections.iter().map(Vec::len).sum::<usize>() > 0, "{name}: bf16 detected nothing");
    }
}
