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

/// `--track` over a list of images (a 320x240 window panning right 12 px per image across
/// examples/shapes-1.png, so the triangle moves left): one id per object across the
/// sequence, line-crossing counts, a summary line, and ids and trails drawn.
#[test]
fn track_images_as_a_sequence() {
    let dir = std::env::temp_dir().join(format!("rtdetr-track-images-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out_dir = dir.join("annotated");
    std::fs::create_dir_all(&dir).unwrap();
    let img = image::open(root().join("examples/shapes-1.png")).unwrap().to_rgb8();
    let frames: Vec<String> = (0..12u32)
        .map(|i| {
            let p = dir.join(format!("frame-{i:02}.png"));
            image::imageops::crop_imm(&img, 12 * i, 30, 320, 240).to_image().save(&p).unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect();
    let out_arg = out_dir.to_string_lossy().into_owned();
    // A vertical line at x = 180, drawn top to bottom: the triangle's centre (x 246 -> 115)
    // crosses it leftwards, which is "in".
    let mut args = vec!["detect", "--model", "models/shapes-demo", "--json", "--threshold", "0.3", "--track"];
    args.extend(["--line", "180,0,180,240", "--output", &out_arg]);
    args.extend(frames.iter().map(|s| s.as_str()));
    let out = rtdetr(&args);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 13, "one line per image and a summary");
    let mut triangle_ids = Vec::new();
    for (i, l) in lines[..12].iter().enumerate() {
        assert_eq!((l["frame"].as_u64(), l["image"].as_str()), (Some(i as u64), Some(frames[i].as_str())), "{l}");
        for d in l["detections"].as_array().unwrap() {
            assert!(d["track_id"].as_u64().is_some_and(|id| id >= 1), "{l}");
            assert!(d["score"].as_f64().unwrap() > 0.3, "{l}");
            if d["label"] == "triangle" {
                triangle_ids.push(d["track_id"].as_u64().unwrap());
            }
        }
        assert!(l["counts"]["in"].is_object() && l["counts"]["out"].is_object(), "{l}");
    }
    assert_eq!(triangle_ids, vec![1; 12], "the triangle keeps id 1 in every image");
    assert_eq!(lines[0]["counts"], serde_json::json!({"in": {}, "out": {}}));
    assert_eq!(lines[11]["counts"], serde_json::json!({"in": {"triangle": 1}, "out": {}}));
    let summary = &lines[12]["summary"];
    assert_eq!((summary["frames"].as_u64(), &summary["counts"]["in"]), (Some(12), &serde_json::json!({"triangle": 1})));
    assert!(summary["tracks"].as_u64().is_some_and(|n| n >= 1), "{summary}");
    // The last annotated image: the triangle's trail (its centres, y ~195, from x 246 down
    // to 115) in its class colour where nothing else is drawn, at x = 220.
    let last = image::open(out_dir.join("frame-11.png")).unwrap().to_rgb8();
    let colour = rtdetr::io::draw::class_color(3);
    assert!((188..202).any(|y| last.get_pixel(220, y) == &colour), "no trail drawn at x = 220");
    let plain = image::imageops::crop_imm(&img, 132, 30, 320, 240).to_image();
    assert!(!(188..202).any(|y| plain.get_pixel(220, y) == &colour), "the trail colour is in the plain image");
    // Without --track the flags that need it are refused.
    let out = Command::new(env!("CARGO_BIN_EXE_rtdetr"))
        .current_dir(root())
        .args(["detect", "--model", "models/shapes-demo", "--line", "0,0,10,10", "examples/shapes-1.png"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--track"));
    let _ = std::fs::remove_dir_all(&dir);
}
