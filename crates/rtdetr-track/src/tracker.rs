//! The ByteTrack update loop. The structure follows the reference line by line (list
//! order included, because the order decides which new track gets which id).

use crate::kalman::{self, KalmanState};
use crate::lsap::linear_sum_assignment;
use crate::{ByteTrackConfig, ConfigError, Detection, Track, TrackError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Tracked,
    Lost,
    Removed,
}

#[derive(Debug, Clone)]
struct STrack {
    /// Creation order; identifies the track inside the tracker.
    internal_id: u64,
    /// Public id, given when the track is confirmed.
    track_id: Option<u64>,
    kf: KalmanState,
    state: State,
    activated: bool,
    score: f32,
    class_id: usize,
    detection_index: usize,
    tracklet_len: u32,
    /// Frame of the last match.
    frame_id: u64,
    start_frame: u64,
}

impl STrack {
    /// The box used for IoU: the state's box rounded to f32 (the reference casts it).
    fn iou_box(&self) -> [f32; 4] {
        self.kf.tlbr().map(|v| v as f32)
    }
}

/// A valid detection of the current frame.
#[derive(Debug, Clone, Copy)]
struct Cand {
    /// (x1, y1, x1 + w, y1 + h) in f32, as the reference rebuilds it from (x, y, w, h).
    tlbr: [f32; 4],
    /// (cx, cy, w / h, h) in f32.
    xyah: [f32; 4],
    score: f32,
    class_id: usize,
    index: usize,
}

/// `None` for boxes the reference drops (non-finite, width or height not > 0) and for
/// boxes so large that their centre or size overflows f32.
fn candidate(index: usize, d: &Detection) -> Option<Cand> {
    let [x1, y1, x2, y2] = d.bbox;
    if !(d.bbox.iter().all(|v| v.is_finite()) && d.score.is_finite()) {
        return None;
    }
    let (w, h) = (x2 - x1, y2 - y1);
    if !(w > 0.0 && h > 0.0) {
        return None;
    }
    let xyah = [x1 + w / 2.0, y1 + h / 2.0, w / h, h];
    let tlbr = [x1, y1, x1 + w, y1 + h];
    if !(xyah.iter().chain(tlbr.iter()).all(|v| v.is_finite()) && w.is_finite()) {
        return None;
    }
    Some(Cand { tlbr, xyah, score: d.score, class_id: d.class_id, index })
}

/// IoU as `supervision.box_iou_batch`: f64 arithmetic on f32 corners, rounded to f32.
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let a = a.map(f64::from);
    let b = b.map(f64::from);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    let union = area_a + area_b - inter;
    if union > 0.0 {
        (inter / union) as f32
    } else {
        0.0
    }
}

/// Rows (tracks) x columns (detections) of f32 costs; `None` = never match (other class,
/// or a non-finite cost).
struct CostMatrix {
    rows: usize,
    cols: usize,
    cost: Vec<Option<f32>>,
}

impl CostMatrix {
    /// `1 - IoU`, or `1 - IoU x score` with `fuse`, each step rounded to f32 as numpy does.
    fn new(tracks: &[(&[f32; 4], usize)], dets: &[(&[f32; 4], usize, f32)], fuse: bool, class_aware: bool) -> Self {
        let mut cost = Vec::with_capacity(tracks.len() * dets.len());
        for (tb, tc) in tracks {
            for (db, dc, score) in dets {
                if class_aware && tc != dc {
                    cost.push(None);
                    continue;
                }
                let mut c = 1.0f32 - iou(tb, db);
                if fuse {
                    c = 1.0f32 - (1.0f32 - c) * score;
                }
                cost.push(if c.is_finite() { Some(c) } else { None });
            }
        }
        Self { rows: tracks.len(), cols: dets.len(), cost }
    }
}

struct Assignment {
    matches: Vec<(usize, usize)>,
    unmatched_rows: Vec<usize>,
    unmatched_cols: Vec<usize>,
}

