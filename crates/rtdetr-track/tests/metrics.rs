//! Tracking quality on a committed generated clip, without Python.
//!
//! `tests/data/track_metrics.json` is clip 0 of `tools/track_eval.py` (150 frames of moving
//! shapes, two crossings, one of same-class shapes): its ground truth, the demo model's detections
//! (`rtdetr detect --json`; boxes rounded to 0.01 px, scores to 1e-4, scores <= 0.1 left
//! out, which the tracker ignores anyway) and the TrackEval 1.3.0 figures of several tracker
//! settings on exactly those detections (`tools/track_eval.py --write-test-data`). These
//! tests run [`ByteTracker`] over the detections, recompute HOTA, MOTA, IDF1 and the ID
//! switches the way TrackEval does (`trackeval/metrics/{hota,clear,identity}.py`, the
//! functions below) and require:
//!
//! - the same TP / FP / FN / ID-switch / IDTP counts as TrackEval, exactly, and HOTA,
//!   MOTA and IDF1 within [`TOL`] (0.1 percentage points, the README's precision) of
//!   TrackEval's, for our defaults (the README's figures), two deliberately worse settings
//!   and [`ByteTrackConfig::reference()`] (whose figures are those of supervision's
//!   `sv.ByteTrack`, run by the tool);
//! - the defaults to score better than the worse settings and the reference, so a tracker
//!   regression fails here.
//!
//! Regenerate the data (after a tracker change that moves the figures, and then update the
//! README's table) with
//! `python tools/track_eval.py --track-jsonl target/release/examples/track_jsonl
//! --write-test-data crates/rtdetr-track/tests/data/track_metrics.json`.

use std::collections::HashMap;
use std::path::PathBuf;

use rtdetr_track::lsap::linear_sum_assignment;
use rtdetr_track::{ByteTrackConfig, ByteTracker, Detection};
use serde_json::Value;

/// Largest accepted difference from TrackEval, in percentage points (HOTA, MOTA, IDF1).
const TOL: f64 = 0.1;

/// IoU threshold of CLEAR-MOT and the identity metrics (TrackEval's `THRESHOLD`).
const IOU_MATCH: f64 = 0.5;

/// numpy's `np.finfo('float').eps`, which TrackEval uses in its comparisons.
const EPS: f64 = f64::EPSILON;

/// Per frame: (id, box x1 y1 x2 y2).
type Frames = Vec<Vec<(u64, [f64; 4])>>;

// ---------------------------------------------------------------------------------------
// Metrics (TrackEval 1.3.0, one sequence)
// ---------------------------------------------------------------------------------------

/// IoU, computed in the same order as `tools/track_eval.py`'s numpy `iou_matrix`.
fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    inter / (area_a + area_b - inter)
}

/// Row-major `gt x tracks` IoU matrix of one frame.
fn similarity(gt: &[(u64, [f64; 4])], tr: &[(u64, [f64; 4])]) -> Vec<f64> {
    gt.iter().flat_map(|(_, g)| tr.iter().map(move |(_, t)| iou(g, t))).collect()
}

/// Ids renumbered 0, 1, 2, ... in order of appearance (TrackEval's `gt_ids` /
/// `tracker_ids`), and how many there are.
fn dense_ids(frames: &Frames) -> (Vec<Vec<usize>>, usize) {
    let mut map = HashMap::new();
    let ids = frames
        .iter()
        .map(|f| {
            f.iter()
                .map(|(id, _)| {
                    let n = map.len();
                    *map.entry(*id).or_insert(n)
                })
                .collect()
        })
        .collect();
    (ids, map.len())
}

/// Maximum-score assignment (scipy's `linear_sum_assignment(-score)`, same algorithm and
/// tie-breaking).
fn max_assignment(score: &[f64], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    let cost: Vec<f64> = score.iter().map(|s| -s).collect();
    linear_sum_assignment(&cost, rows, cols).expect("finite scores")
}

/// CLEAR-MOT counts.
#[derive(Debug, Default, PartialEq)]
struct Clear {
    tp: usize,
    fp: usize,
    fn_: usize,
    idsw: usize,
}

