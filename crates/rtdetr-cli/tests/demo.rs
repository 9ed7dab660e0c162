//! End-to-end accuracy with the shipped demo checkpoint (models/shapes-demo): real objects
//! through decode, resize, model, post-processing, box scaling and evaluation.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rtdetr(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_rtdetr")).args(args).current_dir(root()).output().expect("run rtdetr");
    assert!(out.status.success(), "rtdetr {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

/// Every drawn shape of the example images is found with the right class (IoU >= 0.5),
/// and nothing that is not a drawn shape is reported with confidence.
#[test]
fn demo_model_finds_every_shape_in_the_examples() {
    let gt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("examples/shapes-ground-truth.json")).unwrap())
            .unwrap();
    let images = gt["images"].as_object().unwrap();
    let mut names: Vec<&String> = images.keys().collect();
    names.sort();
    let paths: Vec<String> = names.iter().map(|n| format!("examples/{n}")).collect();
    let mut args = vec!["detect", "--model", "models/shapes-demo", "--json", "--threshold", "0.5"];
    args.extend(paths.iter().map(|s| s.as_str()));
    let out = rtdetr(&args);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), names.len());
    for (name, line) in names.iter().zip(&lines) {
        let objects = images[name.as_str()]["objects"].as_array().unwrap();
        let dets = line["detections"].as_array().unwrap();
        let boxes: Vec<(String, [f64; 4])> = dets
            .iter()
            .map(|d| {
                let b = &d["box"];
                let v = |k: &str| b[k].as_f64().unwrap();
                (d["label"].as_str().unwrap().to_string(), [v("xmin"), v("ymin"), v("xmax"), v("ymax")])
            })
            .collect();
        let mut used = vec![false; boxes.len()];
        for o in objects {
            let label = o["label"].as_str().unwrap();
            let b: Vec<f64> = o["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let g = [b[0], b[1], b[2], b[3]];
            let hit = boxes.iter().enumerate().find(|(j, (l, d))| !used[*j] && l == label && iou(*d, g) >= 0.5);
            match hit {
                Some((j, _)) => used[j] = true,
                None => panic!("{name}: {label} at {g:?} not found; detections: {boxes:?}"),
            }
        }
        // No false positives: every other confident detection is a duplicate of a drawn
        // shape of the same class (DETR has no NMS; the small demo model emits a few).
        let gts: Vec<(String, [f64; 4])> = objects
            .iter()
            .map(|o| {
                let b: Vec<f64> = o["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                (o["label"].as_str().unwrap().to_string(), [b[0], b[1], b[2], b[3]])
            })
            .collect();
        let false_positives: Vec<_> = boxes
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|(b, _)| b)
            .filter(|(l, d)| !gts.iter().any(|(gl, g)| gl == l && iou(*d, *g) >= 0.5))
            .collect();
        assert!(false_positives.is_empty(), "{name}: false positives {false_positives:?}");
    }
}

/// `rtdetr eval` on the held-out generated set reproduces the AP that transformers +
/// pycocotools gave for the same checkpoint and files (tools/demo_reference.py), and the
/// checkpoint is accurate.
#[test]
fn demo_model_eval_matches_reference_and_is_accurate() {
    let dir = root().join("tests/data/shapes-heldout");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let out = rtdetr(&[
        "eval",
        "--model",
        "models/shapes-demo",
        "--images",
        "tests/data/shapes-heldout/images",
        "--annotations",
        "tests/data/shapes-heldout/instances.json",
        "--batch-size",
        "4",
        "--json",
    ]);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"] {
        let (g, w) = (got[key].as_f64().unwrap(), reference["stats"][key].as_f64().unwrap());
        assert!((g - w).abs() <= 2e-3, "{key}: rtdetr {g} vs transformers+pycocotools {w}");
    }
    let ap = got["AP"].as_f64().unwrap();
    assert!(ap >= 0.80, "demo checkpoint AP {ap} < 0.80");
}