/// `matching.linear_assignment` of the reference: costs above `thresh` are clamped to
/// `thresh + 1e-4` (so the solver prefers leaving a pair unmatched), the matrix is solved
/// optimally, and assigned pairs with cost `<= thresh` are kept. Comparisons are in f32
/// (numpy compares a float32 array with the threshold rounded to float32).
fn linear_assignment(m: &CostMatrix, thresh: f64) -> Assignment {
    let mut matches = Vec::new();
    if m.rows > 0 && m.cols > 0 {
        let t32 = thresh as f32;
        let clamp = f64::from((thresh + 1e-4) as f32);
        let assign: Vec<f64> = m
            .cost
            .iter()
            .map(|c| match c {
                Some(c) if *c <= t32 => f64::from(*c),
                _ => clamp,
            })
            .collect();
        if let Some(pairs) = linear_sum_assignment(&assign, m.rows, m.cols) {
            matches.extend(pairs.into_iter().filter(|&(r, c)| matches!(m.cost[r * m.cols + c], Some(v) if v <= t32)));
        }
    }
    let mut row_used = vec![false; m.rows];
    let mut col_used = vec![false; m.cols];
    for &(r, c) in &matches {
        row_used[r] = true;
        col_used[c] = true;
    }
    Assignment {
        matches,
        unmatched_rows: (0..m.rows).filter(|&r| !row_used[r]).collect(),
        unmatched_cols: (0..m.cols).filter(|&c| !col_used[c]).collect(),
    }
}

/// `a` then the elements of `b` not seen yet (the reference's `joint_tracks`).
fn joint(a: &[usize], b: &[usize], arena_len: usize) -> Vec<usize> {
    let mut seen = vec![false; arena_len];
    let mut out = Vec::with_capacity(a.len() + b.len());
    for &i in a.iter().chain(b) {
        if !seen[i] {
            seen[i] = true;
            out.push(i);
        }
    }
    out
}

/// `a` without duplicates and without the elements for which `drop` holds
/// (the reference's `sub_tracks`).
fn sub(a: &[usize], arena_len: usize, mut drop: impl FnMut(usize) -> bool) -> Vec<usize> {
    let mut seen = vec![false; arena_len];
    let mut out = Vec::with_capacity(a.len());
    for &i in a {
        if !seen[i] {
            seen[i] = true;
            if !drop(i) {
                out.push(i);
            }
        }
    }
    out
}

/// Most Kalman steps predicted through one gap of dropped frames (about 5.5 minutes at
/// 30 fps); only reachable with a lost-track buffer at least that long.
const MAX_GAP_STEPS: u64 = 10_000;

/// A ByteTrack tracker: feed it one frame of detections at a time.
///
/// Deterministic: the same sequence of inputs gives the same tracks, ids and boxes.
#[derive(Debug, Clone)]
pub struct ByteTracker {
    config: ByteTrackConfig,
    high_thresh: f32,
    low_thresh: f32,
    new_track_thresh: f32,
    max_time_lost: u64,
    /// The reference's frame counter: 1 for the first frame, gaps included.
    frame_id: u64,
    last_frame_index: Option<u64>,
    /// Tracked tracks (confirmed and unconfirmed), in the reference's list order.
    tracked: Vec<STrack>,
    lost: Vec<STrack>,
    /// Internal ids removed in the previous frame (the reference subtracts them from the
    /// lost list one frame late).
    removed_prev: Vec<u64>,
    next_internal_id: u64,
    next_track_id: u64,
}