impl Clear {
    /// MOTA = (TP - FP - IDSW) / (TP + FN), in percent.
    fn mota(&self) -> f64 {
        100.0 * (self.tp as f64 - self.fp as f64 - self.idsw as f64) / ((self.tp + self.fn_) as f64).max(1.0)
    }
}

/// CLEAR-MOT as TrackEval's `CLEAR.eval_sequence`: in every frame, ground truth and tracks
/// with IoU >= 0.5 are matched by a Hungarian assignment maximising `1000 x [the track was
/// this object's match in the previous frame] + IoU`, so a correspondence that is still
/// valid is kept. An ID switch is a matched object whose track differs from the last
/// track it was matched to (in any earlier frame). Frames without ground truth or without
/// tracks only count FP or FN and leave the previous-frame correspondences as they were.
fn clear(gt: &Frames, tr: &Frames) -> Clear {
    let (gt_ids, n_gt) = dense_ids(gt);
    let (tr_ids, _) = dense_ids(tr);
    let mut c = Clear::default();
    let mut last: Vec<Option<usize>> = vec![None; n_gt]; // last track matched, for ID switches
    let mut prev: Vec<Option<usize>> = vec![None; n_gt]; // track matched in the previous frame
    for t in 0..gt.len() {
        let (g, r) = (&gt_ids[t], &tr_ids[t]);
        if g.is_empty() || r.is_empty() {
            c.fp += r.len();
            c.fn_ += g.len();
            continue;
        }
        let sim = similarity(&gt[t], &tr[t]);
        let score: Vec<f64> = (0..g.len() * r.len())
            .map(|k| {
                let (i, j) = (k / r.len(), k % r.len());
                if sim[k] < IOU_MATCH - EPS {
                    0.0
                } else {
                    1000.0 * f64::from(u8::from(prev[g[i]] == Some(r[j]))) + sim[k]
                }
            })
            .collect();
        let matches: Vec<(usize, usize)> = max_assignment(&score, g.len(), r.len())
            .into_iter()
            .filter(|&(i, j)| score[i * r.len() + j] > EPS)
            .collect();
        prev.fill(None);
        for &(i, j) in &matches {
            let (gi, tj) = (g[i], r[j]);
            if last[gi].is_some_and(|l| l != tj) {
                c.idsw += 1;
            }
            last[gi] = Some(tj);
            prev[gi] = Some(tj);
        }
        c.tp += matches.len();
        c.fn_ += g.len() - matches.len();
        c.fp += r.len() - matches.len();
    }
    c
}

/// Identity counts.
#[derive(Debug, Default, PartialEq)]
struct Identity {
    idtp: usize,
    idfp: usize,
    idfn: usize,
}

impl Identity {
    /// IDF1 = IDTP / (IDTP + (IDFP + IDFN) / 2), in percent.
    fn idf1(&self) -> f64 {
        100.0 * self.idtp as f64 / (self.idtp as f64 + 0.5 * self.idfp as f64 + 0.5 * self.idfn as f64).max(1.0)
    }
}

/// IDF1 counts as TrackEval's `Identity.eval_sequence`: each ground-truth id is matched to
/// at most one track id, globally, maximising IDTP, the number of frames in which the two
/// boxes overlap with IoU >= 0.5. TrackEval solves this as a min-cost assignment with
/// dummy rows and columns (an id may stay unmatched); a rectangular maximum assignment of
/// the overlap counts has the same optimum (a pair without overlap adds nothing).
/// IDFN = ground-truth boxes - IDTP, IDFP = track boxes - IDTP.
fn identity(gt: &Frames, tr: &Frames) -> Identity {
    let (gt_ids, n_gt) = dense_ids(gt);
    let (tr_ids, n_tr) = dense_ids(tr);
    let mut overlap = vec![0.0f64; n_gt * n_tr];
    for t in 0..gt.len() {
        let sim = similarity(&gt[t], &tr[t]);
        for (i, &gi) in gt_ids[t].iter().enumerate() {
            for (j, &tj) in tr_ids[t].iter().enumerate() {
                if sim[i * tr_ids[t].len() + j] >= IOU_MATCH {
                    overlap[gi * n_tr + tj] += 1.0;
                }
            }
        }
    }
    let idtp: f64 = max_assignment(&overlap, n_gt, n_tr).iter().map(|&(i, j)| overlap[i * n_tr + j]).sum();
    let idtp = idtp as usize;
    let gt_boxes: usize = gt.iter().map(Vec::len).sum();
    let tr_boxes: usize = tr.iter().map(Vec::len).sum();
    Identity { idtp, idfp: tr_boxes - idtp, idfn: gt_boxes - idtp }
}

