//! Parity with transformers: stage-by-stage and end-to-end, against reference tensors
//! written by `tools/gen_fixtures.py` (healthy random init, tiny widths, basic and
//! bottleneck blocks, a non-square input, legacy Hub key names).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rtdetr::{load_image, DetectOptions, Detector};

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 2] = ["tiny-bottleneck", "tiny-basic-legacy"];
const IMAGES: [&str; 4] = ["photo_exif.jpg", "photo.png", "gray.png", "rgba.png"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir(name).join("reference.safetensors"), &Device::Cpu).expect("reference tensors")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
}

#[test]
fn stages_match_reference() {
    for name in FIXTURES {
        let det = Detector::from_dir(&fixture_dir(name)).unwrap();
        let r = reference(name);
        let px = &r["random.pixel_values"];
        let out = det.model().forward(px, None, true).unwrap();
        let tr = out.trace.as_ref().unwrap();
        for (i, f) in tr.backbone.iter().enumerate() {
            assert_close(&format!("{name} backbone.{i}"), f, &r[&format!("random.backbone.{i}")], TOL);
        }
        for (i, f) in tr.encoder.iter().enumerate() {
            assert_close(&format!("{name} encoder.{i}"), f, &r[&format!("random.encoder.{i}")], TOL);
        }
        let want_idx: Vec<Vec<i64>> = r["random.topk_indices"].to_vec2().unwrap();
        let got_idx: Vec<Vec<i64>> = tr.topk_indices.iter().map(|v| v.iter().map(|&i| i as i64).collect()).collect();
        assert_eq!(got_idx, want_idx, "{name}: top-k query selection differs");
        assert_close(&format!("{name} enc_topk_logits"), tr.enc_topk_logits.as_ref().unwrap(), &r["random.enc_topk_logits"], TOL);
        assert_close(&format!("{name} enc_topk_bboxes"), tr.enc_topk_boxes.as_ref().unwrap(), &r["random.enc_topk_bboxes"], TOL);
        for (i, l) in out.layers.iter().enumerate() {
            assert_close(&format!("{name} decoder.{i}.logits"), &l.logits, &r[&format!("random.decoder.{i}.logits")], TOL);
            assert_close(&format!("{name} decoder.{i}.boxes"), &l.boxes, &r[&format!("random.decoder.{i}.boxes")], TOL);
        }
        assert_close(&format!("{name} logits"), &out.logits, &r["random.logits"], TOL);
        assert_close(&format!("{name} pred_boxes"), &out.boxes, &r["random.pred_boxes"], TOL);
    }
}

#[test]
fn decoder_depth_cut_equals_intermediate_layer() {
    for name in FIXTURES {
        let det = Detector::from_dir(&fixture_dir(name)).unwrap();
        let r = reference(name);
        let n = det.model().num_decoder_layers();
        for depth in 1..=n {
            let out = det.model().forward(&r["random.pixel_values"], Some(depth), false).unwrap();
            assert_eq!(out.layers.len(), depth);
            assert_close(&format!("{name} depth {depth} logits"), &out.logits, &r[&format!("random.decoder.{}.logits", depth - 1)], TOL);
            assert_close(&format!("{name} depth {depth} boxes"), &out.boxes, &r[&format!("random.decoder.{}.boxes", depth - 1)], TOL);
        }
        assert!(det.model().forward(&r["random.pixel_values"], Some(0), false).is_err());
        assert!(det.model().forward(&r["random.pixel_values"], Some(n + 1), false).is_err());
    }
}

#[test]
fn preprocessing_matches_pil_processor() {
    for name in FIXTURES {
        let det = Detector::from_dir(&fixture_dir(name)).unwrap();
        let r = reference(name);
        for f in IMAGES {
            let img = load_image(&fixture_dir("images").join(f)).unwrap();
            let want = &r[&format!("images.{f}.pixel_values")];
            let got = det.pixel_batch(&[img]).unwrap();
            // Within one 8-bit step of Pillow's resize (and of libjpeg's decode).
            assert_close(&format!("{name} {f} pixels"), &got, want, 1.0 / 255.0 + 1e-6);
        }
    }
}