impl ByteTracker {
    /// A tracker with `config` (checked with [`ByteTrackConfig::validate`]).
    pub fn new(config: ByteTrackConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            high_thresh: config.track_thresh as f32,
            low_thresh: config.low_thresh as f32,
            new_track_thresh: config.effective_new_track_thresh() as f32,
            max_time_lost: config.max_time_lost(),
            config,
            frame_id: 0,
            last_frame_index: None,
            tracked: Vec::new(),
            lost: Vec::new(),
            removed_prev: Vec::new(),
            next_internal_id: 0,
            next_track_id: 1,
        })
    }

    pub fn config(&self) -> &ByteTrackConfig {
        &self.config
    }

    /// Forget every track; ids start again at 1. Use between videos.
    pub fn reset(&mut self) {
        *self = Self {
            config: self.config.clone(),
            frame_id: 0,
            last_frame_index: None,
            tracked: Vec::new(),
            lost: Vec::new(),
            removed_prev: Vec::new(),
            next_internal_id: 0,
            next_track_id: 1,
            ..*self
        };
    }

    /// Tracks currently held: (tracked incl. unconfirmed, lost).
    pub fn track_counts(&self) -> (usize, usize) {
        (self.tracked.len(), self.lost.len())
    }

    /// The next frame (the frame after the previous call, or frame 0) and its detections;
    /// returns the confirmed tracks present in this frame.
    pub fn update(&mut self, detections: &[Detection]) -> Vec<Track> {
        self.last_frame_index = Some(self.last_frame_index.map_or(0, |l| l.saturating_add(1)));
        self.step(detections)
    }

    /// Frame `frame_index` and its detections. Indices must increase; when they jump
    /// (frames dropped or skipped), the tracks are predicted through the missing frames
    /// and the missing frames count towards the lost-track buffer. A track that would then
    /// be unmatched for more than `max_time_lost + 2` frames (longer than any track can
    /// survive without a match) is dropped instead. At most 10,000 frames are predicted
    /// through.
    pub fn update_with_frame(&mut self, frame_index: u64, detections: &[Detection]) -> Result<Vec<Track>, TrackError> {
        if let Some(last) = self.last_frame_index {
            if frame_index <= last {
                return Err(TrackError::FrameOrder { last, got: frame_index });
            }
            let gap = frame_index - last - 1;
            if gap > 0 {
                self.skip_frames(gap);
            }
        }
        self.last_frame_index = Some(frame_index);
        Ok(self.step(detections))
    }

    fn skip_frames(&mut self, gap: u64) {
        let next_frame = self.frame_id.saturating_add(gap).saturating_add(1);
        let limit = self.max_time_lost.saturating_add(2);
        let keep = |t: &STrack| next_frame.saturating_sub(t.frame_id) <= limit;
        self.tracked.retain(keep);
        self.lost.retain(keep);
        self.frame_id = self.frame_id.saturating_add(gap);
        // Every remaining track was matched at most `limit` frames before `next_frame`
        // and not during the gap, so gap < limit. MAX_GAP_STEPS bounds the work when a huge
        // `track_buffer x frame_rate` makes `limit` itself huge.
        for _ in 0..gap.min(limit).min(MAX_GAP_STEPS) {
            let fresh = self.pool_mut().all(|t| t.kf.fresh);
            for t in self.pool_mut() {
                predict(t, fresh);
            }
        }
    }

    /// The tracks the next frame predicts and matches first: confirmed tracked, then lost.
    fn pool_mut(&mut self) -> impl Iterator<Item = &mut STrack> {
        self.tracked.iter_mut().filter(|t| t.activated).chain(self.lost.iter_mut())
    }

    fn activate(&mut self, c: &Cand, frame_id: u64) -> STrack {
        let internal_id = self.next_internal_id;
        self.next_internal_id += 1;
        let mut t = STrack {
            internal_id,
            track_id: None,
            kf: kalman::initiate(c.xyah),
            state: State::Tracked,
            activated: false,
            score: c.score,
            class_id: c.class_id,
            detection_index: c.index,
            tracklet_len: 1,
            frame_id,
            start_frame: frame_id,
        };
        if frame_id == 1 && t.tracklet_len >= self.config.min_consecutive_frames {
            t.activated = true;
            t.track_id = Some(self.new_track_id());
        }
        t
    }

    fn new_track_id(&mut self) -> u64 {
        let id = self.next_track_id;
        self.next_track_id += 1;
        id
    }

    /// A matched track in the Tracked state (`STrack.update`).
    fn update_track(&mut self, t: &mut STrack, c: &Cand, frame_id: u64) {
        t.frame_id = frame_id;
        t.tracklet_len = t.tracklet_len.saturating_add(1);
        // Err only for a non-finite state, which valid input cannot produce: keep the old state.
        let _ = t.kf.update(c.xyah);
        t.state = State::Tracked;
        if t.tracklet_len >= self.config.min_consecutive_frames {
            t.activated = true;
            if t.track_id.is_none() {
                t.track_id = Some(self.new_track_id());
            }
        }
        set_detection(t, c);
    }

    /// A lost track matched again (`STrack.re_activate`).
    fn reactivate_track(t: &mut STrack, c: &Cand, frame_id: u64) {
        let _ = t.kf.update(c.xyah);
        t.tracklet_len = 0;
        t.state = State::Tracked;
        t.frame_id = frame_id;
        set_detection(t, c);
    }

    fn step(&mut self, detections: &[Detection]) -> Vec<Track> {
        self.frame_id = self.frame_id.saturating_add(1);
        let frame_id = self.frame_id;
        let class_aware = self.config.class_aware;

        let cands: Vec<Cand> = detections.iter().enumerate().filter_map(|(i, d)| candidate(i, d)).collect();
        let high: Vec<Cand> = cands.iter().filter(|c| c.score >= self.high_thresh).copied().collect();
        let low: Vec<Cand> =
            cands.iter().filter(|c| c.score > self.low_thresh && c.score < self.high_thresh).copied().collect();

        // All tracks live in `arena` during the frame; the lists hold indices into it.
        let n_tracked = self.tracked.len();
        let mut arena: Vec<STrack> = std::mem::take(&mut self.tracked);
        arena.append(&mut self.lost);
        let tracked_ids: Vec<usize> = (0..n_tracked).collect();
        let lost_ids: Vec<usize> = (n_tracked..arena.len()).collect();
        let (confirmed, unconfirmed): (Vec<usize>, Vec<usize>) = tracked_ids.iter().partition(|&&i| arena[i].activated);

        // Predict the confirmed and lost tracks (lost ones with their height velocity zeroed).
        let pool = joint(&confirmed, &lost_ids, arena.len());
        let fresh = pool.iter().all(|&i| arena[i].kf.fresh);
        for &i in &pool {
            predict(&mut arena[i], fresh);
        }

        let det_cols =
            |cs: &[Cand]| -> Vec<([f32; 4], usize, f32)> { cs.iter().map(|c| (c.tlbr, c.class_id, c.score)).collect() };
        let track_rows = |arena: &[STrack], ids: &[usize]| -> Vec<([f32; 4], usize)> {
            ids.iter().map(|&i| (arena[i].iou_box(), arena[i].class_id)).collect()
        };
        let matrix = |rows: &[([f32; 4], usize)], cols: &[([f32; 4], usize, f32)], fuse: bool| {
            let r: Vec<(&[f32; 4], usize)> = rows.iter().map(|(b, c)| (b, *c)).collect();
            let c: Vec<(&[f32; 4], usize, f32)> = cols.iter().map(|(b, c, s)| (b, *c, *s)).collect();
            CostMatrix::new(&r, &c, fuse, class_aware)
        };

        // First association: high-score detections against confirmed + lost tracks.
        let mut activated: Vec<usize> = Vec::new();
        let mut refind: Vec<usize> = Vec::new();
        let a1 = linear_assignment(
            &matrix(&track_rows(&arena, &pool), &det_cols(&high), self.config.fuse_score),
            self.config.match_thresh,
        );
        for &(r, c) in &a1.matches {
            let i = pool[r];
            if arena[i].state == State::Tracked {
                self.update_track(&mut arena[i], &high[c], frame_id);
                activated.push(i);
            } else {
                Self::reactivate_track(&mut arena[i], &high[c], frame_id);
                refind.push(i);
            }
        }

        // Second association: low-score detections against the still unmatched tracked tracks.
        let r_tracked: Vec<usize> =
            a1.unmatched_rows.iter().map(|&r| pool[r]).filter(|&i| arena[i].state == State::Tracked).collect();
        let a2 = linear_assignment(
            &matrix(&track_rows(&arena, &r_tracked), &det_cols(&low), false),
            self.config.low_match_thresh,
        );
        for &(r, c) in &a2.matches {
            let i = r_tracked[r];
            if arena[i].state == State::Tracked {
                self.update_track(&mut arena[i], &low[c], frame_id);
                activated.push(i);
            } else {
                Self::reactivate_track(&mut arena[i], &low[c], frame_id);
                refind.push(i);
            }
        }
        let mut newly_lost: Vec<usize> = Vec::new();
        for &r in &a2.unmatched_rows {
            let i = r_tracked[r];
            if arena[i].state != State::Lost {
                arena[i].state = State::Lost;
                newly_lost.push(i);
            }
        }

        // Unconfirmed tracks against the high-score detections left over.
        let rest: Vec<Cand> = a1.unmatched_cols.iter().map(|&c| high[c]).collect();
        let a3 = linear_assignment(
            &matrix(&track_rows(&arena, &unconfirmed), &det_cols(&rest), self.config.fuse_score),
            self.config.unconfirmed_match_thresh,
        );
        for &(r, c) in &a3.matches {
            let i = unconfirmed[r];
            self.update_track(&mut arena[i], &rest[c], frame_id);
            activated.push(i);
        }
        let mut removed: Vec<usize> = Vec::new();
        for &r in &a3.unmatched_rows {
            let i = unconfirmed[r];
            arena[i].state = State::Removed;
            removed.push(i);
        }

        // New tracks.
        for &c in &a3.unmatched_cols {
            let cand = &rest[c];
            if cand.score < self.new_track_thresh {
                continue;
            }
            let t = self.activate(cand, frame_id);
            arena.push(t);
            activated.push(arena.len() - 1);
        }

        // Lost tracks unmatched for too long.
        for &i in &lost_ids {
            if frame_id.saturating_sub(arena[i].frame_id) > self.max_time_lost {
                arena[i].state = State::Removed;
                removed.push(i);
            }
        }

        // New lists, in the reference's order.
        let n = arena.len();
        let still_tracked: Vec<usize> =
            tracked_ids.iter().copied().filter(|&i| arena[i].state == State::Tracked).collect();
        let new_tracked = joint(&joint(&still_tracked, &activated, n), &refind, n);
        let mut in_tracked = vec![false; n];
        for &i in &new_tracked {
            in_tracked[i] = true;
        }
        let mut new_lost = sub(&lost_ids, n, |i| in_tracked[i]);
        new_lost.extend(newly_lost);
        let removed_prev = std::mem::take(&mut self.removed_prev);
        let new_lost = sub(&new_lost, n, |i| removed_prev.contains(&arena[i].internal_id));
        self.removed_prev = removed.iter().map(|&i| arena[i].internal_id).collect();
        let (new_tracked, new_lost) = remove_duplicates(&arena, new_tracked, new_lost, class_aware);

        let output: Vec<Track> = new_tracked
            .iter()
            .filter_map(|&i| {
                let t = &arena[i];
                match (t.activated, t.track_id) {
                    (true, Some(track_id)) => Some(Track {
                        track_id,
                        bbox: t.kf.tlbr().map(|v| v as f32),
                        score: t.score,
                        class_id: t.class_id,
                        detection_index: t.detection_index,
                    }),
                    _ => None,
                }
            })
            .collect();

        // Move the surviving tracks out of the arena.
        let mut slots: Vec<Option<STrack>> = arena.into_iter().map(Some).collect();
        self.tracked = new_tracked.iter().filter_map(|&i| slots[i].take()).collect();
        self.lost = new_lost.iter().filter_map(|&i| slots[i].take()).collect();
        output
    }
}

