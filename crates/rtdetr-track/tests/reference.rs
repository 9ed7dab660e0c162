//! Replays the fixtures of `tools/gen_track_reference.py` (supervision 0.30.9 `sv.ByteTrack`
//! and scipy's `linear_sum_assignment`) and requires the same answers: identical track
//! ids, output order and detection indices in every frame, boxes within 1e-3 px.

use std::collections::HashMap;
use std::path::PathBuf;

use rtdetr_track::{ByteTrackConfig, ByteTracker, Detection, Track};
use serde_json::Value;

/// Every fixture the generator writes; a missing file fails the test.
const FIXTURES: &[&str] = &[
    "crossing",
    "occlusion",
    "low_score",
    "enter_leave",
    "multiclass_agnostic",
    "multiclass_aware",
    "dropped_frames",
    "params",
    "duplicates_agnostic",
    "duplicates_aware",
    "invalid",
    "crowd",
    "crowd_agnostic",
];

const BOX_TOL: f64 = 1e-3;

fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(format!("{name}.json"))
}

fn load(name: &str) -> Value {
    let path = data_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("number"),
        Value::String(s) if s == "nan" => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        other => panic!("not a number: {other}"),
    }
}

struct Frame {
    index: u64,
    dets: Vec<Detection>,
    /// (track id, detection index, box)
    expected: Vec<(u64, usize, [f64; 4])>,
}

struct Fixture {
    name: String,
    config: ByteTrackConfig,
    frames: Vec<Frame>,
}

fn fixture(name: &str) -> Fixture {
    let v = load(name);
    let p = &v["params"];
    let config = ByteTrackConfig {
        track_thresh: num(&p["track_activation_threshold"]),
        match_thresh: num(&p["minimum_matching_threshold"]),
        track_buffer: num(&p["lost_track_buffer"]) as u32,
        frame_rate: num(&p["frame_rate"]),
        min_consecutive_frames: num(&p["minimum_consecutive_frames"]) as u32,
        class_aware: p["class_aware"].as_bool().expect("class_aware"),
        ..ByteTrackConfig::reference()
    };
    let frames = v["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| Frame {
            index: f["frame"].as_u64().expect("frame"),
            dets: f["dets"]
                .as_array()
                .expect("dets")
                .iter()
                .map(|d| {
                    let d: Vec<f64> = d.as_array().expect("det").iter().map(num).collect();
                    Detection {
                        bbox: [d[0] as f32, d[1] as f32, d[2] as f32, d[3] as f32],
                        score: d[4] as f32,
                        class_id: d[5] as usize,
                    }
                })
                .collect(),
            expected: f["tracks"]
                .as_array()
                .expect("tracks")
                .iter()
                .map(|t| {
                    let t: Vec<f64> = t.as_array().expect("track").iter().map(num).collect();
                    (t[0] as u64, t[1] as usize, [t[2], t[3], t[4], t[5]])
                })
                .collect(),
        })
        .collect();
    Fixture { name: name.to_string(), config, frames }
}

fn run(fx: &Fixture, use_frame_index: bool) -> Vec<Vec<Track>> {
    let mut tracker = ByteTracker::new(fx.config.clone()).expect("config");
    fx.frames
        .iter()
        .map(|f| {
            if use_frame_index {
                tracker.update_with_frame(f.index, &f.dets).expect("frame order")
            } else {
                tracker.update(&f.dets)
            }
        })
        .collect()
}

/// Differences from the reference, described; empty when equal.
fn compare(fx: &Fixture, got: &[Vec<Track>]) -> (Vec<String>, f64) {
    let mut errors = Vec::new();
    let mut max_err = 0.0f64;
    let mut class_of: HashMap<u64, usize> = HashMap::new();
    for (f, out) in fx.frames.iter().zip(got) {
        let got_ids: Vec<(u64, usize)> = out.iter().map(|t| (t.track_id, t.detection_index)).collect();
        let want_ids: Vec<(u64, usize)> = f.expected.iter().map(|e| (e.0, e.1)).collect();
        if got_ids != want_ids {
            errors.push(format!("frame {}: (id, detection) got {got_ids:?}, reference {want_ids:?}", f.index));
            continue;
        }
        for (t, e) in out.iter().zip(&f.expected) {
            for k in 0..4 {
                let d = (f64::from(t.bbox[k]) - e.2[k]).abs();
                max_err = max_err.max(d);
                if d > BOX_TOL {
                    errors
                        .push(format!("frame {} id {}: box {:?} vs reference {:?}", f.index, t.track_id, t.bbox, e.2));
                    break;
                }
            }
            let det = &f.dets[t.detection_index];
            if t.class_id != det.class_id || t.score != det.score {
                errors.push(format!("frame {} id {}: class/score not the detection's", f.index, t.track_id));
            }
            if fx.config.class_aware {
                let first = *class_of.entry(t.track_id).or_insert(t.class_id);
                if first != t.class_id {
                    errors
                        .push(format!("frame {} id {}: class changed {first} -> {}", f.index, t.track_id, t.class_id));
                }
            }
        }
    }
    (errors, max_err)
}