/// HOTA (percent) as TrackEval's `HOTA.eval_sequence`: a global alignment score per
/// (ground-truth id, track id) pair from the IoU shared between them over the clip; per
/// frame, a Hungarian assignment maximising alignment x IoU; then for each localisation
/// threshold alpha = 0.05, 0.10, ..., 0.95 the matches with IoU >= alpha give DetA =
/// TP / (TP + FN + FP) and AssA (mean over TP of TPA / (TPA + FNA + FPA));
/// HOTA = mean over alpha of sqrt(DetA x AssA).
fn hota(gt: &Frames, tr: &Frames) -> f64 {
    let (gt_ids, n_gt) = dense_ids(gt);
    let (tr_ids, n_tr) = dense_ids(tr);
    let alphas: Vec<f64> = (0..19).map(|a| 0.05 + 0.05 * a as f64).collect(); // np.arange(0.05, 0.99, 0.05)
    let sims: Vec<Vec<f64>> = gt.iter().zip(tr).map(|(g, r)| similarity(g, r)).collect();

    // Global alignment between ids.
    let mut potential = vec![0.0f64; n_gt * n_tr];
    let mut gt_count = vec![0.0f64; n_gt];
    let mut tr_count = vec![0.0f64; n_tr];
    for t in 0..gt.len() {
        let (g, r, sim) = (&gt_ids[t], &tr_ids[t], &sims[t]);
        let row_sum: Vec<f64> = (0..g.len()).map(|i| sim[i * r.len()..(i + 1) * r.len()].iter().sum()).collect();
        let col_sum: Vec<f64> = (0..r.len()).map(|j| (0..g.len()).map(|i| sim[i * r.len() + j]).sum()).collect();
        for (i, &gi) in g.iter().enumerate() {
            for (j, &tj) in r.iter().enumerate() {
                let denom = col_sum[j] + row_sum[i] - sim[i * r.len() + j];
                if denom > EPS {
                    potential[gi * n_tr + tj] += sim[i * r.len() + j] / denom;
                }
            }
        }
        g.iter().for_each(|&gi| gt_count[gi] += 1.0);
        r.iter().for_each(|&tj| tr_count[tj] += 1.0);
    }
    let alignment: Vec<f64> =
        (0..n_gt * n_tr).map(|k| potential[k] / (gt_count[k / n_tr] + tr_count[k % n_tr] - potential[k])).collect();

    // Per-frame matching, counted for every alpha.
    let n_a = alphas.len();
    let (mut tp, mut fn_, mut fp) = (vec![0.0f64; n_a], vec![0.0f64; n_a], vec![0.0f64; n_a]);
    let mut matches = vec![vec![0.0f64; n_gt * n_tr]; n_a];
    for t in 0..gt.len() {
        let (g, r, sim) = (&gt_ids[t], &tr_ids[t], &sims[t]);
        if g.is_empty() || r.is_empty() {
            for a in 0..n_a {
                fp[a] += r.len() as f64;
                fn_[a] += g.len() as f64;
            }
            continue;
        }
        let score: Vec<f64> =
            (0..g.len() * r.len()).map(|k| alignment[g[k / r.len()] * n_tr + r[k % r.len()]] * sim[k]).collect();
        let pairs = max_assignment(&score, g.len(), r.len());
        for (a, alpha) in alphas.iter().enumerate() {
            let mut m = 0;
            for &(i, j) in &pairs {
                if sim[i * r.len() + j] >= alpha - EPS {
                    m += 1;
                    matches[a][g[i] * n_tr + r[j]] += 1.0;
                }
            }
            tp[a] += m as f64;
            fn_[a] += (g.len() - m) as f64;
            fp[a] += (r.len() - m) as f64;
        }
    }
    let per_alpha = (0..n_a).map(|a| {
        let ass_a: f64 = (0..n_gt * n_tr)
            .map(|k| {
                let mc = matches[a][k];
                mc * mc / (gt_count[k / n_tr] + tr_count[k % n_tr] - mc).max(1.0)
            })
            .sum::<f64>()
            / tp[a].max(1.0);
        let det_a = tp[a] / (tp[a] + fn_[a] + fp[a]).max(1.0);
        (det_a * ass_a).sqrt()
    });
    100.0 * per_alpha.sum::<f64>() / n_a as f64
}