fn predict(t: &mut STrack, f32_noise: bool) {
    if t.state != State::Tracked {
        t.kf.mean[7] = 0.0;
    }
    t.kf.predict(f32_noise);
}

fn set_detection(t: &mut STrack, c: &Cand) {
    t.score = c.score;
    t.class_id = c.class_id;
    t.detection_index = c.index;
}

/// Tracked and lost tracks with IoU > 0.95 (distance < 0.05): keep the one tracked for
/// longer (`remove_duplicate_tracks`).
fn remove_duplicates(
    arena: &[STrack],
    tracked: Vec<usize>,
    lost: Vec<usize>,
    class_aware: bool,
) -> (Vec<usize>, Vec<usize>) {
    if tracked.is_empty() || lost.is_empty() {
        return (tracked, lost);
    }
    let lost_boxes: Vec<[f32; 4]> = lost.iter().map(|&j| arena[j].iou_box()).collect();
    let mut drop_a = vec![false; tracked.len()];
    let mut drop_b = vec![false; lost.len()];
    for (p, &i) in tracked.iter().enumerate() {
        let a = &arena[i];
        let abox = a.iou_box();
        for (q, &j) in lost.iter().enumerate() {
            let b = &arena[j];
            if class_aware && a.class_id != b.class_id {
                continue;
            }
            if 1.0f32 - iou(&abox, &lost_boxes[q]) < 0.05f32 {
                let time_a = a.frame_id.saturating_sub(a.start_frame);
                let time_b = b.frame_id.saturating_sub(b.start_frame);
                if time_a > time_b {
                    drop_b[q] = true;
                } else {
                    drop_a[p] = true;
                }
            }
        }
    }
    let keep = |ids: Vec<usize>, drop: &[bool]| {
        ids.into_iter().enumerate().filter(|(k, _)| !drop[*k]).map(|(_, i)| i).collect()
    };
    (keep(tracked, &drop_a), keep(lost, &drop_b))
}