#[test]
fn same_tracks_as_reference() {
    let mut failures = Vec::new();
    let mut frames = 0;
    let mut tracks = 0;
    for name in FIXTURES {
        let fx = fixture(name);
        let got = run(&fx, true);
        let (errors, max_err) = compare(&fx, &got);
        frames += fx.frames.len();
        tracks += fx.frames.iter().map(|f| f.expected.len()).sum::<usize>();
        println!(
            "{:22} {:3} frames  max box error {max_err:.2e} px  {} mismatches",
            fx.name,
            fx.frames.len(),
            errors.len()
        );
        if !errors.is_empty() {
            failures.push(format!(
                "{}: {} mismatches, first: {}",
                fx.name,
                errors.len(),
                errors[..errors.len().min(5)].join("\n  ")
            ));
        }
    }
    println!("{} fixtures, {frames} frames, {tracks} track boxes compared", FIXTURES.len());
    assert!(failures.is_empty(), "differs from the reference:\n{}", failures.join("\n"));
}

#[test]
fn fixtures_exercise_what_they_claim() {
    // Class-aware and class-agnostic runs of the same detections must differ
    // (the person takes the lost car's id only when class-agnostic).
    let a = fixture("multiclass_agnostic");
    let b = fixture("multiclass_aware");
    let ids =
        |fx: &Fixture| fx.frames.iter().map(|f| f.expected.iter().map(|e| e.0).collect::<Vec<_>>()).collect::<Vec<_>>();
    assert_ne!(ids(&a), ids(&b));
    // De-duplication across classes happens only when class-agnostic.
    assert_ne!(ids(&fixture("duplicates_agnostic")), ids(&fixture("duplicates_aware")));
    // Invalid boxes are present in the input.
    let inv = fixture("invalid");
    assert!(inv.frames.iter().flat_map(|f| &f.dets).any(|d| d.bbox.iter().any(|v| v.is_nan())));
    // Frame gaps are present.
    let gaps = fixture("dropped_frames");
    assert!(gaps.frames.windows(2).any(|w| w[1].index > w[0].index + 1));
}

#[test]
fn dropped_frames_need_prediction_through_the_gap() {
    // Treating the dropped frames as if they had not happened (plain `update`) loses ids
    // of the fast objects; predicting through the gap keeps them (same_tracks_as_reference).
    let fx = fixture("dropped_frames");
    let naive = run(&fx, false);
    let (errors, _) = compare(&fx, &naive);
    assert!(!errors.is_empty(), "the gaps in this fixture should matter");
}

#[test]
fn deterministic() {
    for name in ["crowd", "enter_leave"] {
        let fx = fixture(name);
        let a = run(&fx, true);
        let b = run(&fx, true);
        assert_eq!(a, b);
        // and the same after reset
        let mut t = ByteTracker::new(fx.config.clone()).expect("config");
        for f in &fx.frames {
            t.update_with_frame(f.index, &f.dets).expect("order");
        }
        t.reset();
        let c: Vec<Vec<Track>> =
            fx.frames.iter().map(|f| t.update_with_frame(f.index, &f.dets).expect("order")).collect();
        assert_eq!(a, c);
    }
}

#[test]
fn assignment_same_as_scipy() {
    let v = load("lsap");
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40);
    for (k, case) in cases.iter().enumerate() {
        let m: Vec<Vec<f64>> = case["cost"]
            .as_array()
            .expect("cost")
            .iter()
            .map(|r| r.as_array().expect("row").iter().map(num).collect())
            .collect();
        let (rows, cols) = (m.len(), m[0].len());
        let flat: Vec<f64> = m.concat();
        let want: Vec<(usize, usize)> = case["pairs"]
            .as_array()
            .expect("pairs")
            .iter()
            .map(|p| (p[0].as_u64().expect("r") as usize, p[1].as_u64().expect("c") as usize))
            .collect();
        let got = rtdetr_track::lsap::linear_sum_assignment(&flat, rows, cols).expect("finite");
        assert_eq!(got, want, "case {k}: {rows}x{cols} {m:?}");
    }
}