// ---------------------------------------------------------------------------------------
// The committed clip
// ---------------------------------------------------------------------------------------

struct Clip {
    gt: Frames,
    dets: Vec<Vec<Detection>>,
    doc: Value,
}

fn load() -> Clip {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/track_metrics.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let nums =
        |v: &Value| -> Vec<f64> { v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect() };
    let gt = doc["gt"]
        .as_array()
        .expect("gt")
        .iter()
        .map(|f| {
            f.as_array()
                .expect("gt frame")
                .iter()
                .map(|row| {
                    let r = nums(row);
                    (r[0] as u64, [r[1], r[2], r[3], r[4]])
                })
                .collect()
        })
        .collect();
    // As examples/track_jsonl.rs (which the tool ran): JSON numbers to f32.
    let dets = doc["dets"]
        .as_array()
        .expect("dets")
        .iter()
        .map(|f| {
            f.as_array()
                .expect("dets frame")
                .iter()
                .map(|row| {
                    let r = nums(row);
                    Detection {
                        bbox: [r[0] as f32, r[1] as f32, r[2] as f32, r[3] as f32],
                        score: r[4] as f32,
                        class_id: r[5] as usize,
                    }
                })
                .collect()
        })
        .collect();
    Clip { gt, dets, doc }
}

/// The tracker's output boxes, in its output order (as the tool scored them: track_jsonl
/// writes the f32 boxes as their exact f64 values).
fn track(config: ByteTrackConfig, dets: &[Vec<Detection>]) -> Frames {
    let mut tracker = ByteTracker::new(config).expect("config");
    dets.iter()
        .enumerate()
        .map(|(t, d)| {
            let tracks = tracker.update_with_frame(t as u64, d).expect("frame order");
            tracks.iter().map(|tr| (tr.track_id, tr.bbox.map(f64::from))).collect()
        })
        .collect()
}

/// The settings of the data file, by name, with the `track_jsonl` flags the tool used.
fn setting(name: &str) -> (ByteTrackConfig, Value) {
    let d = ByteTrackConfig::default();
    match name {
        "default" => (d, serde_json::json!([])),
        "reference" => (ByteTrackConfig::reference(), Value::Null), // sv.ByteTrack itself
        "track_buffer_1" => (ByteTrackConfig { track_buffer: 1, ..d }, serde_json::json!(["--track-buffer", "1"])),
        "match_thresh_0.1" => {
            (ByteTrackConfig { match_thresh: 0.1, ..d }, serde_json::json!(["--match-thresh", "0.1"]))
        }
        other => panic!("unknown setting {other}"),
    }
}

#[derive(Debug)]
struct Figures {
    hota: f64,
    clear: Clear,
    identity: Identity,
    ids: usize,
}

fn figures(gt: &Frames, tr: &Frames) -> Figures {
    let ids = tr.iter().flatten().map(|(id, _)| *id).collect::<std::collections::HashSet<_>>().len();
    Figures { hota: hota(gt, tr), clear: clear(gt, tr), identity: identity(gt, tr), ids }
}

const SETTINGS: [&str; 4] = ["default", "reference", "track_buffer_1", "match_thresh_0.1"];