impl Detection {
    /// Zip parallel arrays into detections.
    pub fn from_arrays(boxes: &[[f32; 4]], scores: &[f32], class_ids: &[usize]) -> Result<Vec<Detection>, TrackError> {
        if boxes.len() != scores.len() || boxes.len() != class_ids.len() {
            return Err(TrackError::LengthMismatch {
                boxes: boxes.len(),
                scores: scores.len(),
                class_ids: class_ids.len(),
            });
        }
        Ok(boxes
            .iter()
            .zip(scores)
            .zip(class_ids)
            .map(|((b, s), c)| Detection { bbox: *b, score: *s, class_id: *c })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, w: f32, h: f32, score: f32, class_id: usize) -> Detection {
        Detection { bbox: [x, y, x + w, y + h], score, class_id }
    }

    #[test]
    fn iou_values() {
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[20.0, 0.0, 30.0, 10.0]), 0.0);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]), (50.0f64 / 150.0) as f32);
        assert_eq!(iou(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]), 0.0);
    }

    #[test]
    fn assignment_clamps_and_thresholds() {
        // 2 tracks x 3 detections; pair (0, 2) is the best overall but above the threshold.
        let m =
            CostMatrix { rows: 2, cols: 3, cost: vec![Some(0.3), Some(0.9), Some(0.85), Some(0.5), Some(0.2), None] };
        let a = linear_assignment(&m, 0.8);
        assert_eq!(a.matches, vec![(0, 0), (1, 1)]);
        assert_eq!(a.unmatched_cols, vec![2]);
        assert!(a.unmatched_rows.is_empty());
        // a forbidden (other-class) pair is never matched, even when alone
        let m = CostMatrix { rows: 1, cols: 1, cost: vec![None] };
        let a = linear_assignment(&m, 1.0);
        assert!(a.matches.is_empty());
        assert_eq!((a.unmatched_rows, a.unmatched_cols), (vec![0], vec![0]));
        // empty
        let m = CostMatrix { rows: 0, cols: 2, cost: vec![] };
        assert_eq!(linear_assignment(&m, 0.8).unmatched_cols, vec![0, 1]);
    }

    #[test]
    fn empty_frames_and_empty_tracker() {
        let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
        assert!(t.update(&[]).is_empty());
        assert!(t.update(&[]).is_empty());
        let out = t.update(&[det(10.0, 10.0, 20.0, 40.0, 0.9, 0)]);
        assert!(out.is_empty(), "a track started after the first frame is unconfirmed");
        let out = t.update(&[det(11.0, 10.0, 20.0, 40.0, 0.9, 0)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].track_id, 1);
        for _ in 0..5 {
            assert!(t.update(&[]).is_empty());
        }
        assert_eq!(t.track_counts(), (0, 1));
    }

    #[test]
    fn nan_and_degenerate_boxes_are_ignored() {
        let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
        let dets = [
            Detection { bbox: [f32::NAN, 0.0, 10.0, 10.0], score: 0.9, class_id: 0 },
            Detection { bbox: [0.0, 0.0, f32::INFINITY, 10.0], score: 0.9, class_id: 0 },
            Detection { bbox: [0.0, 0.0, 10.0, 10.0], score: f32::NAN, class_id: 0 },
            Detection { bbox: [5.0, 5.0, 5.0, 10.0], score: 0.9, class_id: 0 },
            Detection { bbox: [5.0, 5.0, 1.0, 10.0], score: 0.9, class_id: 0 },
            Detection { bbox: [-f32::MAX, 0.0, f32::MAX, 10.0], score: 0.9, class_id: 0 },
            det(100.0, 100.0, 20.0, 30.0, 0.8, 3),
        ];
        for _ in 0..3 {
            let out = t.update(&dets);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].detection_index, 6);
            assert_eq!(out[0].class_id, 3);
            assert!(out[0].bbox.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn frame_order_and_config_errors() {
        let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
        t.update_with_frame(5, &[]).unwrap();
        assert_eq!(t.update_with_frame(5, &[]), Err(TrackError::FrameOrder { last: 5, got: 5 }));
        assert_eq!(t.update_with_frame(3, &[]), Err(TrackError::FrameOrder { last: 5, got: 3 }));
        assert!(t.update_with_frame(u64::MAX, &[]).is_ok());
        for bad in [
            ByteTrackConfig { track_thresh: f64::NAN, ..Default::default() },
            ByteTrackConfig { match_thresh: 1.5, ..Default::default() },
            ByteTrackConfig { new_track_thresh: Some(-0.1), ..Default::default() },
            ByteTrackConfig { frame_rate: 0.0, ..Default::default() },
            ByteTrackConfig { frame_rate: f64::INFINITY, ..Default::default() },
        ] {
            assert!(ByteTracker::new(bad).is_err());
        }
        assert_eq!(
            Detection::from_arrays(&[[0.0; 4]], &[0.5, 0.6], &[0]),
            Err(TrackError::LengthMismatch { boxes: 1, scores: 2, class_ids: 1 })
        );
    }

    #[test]
    fn derived_settings() {
        let c = ByteTrackConfig::reference();
        assert_eq!(c.max_time_lost(), 30);
        assert!((c.effective_new_track_thresh() - 0.35).abs() < 1e-12);
        assert!(!c.class_aware);
        let c = ByteTrackConfig::default();
        assert!((c.effective_new_track_thresh() - 0.6).abs() < 1e-12);
        assert!(c.class_aware);
        let c = ByteTrackConfig { frame_rate: 15.0, track_buffer: 31, track_thresh: 0.95, ..Default::default() };
        assert_eq!(c.max_time_lost(), 15);
        assert_eq!(c.effective_new_track_thresh(), 0.95);
    }

    #[test]
    fn class_aware_never_swaps_classes() {
        // A person track is lost; a car appears exactly where it was.
        let run = |class_aware: bool| {
            let mut t = ByteTracker::new(ByteTrackConfig { class_aware, ..Default::default() }).unwrap();
            let mut ids = Vec::new();
            for f in 0..3 {
                ids.push(t.update(&[det(100.0 + f as f32, 100.0, 40.0, 80.0, 0.9, 0)]));
            }
            ids.push(t.update(&[det(103.0, 100.0, 40.0, 80.0, 0.9, 2)]));
            ids.push(t.update(&[det(104.0, 100.0, 40.0, 80.0, 0.9, 2)]));
            ids
        };
        let agnostic = run(false);
        assert_eq!(agnostic[3][0].track_id, 1, "class-agnostic: the car continues the person's track");
        assert_eq!(agnostic[3][0].class_id, 2);
        let aware = run(true);
        assert!(aware[3].is_empty(), "class-aware: the car starts a new, unconfirmed track");
        assert_eq!(aware[4][0].track_id, 2);
        assert_eq!(aware[4][0].class_id, 2);
    }

    #[test]
    fn huge_frame_gap_drops_tracks_quickly() {
        let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
        for f in 0..3u64 {
            t.update_with_frame(f, &[det(100.0, 100.0, 40.0, 80.0, 0.9, 0)]).unwrap();
        }
        // would be 1e12 predict steps without the cap
        let out = t.update_with_frame(1_000_000_000_000, &[det(100.0, 100.0, 40.0, 80.0, 0.9, 0)]).unwrap();
        assert!(out.is_empty());
        assert_eq!(t.track_counts(), (1, 0), "old track dropped, new unconfirmed one");
        // a gap just inside the buffer keeps the id
        let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
        for f in 0..3u64 {
            t.update_with_frame(f, &[det(100.0 + f as f32, 100.0, 40.0, 80.0, 0.9, 0)]).unwrap();
        }
        let out = t.update_with_frame(22, &[det(122.0, 100.0, 40.0, 80.0, 0.9, 0)]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].track_id, 1);
    }

    #[test]
    fn reset_restarts_ids() {
        let mut t = ByteTracker::new(ByteTrackConfig::default()).unwrap();
        let d = [det(10.0, 10.0, 20.0, 40.0, 0.9, 0), det(100.0, 10.0, 20.0, 40.0, 0.9, 0)];
        assert_eq!(t.update(&d).iter().map(|t| t.track_id).collect::<Vec<_>>(), vec![1, 2]);
        t.reset();
        assert_eq!(t.track_counts(), (0, 0));
        assert_eq!(t.update(&d).iter().map(|t| t.track_id).collect::<Vec<_>>(), vec![1, 2]);
    }
}
