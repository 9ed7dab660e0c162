//! Track the output of `rtdetr detect --json`: one JSON object per frame on stdin, one per
//! frame on stdout.
//!
//! ```sh
//! rtdetr detect --model models/shapes-demo --json --threshold 0.05 frames/*.png \
//!   | cargo run --release -p rtdetr-track --example track_jsonl -- --track-thresh 0.5
//! ```
//!
//! Input line: `{"image": .., "detections": [{"class_id": 3, "label": "triangle",
//! "score": 0.95, "box": {"xmin": .., "ymin": .., "xmax": .., "ymax": ..}}, ..]}`, with an
//! optional `"frame": N` (frame index, for dropped frames; default: the line number).
//! Output line: `{"frame": N, "image": .., "tracks": [{"track_id": 1, "class_id": 3,
//! "label": "triangle", "score": 0.95, "box": {..}, "detection_index": 0}, ..]}`.
//!
//! Options (defaults: `ByteTrackConfig::default()`): --track-thresh F, --low-thresh F,
//! --new-track-thresh F, --match-thresh F, --low-match-thresh F, --unconfirmed-match-thresh F,
//! --track-buffer N, --frame-rate F, --min-consecutive-frames N, --class-agnostic, --no-fuse-score.

use std::io::{BufRead, Write};

use rtdetr_track::{ByteTrackConfig, ByteTracker, Detection};
use serde_json::{json, Value};

fn parse_args() -> Result<ByteTrackConfig, String> {
    let mut c = ByteTrackConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let float = |s: String| s.parse::<f64>().map_err(|e| format!("{s}: {e}"));
        let int = |s: String| s.parse::<u32>().map_err(|e| format!("{s}: {e}"));
        match flag.as_str() {
            "--track-thresh" => c.track_thresh = float(value(&flag)?)?,
            "--low-thresh" => c.low_thresh = float(value(&flag)?)?,
            "--new-track-thresh" => c.new_track_thresh = Some(float(value(&flag)?)?),
            "--match-thresh" => c.match_thresh = float(value(&flag)?)?,
            "--low-match-thresh" => c.low_match_thresh = float(value(&flag)?)?,
            "--unconfirmed-match-thresh" => c.unconfirmed_match_thresh = float(value(&flag)?)?,
            "--track-buffer" => c.track_buffer = int(value(&flag)?)?,
            "--frame-rate" => c.frame_rate = float(value(&flag)?)?,
            "--min-consecutive-frames" => c.min_consecutive_frames = int(value(&flag)?)?,
            "--class-agnostic" => c.class_aware = false,
            "--no-fuse-score" => c.fuse_score = false,
            "-h" | "--help" => {
                println!("usage: track_jsonl [options] < detections.jsonl > tracks.jsonl (see the source header)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn field(v: &Value, key: &str) -> Result<f32, String> {
    v.get(key).and_then(Value::as_f64).map(|x| x as f32).ok_or_else(|| format!("missing number {key:?}"))
}

/// Detections and their labels from one input line.
fn parse_line(v: &Value) -> Result<(Vec<Detection>, Vec<Value>), String> {
    let dets = v.get("detections").and_then(Value::as_array).ok_or("missing \"detections\" array")?;
    let mut out = Vec::with_capacity(dets.len());
    let mut labels = Vec::with_capacity(dets.len());
    for d in dets {
        let b = d.get("box").ok_or("detection without \"box\"")?;
        let class_id = d.get("class_id").and_then(Value::as_u64).ok_or("detection without \"class_id\"")?;
        out.push(Detection {
            bbox: [field(b, "xmin")?, field(b, "ymin")?, field(b, "xmax")?, field(b, "ymax")?],
            score: field(d, "score")?,
            class_id: usize::try_from(class_id).map_err(|e| e.to_string())?,
        });
        labels.push(d.get("label").cloned().unwrap_or(Value::Null));
    }
    Ok((out, labels))
}

fn run() -> Result<(), String> {
    let config = parse_args()?;
    let mut tracker = ByteTracker::new(config).map_err(|e| e.to_string())?;
    let stdin = std::io::stdin();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let (dets, labels) = parse_line(&v).map_err(|e| format!("line {}: {e}", n + 1))?;
        let frame = v.get("frame").and_then(Value::as_u64).unwrap_or(n as u64);
        let tracks = tracker.update_with_frame(frame, &dets).map_err(|e| format!("line {}: {e}", n + 1))?;
        let tracks: Vec<Value> = tracks
            .iter()
            .map(|t| {
                json!({
                    "track_id": t.track_id,
                    "class_id": t.class_id,
                    "label": labels.get(t.detection_index).cloned().unwrap_or(Value::Null),
                    "score": t.score,
                    "box": {"xmin": t.bbox[0], "ymin": t.bbox[1], "xmax": t.bbox[2], "ymax": t.bbox[3]},
                    "detection_index": t.detection_index,
                })
            })
            .collect();
        let out = json!({"frame": frame, "image": v.get("image").cloned().unwrap_or(Value::Null), "tracks": tracks});
        writeln!(stdout, "{out}").map_err(|e| format!("stdout: {e}"))?;
    }
    stdout.flush().map_err(|e| format!("stdout: {e}"))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