#[test]
fn figures_match_trackeval() {
    let clip = load();
    assert_eq!(clip.gt.len(), 150);
    assert_eq!(clip.dets.len(), 150);
    let mut failures = Vec::new();
    let mut max_diff = 0.0f64;
    for name in SETTINGS {
        let (config, flags) = setting(name);
        assert_eq!(clip.doc["settings"][name], flags, "{name}: the tool ran other flags");
        let want = &clip.doc["trackeval"][name];
        let int = |k: &str| want[k].as_u64().unwrap_or_else(|| panic!("{name}: {k}")) as usize;
        let float = |k: &str| want[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
        let got = figures(&clip.gt, &track(config, &clip.dets));
        println!(
            "{name:17} HOTA {:6.3} ({:6.3})  MOTA {:6.3} ({:6.3})  IDF1 {:6.3} ({:6.3})  ID switches {:3} ({:3})  \
             [ours (TrackEval)]",
            got.hota,
            float("HOTA"),
            got.clear.mota(),
            float("MOTA"),
            got.identity.idf1(),
            float("IDF1"),
            got.clear.idsw,
            int("IDSW"),
        );
        let want_clear = Clear { tp: int("TP"), fp: int("FP"), fn_: int("FN"), idsw: int("IDSW") };
        let want_identity = Identity { idtp: int("IDTP"), idfp: int("IDFP"), idfn: int("IDFN") };
        if got.clear != want_clear {
            failures.push(format!("{name}: CLEAR {:?}, TrackEval {want_clear:?}", got.clear));
        }
        if got.identity != want_identity {
            failures.push(format!("{name}: identity {:?}, TrackEval {want_identity:?}", got.identity));
        }
        if got.ids != int("ids") {
            failures.push(format!("{name}: {} track ids, tool {}", got.ids, int("ids")));
        }
        for (metric, value) in [("HOTA", got.hota), ("MOTA", got.clear.mota()), ("IDF1", got.identity.idf1())] {
            max_diff = max_diff.max((value - float(metric)).abs());
            if (value - float(metric)).abs() > TOL {
                failures.push(format!("{name}: {metric} {value:.3}, TrackEval {:.3}", float(metric)));
            }
        }
    }
    println!("largest difference from TrackEval: {max_diff:.1e} percentage points (tolerance {TOL})");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn defaults_beat_worse_settings_and_reference() {
    let clip = load();
    let f: HashMap<&str, Figures> =
        SETTINGS.iter().map(|&name| (name, figures(&clip.gt, &track(setting(name).0, &clip.dets)))).collect();
    let d = &f["default"];
    // The README's figures for this clip (TrackEval: 80.4 / 76.2 / 88.4 / 6), within TOL.
    assert!((d.hota - 80.4).abs() <= TOL, "HOTA {}", d.hota);
    assert!((d.clear.mota() - 76.2).abs() <= TOL, "MOTA {}", d.clear.mota());
    assert!((d.identity.idf1() - 88.4).abs() <= TOL, "IDF1 {}", d.identity.idf1());
    assert_eq!(d.clear.idsw, 6);
    // Forgetting lost tracks after one frame: objects re-found after a crossing get new
    // ids (MOTA barely moves: it counts a switch once, IDF1 the whole rest of the track).
    let b = &f["track_buffer_1"];
    assert!(b.identity.idf1() < d.identity.idf1() - 10.0, "IDF1 {} vs {}", b.identity.idf1(), d.identity.idf1());
    assert!(b.hota < d.hota - 10.0);
    assert!(b.ids > d.ids);
    // Requiring IoU x score >= 0.9 to continue a track: ids churn.
    let m = &f["match_thresh_0.1"];
    assert!(m.clear.mota() < d.clear.mota() - 20.0);
    assert!(m.identity.idf1() < d.identity.idf1() - 20.0);
    assert!(m.hota < d.hota - 20.0);
    assert!(m.clear.idsw > 10 * d.clear.idsw);
    // sv.ByteTrack's settings (class-agnostic, track_thresh 0.25) on this detector.
    let r = &f["reference"];
    assert!(r.hota < d.hota && r.clear.mota() < d.clear.mota() && r.identity.idf1() < d.identity.idf1());
    assert!(r.clear.idsw > d.clear.idsw);
}

// ---------------------------------------------------------------------------------------
// The metrics on hand-made sequences
// ---------------------------------------------------------------------------------------

fn bx(x: f64) -> [f64; 4] {
    [x, 0.0, x + 10.0, 10.0]
}

#[test]
fn perfect_tracking_scores_100() {
    let gt: Frames = (0..5).map(|t| vec![(7, bx(t as f64)), (9, bx(100.0 + t as f64))]).collect();
    let tr: Frames = (0..5).map(|t| vec![(2, bx(100.0 + t as f64)), (1, bx(t as f64))]).collect();
    let f = figures(&gt, &tr);
    assert_eq!(f.clear, Clear { tp: 10, fp: 0, fn_: 0, idsw: 0 });
    assert_eq!(f.identity, Identity { idtp: 10, idfp: 0, idfn: 0 });
    assert!((f.clear.mota() - 100.0).abs() < 1e-12);
    assert!((f.identity.idf1() - 100.0).abs() < 1e-12);
    assert!((f.hota - 100.0).abs() < 1e-9, "{}", f.hota);
}

#[test]
fn id_switch_counted_once_and_in_idf1() {
    // One object, 6 frames; the track id changes from 1 to 2 after frame 2.
    let gt: Frames = (0..6).map(|t| vec![(0, bx(t as f64))]).collect();
    let tr: Frames = (0..6).map(|t| vec![(if t < 3 { 1 } else { 2 }, bx(t as f64))]).collect();
    let f = figures(&gt, &tr);
    assert_eq!(f.clear, Clear { tp: 6, fp: 0, fn_: 0, idsw: 1 });
    assert!((f.clear.mota() - 500.0 / 6.0).abs() < 1e-9);
    // Ground truth 0 takes one of the two tracks: 3 of 6 frames.
    assert_eq!(f.identity, Identity { idtp: 3, idfp: 3, idfn: 3 });
    assert!((f.identity.idf1() - 50.0).abs() < 1e-12);
    assert!(f.hota < 100.0 && f.hota > 50.0, "{}", f.hota);
    // Switching back is another switch (to the last matched track, not the first).
    let tr: Frames = (0..6).map(|t| vec![(if t % 2 == 0 { 1 } else { 2 }, bx(t as f64))]).collect();
    assert_eq!(clear(&gt, &tr).idsw, 5);
}

#[test]
fn clear_keeps_a_still_valid_match() {
    // Track 1 follows the object; from frame 2 track 2 overlaps it better (IoU 1 vs 0.67),
    // but track 1 is still valid (IoU >= 0.5): no switch, track 2 is a false positive.
    let gt: Frames = (0..4).map(|_| vec![(0, bx(0.0))]).collect();
    let tr: Frames =
        (0..4).map(|t| if t < 2 { vec![(1, bx(0.0))] } else { vec![(1, bx(2.0)), (2, bx(0.0))] }).collect();
    assert_eq!(clear(&gt, &tr), Clear { tp: 4, fp: 2, fn_: 0, idsw: 0 });
    // Once track 1 falls below IoU 0.5 (x + 4: IoU 0.43), track 2 takes over: one switch.
    let tr: Frames =
        (0..4).map(|t| if t < 2 { vec![(1, bx(0.0))] } else { vec![(1, bx(4.0)), (2, bx(0.0))] }).collect();
    assert_eq!(clear(&gt, &tr), Clear { tp: 4, fp: 2, fn_: 0, idsw: 1 });
}

#[test]
fn unmatched_boxes_are_fp_and_fn() {
    // IoU below 0.5 is no match; a frame without tracks is all FN; extra tracks are FP.
    let gt: Frames = vec![vec![(0, bx(0.0))], vec![(0, bx(0.0))], vec![]];
    let tr: Frames = vec![vec![(1, bx(6.0))], vec![], vec![(1, bx(0.0))]];
    let f = figures(&gt, &tr);
    assert_eq!(f.clear, Clear { tp: 0, fp: 2, fn_: 2, idsw: 0 });
    assert_eq!(f.identity, Identity { idtp: 0, idfp: 2, idfn: 2 });
    assert!((f.clear.mota() + 100.0).abs() < 1e-12);
    assert_eq!(f.identity.idf1(), 0.0);
}
