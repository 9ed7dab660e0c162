//! Video through the FFmpeg libraries (build feature `video`): a clip generated here with
//! the `ffmpeg` tool from moving shapes, JSON Lines per frame, an annotated output that
//! decodes with the same frame count.
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtdetr-video-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 12 frames, 320x240: a window panning right across a bundled example image, so the
/// shapes move left through the frame.
fn make_clip(path: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-loop", "1", "-framerate", "12", "-i"])
        .arg(root().join("examples/shapes-1.png"))
        .args(["-vf", "crop=320:240:x='t*100':y=30"])
        .args(["-frames:v", "12", "-pix_fmt", "yuv420p"])
        .arg(path)
        .status()
        .expect("the ffmpeg tool is installed with the FFmpeg libraries");
    assert!(status.success());
}

fn frame_count(path: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames"])
        .args(["-of", "default=nokey=1:noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("frame count")
}

#[test]
fn video_json_lines_and_annotated_output() {
    let dir = tmp_dir("clip");
    let clip = dir.join("clip.mp4");
    make_clip(&clip);
    let annotated = dir.join("annotated.mp4");
    let out = Command::new(env!("CARGO_BIN_EXE_rtdetr"))
        .current_dir(root())
        .args(["detect", "--model", "models/shapes-demo", "--json", "--threshold", "0.3", "--output"])
        .arg(&annotated)
        .arg(&clip)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 12, "one JSON line per frame");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["frame"], i as u64);
        assert_eq!((l["width"].as_u64(), l["height"].as_u64()), (Some(320), Some(240)));
        assert!(l["detections"].is_array());
    }
    // The triangle of the example image is tracked as the window pans ~90 px right.
    let triangle_x: Vec<f64> = lines
        .iter()
        .filter_map(|l| {
            let dets = l["detections"].as_array().unwrap();
            dets.iter().find(|d| d["label"] == "triangle").map(|d| d["box"]["xmin"].as_f64().unwrap())
        })
        .collect();
    assert!(triangle_x.len() >= 10, "triangle found in most frames: {triangle_x:?}");
    assert!(triangle_x.first().unwrap() - triangle_x.last().unwrap() > 50.0, "it moves left: {triangle_x:?}");
    assert_eq!(frame_count(&annotated), 12, "annotated video decodes with every frame");

    // --every 3 runs the model on frames 0, 3, 6, 9.
    let out = Command::new(env!("CARGO_BIN_EXE_rtdetr"))
        .current_dir(root())
        .args(["detect", "--model", "models/shapes-demo", "--json", "--every", "3"])
        .arg(&clip)
        .output()
        .unwrap();
    assert!(out.status.success());
    let frames: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(frames, vec![0, 3, 6, 9]);
}

#[test]
fn not_a_video() {
    let dir = tmp_dir("bad");
    let f = dir.join("broken.mp4");
    std::fs::write(&f, b"definitely not a video").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rtdetr"))
        .current_dir(root())
        .args(["detect", "--model", "models/shapes-demo"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("broken.mp4"), "{err}");
    assert!(!err.contains("panicked"));
}

/// `--track` on the clip: one id for the triangle in every frame, cumulative line counts
/// on every JSON line and in the summary, an annotated video (ids, trails, the line) that
/// decodes with every frame; with `--every 3` the tracker sees frames 0, 3, 6, 9.
#[test]
fn video_tracking_ids_and_line_counts() {
    let dir = tmp_dir("track");
    let clip = dir.join("clip.mp4");
    make_clip(&clip);
    let annotated = dir.join("tracked.mp4");
    // The triangle's centre moves from x 246 to 155 (100 px/s at 12 fps): it crosses the
    // vertical line x = 200, drawn top to bottom, leftwards: "in".
    let out = Command::new(env!("CARGO_BIN_EXE_rtdetr"))
        .current_dir(root())
        .args(["detect", "--model", "models/shapes-demo", "--json", "--threshold", "0.3", "--track"])
        .args(["--line", "200,0,200,240", "--output"])
        .arg(&annotated)
        .arg(&clip)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 13, "one JSON line per frame and a summary");
    let mut triangle_ids = Vec::new();
    for (i, l) in lines[..12].iter().enumerate() {
        assert_eq!(l["frame"], i as u64);
        assert!(l["time_s"].is_number());
        for d in l["detections"].as_array().unwrap() {
            let id = d["track_id"].as_u64().unwrap_or_else(|| panic!("no track_id: {l}"));
            if d["label"] == "triangle" {
                triangle_ids.push(id);
            }
        }
        assert!(l["counts"]["in"].is_object(), "{l}");
    }
    assert!(triangle_ids.len() >= 10, "triangle tracked in most frames: {triangle_ids:?}");
    assert!(triangle_ids.iter().all(|&id| id == triangle_ids[0]), "one id: {triangle_ids:?}");
    assert_eq!(lines[0]["counts"], serde_json::json!({"in": {}, "out": {}}));
    assert_eq!(lines[11]["counts"], serde_json::json!({"in": {"triangle": 1}, "out": {}}));
    assert_eq!(lines[12]["summary"]["counts"], lines[11]["counts"]);
    assert_eq!(lines[12]["summary"]["frames"], 12);
    assert_eq!(frame_count(&annotated), 12, "annotated video decodes with every frame");

    let out = Command::new(env!("CARGO_BIN_EXE_rtdetr"))
        .current_dir(root())
        .args(["detect", "--model", "models/shapes-demo", "--json", "--track", "--every", "3"])
        .arg(&clip)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let frames: Vec<u64> = lines.iter().filter_map(|l| l["frame"].as_u64()).collect();
    assert_eq!(frames, vec![0, 3, 6, 9]);
    let ids: Vec<u64> = lines[..4]
        .iter()
        .flat_map(|l| l["detections"].as_array().unwrap().iter())
        .filter(|d| d["label"] == "triangle")
        .map(|d| d["track_id"].as_u64().unwrap())
        .collect();
    assert!(ids.len() >= 3 && ids.iter().all(|&id| id == ids[0]), "one id across skipped frames: {ids:?}");
    assert!(lines[4]["summary"].is_object() && lines[4]["summary"].get("counts").is_none(), "{}", lines[4]);
}