#[test]
fn image_outputs_match_on_reference_pixels() {
    for name in FIXTURES {
        let det = Detector::from_dir(&fixture_dir(name)).unwrap();
        let r = reference(name);
        for f in IMAGES {
            let out = det.model().forward(&r[&format!("images.{f}.pixel_values")], None, false).unwrap();
            assert_close(&format!("{name} {f} logits"), &out.logits, &r[&format!("images.{f}.logits")], TOL);
            assert_close(&format!("{name} {f} boxes"), &out.boxes, &r[&format!("images.{f}.pred_boxes")], TOL);
        }
    }
}

#[derive(serde::Deserialize)]
struct RefImage {
    width: u32,
    height: u32,
    detections: Vec<rtdetr::Detection>,
}

#[test]
fn detections_match_post_processed_reference() {
    for name in FIXTURES {
        let det = Detector::from_dir(&fixture_dir(name)).unwrap();
        let text = std::fs::read_to_string(fixture_dir(name).join("detections.json")).unwrap();
        let want: HashMap<String, HashMap<String, RefImage>> = serde_json::from_str(&text).unwrap();
        let images: Vec<_> = IMAGES.iter().map(|f| load_image(&fixture_dir("images").join(f)).unwrap()).collect();
        for thr in ["0.0", "0.3"] {
            let opts = DetectOptions { threshold: thr.parse().unwrap(), max_detections: 10_000, ..Default::default() };
            let got = det.detect_batch(&images, &opts).unwrap();
            for (f, g) in IMAGES.iter().zip(&got) {
                let w = &want[*f][thr];
                let (iw, ih) = (w.width as f32, w.height as f32);
                assert_eq!(images[IMAGES.iter().position(|x| x == f).unwrap()].dimensions(), (w.width, w.height));
                // Compare the confident part: near-threshold ties may legitimately reorder.
                let n = w.detections.len().min(20);
                assert!(g.len() >= n.min(g.len()), "{name} {f} thr {thr}: too few detections");
                for (k, (a, b)) in g.iter().zip(&w.detections).take(n).enumerate() {
                    let ctx = format!("{name} {f} thr {thr} #{k}");
                    assert_eq!(a.class_id, b.class_id, "{ctx}: class");
                    assert_eq!(a.label, b.label, "{ctx}: label");
                    assert!((a.score - b.score).abs() <= TOL, "{ctx}: score {} vs {}", a.score, b.score);
                    let clip = |v: f32, m: f32| v.clamp(0.0, m);
                    for (x, y, m) in [
                        (a.bbox.xmin, b.bbox.xmin, iw),
                        (a.bbox.ymin, b.bbox.ymin, ih),
                        (a.bbox.xmax, b.bbox.xmax, iw),
                        (a.bbox.ymax, b.bbox.ymax, ih),
                    ] {
                        assert!((x - clip(y, m)).abs() <= 0.1, "{ctx}: box {:?} vs {:?}", a.bbox, b.bbox);
                    }
                }
                if thr == "0.3" {
                    assert_eq!(g.len(), w.detections.len(), "{name} {f}: detection count at 0.3");
                }
            }
        }
    }
}

#[test]
fn batch_equals_one_by_one() {
    let det = Detector::from_dir(&fixture_dir("tiny-bottleneck")).unwrap();
    let images: Vec<_> = IMAGES.iter().map(|f| load_image(&fixture_dir("images").join(f)).unwrap()).collect();
    let opts = DetectOptions { threshold: 0.0, max_detections: 50, ..Default::default() };
    let batch = det.detect_batch(&images, &opts).unwrap();
    for (img, b) in images.iter().zip(&batch) {
        let single = det.detect(img, &opts).unwrap();
        assert_eq!(single.len(), b.len());
        for (s, t) in single.iter().zip(b) {
            assert_eq!(s.class_id, t.class_id);
            assert!((s.score - t.score).abs() <= 1e-5);
            assert!((s.bbox.xmin - t.bbox.xmin).abs() <= 1e-3 && (s.bbox.ymax - t.bbox.ymax).abs() <= 1e-3);
        }
    }
}
