//! The `rtdetr` binary end to end: JSON output equal to the reference detections, and
//! bad input answered with one clear error line and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rtdetr"));
    // No backtraces may reach users even when the environment asks for them.
    c.env("RUST_BACKTRACE", "1");
    c
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rtdetr/tests/fixtures")
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtdetr-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run rtdetr")
}

/// Exit code 1, exactly one non-empty stderr line starting with "error:", no panic text.
fn assert_clean_error(out: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(mentions), "error should mention {mentions:?}: {stderr}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "internal error"] {
        assert!(!stderr.contains(bad), "{stderr}");
    }
}

#[test]
fn json_output_equals_reference_detections() {
    // RT-DETR, both RT-DETRv2 sampling methods and D-FINE (two and three levels), through
    // the same command.
    for name in ["tiny-bottleneck", "tiny-v2", "tiny-v2-discrete", "tiny-dfine-n", "tiny-dfine", "tiny-dfine-discrete"]
    {
        json_output_equals_reference(name);
    }
}

fn json_output_equals_reference(name: &str) {
    let model = fixtures().join(name);
    let text = std::fs::read_to_string(model.join("detections.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let images = ["photo_exif.jpg", "photo.png", "gray.png", "rgba.png"];
    let paths: Vec<String> =
        images.iter().map(|f| fixtures().join("images").join(f).to_string_lossy().into_owned()).collect();
    let mut args =
        vec!["detect", "--model", model.to_str().unwrap(), "--json", "--threshold", "0.3", "--batch-size", "2"];
    args.extend(paths.iter().map(|s| s.as_str()));
    let out = run(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), images.len());
    for ((line, f), p) in lines.iter().zip(images).zip(&paths) {
        let want = &reference[f]["0.3"];
        assert_eq!(line["image"], p.as_str());
        assert_eq!(line["width"], want["width"]);
        assert_eq!(line["height"], want["height"]);
        let (got, exp) = (line["detections"].as_array().unwrap(), want["detections"].as_array().unwrap());
        assert_eq!(got.len(), exp.len(), "{f}");
        for (g, e) in got.iter().zip(exp) {
            assert_eq!(g["label"], e["label"]);
            assert_eq!(g["class_id"], e["class_id"]);
            assert!((g["score"].as_f64().unwrap() - e["score"].as_f64().unwrap()).abs() <= 1e-4);
            let (w, h) = (want["width"].as_f64().unwrap(), want["height"].as_f64().unwrap());
            for (k, lim) in [("xmin", w), ("ymin", h), ("xmax", w), ("ymax", h)] {
                let ev = e["box"][k].as_f64().unwrap().clamp(0.0, lim);
                assert!((g["box"][k].as_f64().unwrap() - ev).abs() <= 0.1, "{f} {k}");
            }
            // Exactly the documented keys.
            let mut keys: Vec<&String> = g.as_object().unwrap().keys().collect();
            keys.sort();
            assert_eq!(keys, ["box", "class_id", "label", "score"]);
        }
    }
}

/// `rtdetr eval` on each architecture, with the reference's own detections (transformers,
/// score >= 0.3) on the fixture images as the ground truth: the model finds every one of
/// them first (boxes clipped to the image, as rtdetr gives them), at IoU near 1 (AP 1 at every IoU threshold); a wrong box, score order,
/// class mapping or image size would lower it.
#[test]
fn eval_scores_the_reference_detections_as_perfect() {
    for name in ["tiny-bottleneck", "tiny-v2", "tiny-dfine-n", "tiny-dfine", "tiny-dfine-discrete"] {
        let dir = fixtures().join(name);
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("detections.json")).unwrap()).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let labels = config["id2label"].as_object().unwrap();
        let categories: Vec<_> = labels
            .iter()
            .map(|(id, label)| serde_json::json!({"id": id.parse::<u64>().unwrap() + 1, "name": label}))
            .collect();
        let (mut images, mut annotations) = (Vec::new(), Vec::new());
        for (i, (file, at)) in reference.as_object().unwrap().iter().enumerate() {
            let r = &at["0.3"];
            images
                .push(serde_json::json!({"id": i + 1, "file_name": file, "width": r["width"], "height": r["height"]}));
            let (iw, ih) = (r["width"].as_f64().unwrap(), r["height"].as_f64().unwrap());
            for d in r["detections"].as_array().unwrap() {
                // rtdetr clips boxes to the image; transformers does not.
                let b = &d["box"];
                let coord = |k: &str, lim: f64| b[k].as_f64().unwrap().clamp(0.0, lim);
                let (x0, y0) = (coord("xmin", iw), coord("ymin", ih));
                let (w, h) = (coord("xmax", iw) - x0, coord("ymax", ih) - y0);
                if w <= 0.0 || h <= 0.0 {
                    continue;
                }
                annotations.push(serde_json::json!({
                    "id": annotations.len() + 1, "image_id": i + 1, "category_id": d["class_id"].as_u64().unwrap() + 1,
                    "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0,
                }));
            }
        }
        assert!(annotations.len() >= 8, "{name}: too few reference detections to score");
        let tmp = tmp_dir(&format!("eval-{name}"));
        let gt = tmp.join("instances.json");
        let body = serde_json::json!({"images": images, "annotations": annotations, "categories": categories});
        std::fs::write(&gt, body.to_string()).unwrap();
        let out = run(&[
            "eval",
            "--model",
            dir.to_str().unwrap(),
            "--images",
            fixtures().join("images").to_str().unwrap(),
            "--annotations",
            gt.to_str().unwrap(),
            "--batch-size",
            "2",
            "--json",
        ]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in ["AP", "AP50", "AP75"] {
            let v = got[key].as_f64().unwrap();
            assert!(v >= 0.999, "{name}: {key} {v} with its own reference detections as ground truth: {got}");
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

#[test]
fn output_writes_annotated_image_and_table() {
    let dir = tmp_dir("annotate");
    let target = dir.join("annotated.png");
    let model = fixtures().join("tiny-basic-legacy");
    let img = fixtures().join("images/photo.png");
    let out = run(&[
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--threshold",
        "0.2",
        "--output",
        target.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("detection(s)"), "{stdout}");
    let annotated = image::open(&target).unwrap().to_rgb8();
    let original = image::open(&img).unwrap().to_rgb8();
    assert_eq!(annotated.dimensions(), original.dimensions());
    assert_ne!(annotated.as_raw(), original.as_raw(), "boxes were drawn");
}

#[test]
fn classes_filter_and_decoder_layers() {
    let model = fixtures().join("tiny-bottleneck");
    let img = fixtures().join("images/photo.png");
    let out = run(&[
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--threshold",
        "0",
        "--classes",
        "class_1,class_3",
        "--decoder-layers",
        "2",
        img.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dets = v["detections"].as_array().unwrap();
    assert!(!dets.is_empty());
    assert!(dets.iter().all(|d| d["label"] == "class_1" || d["label"] == "class_3"));
}

#[test]
fn missing_image_file() {
    let model = fixtures().join("tiny-bottleneck");
    assert_clean_error(
        &run(&["detect", "--model", model.to_str().unwrap(), "/nonexistent/cat.jpg"]),
        "/nonexistent/cat.jpg",
    );
}

#[test]
fn not_an_image() {
    let dir = tmp_dir("notimage");
    let f = dir.join("notes.jpg");
    std::fs::write(&f, b"this is not an image at all").unwrap();
    let model = fixtures().join("tiny-bottleneck");
    assert_clean_error(&run(&["detect", "--model", model.to_str().unwrap(), f.to_str().unwrap()]), "notes.jpg");
}

#[test]
fn truncated_jpeg() {
    let dir = tmp_dir("truncated");
    let bytes = std::fs::read(fixtures().join("images/photo_exif.jpg")).unwrap();
    let f = dir.join("cut.jpg");
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let model = fixtures().join("tiny-bottleneck");
    assert_clean_error(&run(&["detect", "--model", model.to_str().unwrap(), f.to_str().unwrap()]), "truncated");
}

#[test]
fn wrong_model_dir() {
    let img = fixtures().join("images/photo.png");
    let dir = tmp_dir("emptymodel");
    assert_clean_error(&run(&["detect", "--model", dir.to_str().unwrap(), img.to_str().unwrap()]), "config.json");
    assert_clean_error(&run(&["detect", "--model", "/no/such/model/dir", img.to_str().unwrap()]), "/no/such/model/dir");
}

#[test]
fn malformed_config_json() {
    let dir = tmp_dir("badconfig");
    let src = fixtures().join("tiny-bottleneck");
    for f in ["model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("config.json"), b"{\"model_type\": \"rt_detr\", \"d_model\": ").unwrap();
    let img = fixtures().join("images/photo.png");
    assert_clean_error(&run(&["detect", "--model", dir.to_str().unwrap(), img.to_str().unwrap()]), "config.json");
    // Valid JSON that does not match the weights: the error names the tensor.
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"encoder_ffn_dim\": 64", "\"encoder_ffn_dim\": 80");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    assert_clean_error(&run(&["detect", "--model", dir.to_str().unwrap(), img.to_str().unwrap()]), "fc1");
}

#[test]
fn corrupt_safetensors() {
    let dir = tmp_dir("badweights");
    let src = fixtures().join("tiny-bottleneck");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}").unwrap();
    let img = fixtures().join("images/photo.png");
    assert_clean_error(&run(&["detect", "--model", dir.to_str().unwrap(), img.to_str().unwrap()]), "model.safetensors");
}

#[test]
fn bad_options() {
    let model = fixtures().join("tiny-bottleneck");
    let img = fixtures().join("images/photo.png");
    let m = model.to_str().unwrap();
    let i = img.to_str().unwrap();
    assert_clean_error(&run(&["detect", "--model", m, "--classes", "unicorn", i]), "unicorn");
    assert_clean_error(&run(&["detect", "--model", m, "--size", "500", i]), "--size");
    assert_clean_error(&run(&["detect", "--model", m, "--decoder-layers", "9", i]), "--decoder-layers");
}
