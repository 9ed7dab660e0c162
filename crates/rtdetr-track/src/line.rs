//! Line-crossing counts: how many tracks crossed a line segment, in each direction, per
//! class.
//!
//! A track crosses when the centre of its box moves from one side of the line to the other
//! (the sign of the cross product `(B - A) x (P - A)` changes) and the point where its
//! motion meets the line lies within the segment A-B, ends included. The motion is the
//! straight step from the last centre seen on the old side to the first centre seen on the
//! new side, so a track lost for a few frames (or a dropped frame) still counts when it
//! reappears across the line.
//!
//! - **Directions**: *in* is a move from the left of the directed line A→B to its right,
//!   as seen on the image (y axis pointing down): for a line drawn left to right, *in* is
//!   downwards; for a line drawn top to bottom, *in* is leftwards. Swap A and B to swap
//!   *in* and *out*.
//! - **Once per direction**: each track is counted at most once *in* and at most once
//!   *out*, so an object lingering on the line, or a box jittering around it, never adds
//!   more than one of each. With [`LineCounter::with_min_frames`] a crossing only counts
//!   once the centre has stayed on the new side for that many updates, so one-frame
//!   excursions across the line count nothing.
//! - A centre exactly on the line is on neither side: touching the line (or an end of the
//!   segment) and going back counts nothing; moving along the line counts nothing.
//! - A step that crosses the line's extension outside the segment counts nothing, but
//!   the track is on the other side from then on.
//! - Centres with a NaN or infinite coordinate are ignored.
//! - The state of a track not seen for more than [`LineCounter::with_forget_after`]
//!   frames is dropped (its counts stay): set it to at least the tracker's
//!   `max_time_lost() + 2`, the longest a track can vanish and come back with its id.
//!
//! ```
//! use rtdetr_track::{Direction, LineCounter};
//!
//! // A horizontal line at y = 100 from x = 0 to x = 200; a track moving down across it.
//! let mut line = LineCounter::new([0.0, 100.0], [200.0, 100.0])?;
//! line.update_points(0, [(1, 3, [50.0, 80.0])]);
//! let crossed = line.update_points(1, [(1, 3, [52.0, 120.0])]);
//! assert_eq!(crossed[0].direction, Direction::In);
//! assert_eq!(line.counts_in().get(&3), Some(&1)); // class 3: one in
//! assert_eq!(line.total_out(), 0);
//! # Ok::<(), rtdetr_track::LineError>(())
//! ```

use std::collections::{BTreeMap, HashMap};

use crate::Track;

/// Which way a track crossed the line (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
pub enum Direction {
    /// From the left of A→B to its right (image coordinates, y down).
    In,
    /// From the right of A→B to its left.
    Out,
}

/// One counted crossing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Crossing {
    pub track_id: u64,
    pub class_id: usize,
    pub direction: Direction,
}

/// An invalid line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("the line's points must be finite numbers, got {0:?} and {1:?}")]
    NotFinite([f64; 2], [f64; 2]),
    #[error("the line's two points are the same point {0:?}")]
    Degenerate([f64; 2]),
}

#[derive(Debug, Clone)]
struct Object {
    /// The side the track is on: -1 (left of A→B), 1 (right), 0 (only seen on the line).
    side: i8,
    /// The last centre seen on `side`.
    anchor: [f64; 2],
    /// Consecutive updates seen on the other side (a crossing waiting for `min_frames`).
    pending: u32,
    /// Whether the step that left `side` met the segment.
    pending_hits: bool,
    counted_in: bool,
    counted_out: bool,
    last_seen: u64,
}

/// Counts tracks crossing a line segment, per direction and class. See the module
/// documentation for the rules.
#[derive(Debug, Clone)]
pub struct LineCounter {
    a: [f64; 2],
    b: [f64; 2],
    min_frames: u32,
    forget_after: u64,
    objects: HashMap<u64, Object>,
    counts_in: BTreeMap<usize, u64>,
    counts_out: BTreeMap<usize, u64>,
}

/// `(b - a) x (p - a)`: > 0 when `p` is right of a→b in image coordinates (y down).
fn cross(a: [f64; 2], b: [f64; 2], p: [f64; 2]) -> f64 {
    (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
}

fn sign(x: f64) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

impl LineCounter {
    /// A counter for the segment from `start` to `end` (pixels, x then y). Counts a
    /// crossing as soon as it happens ([`with_min_frames`](Self::with_min_frames) 1) and
    /// forgets tracks unseen for 32 frames (the default tracker's `max_time_lost() + 2`).
    pub fn new(start: [f64; 2], end: [f64; 2]) -> Result<Self, LineError> {
        if !start.iter().chain(&end).all(|v| v.is_finite()) {
            return Err(LineError::NotFinite(start, end));
        }
        if start == end {
            return Err(LineError::Degenerate(start));
        }
        Ok(Self {
            a: start,
            b: end,
            min_frames: 1,
            forget_after: crate::ByteTrackConfig::default().max_time_lost() + 2,
            objects: HashMap::new(),
            counts_in: BTreeMap::new(),
            counts_out: BTreeMap::new(),
        })
    }

    /// A crossing counts once the centre has been seen on the new side in this many
    /// consecutive updates of that track (at least 1, the default).
    pub fn with_min_frames(mut self, frames: u32) -> Self {
        self.min_frames = frames.max(1);
        self
    }

    /// Forget a track's position once it has not been seen for more than `frames` frames
    /// (by frame index). Its counts stay; if its id came back later it would start afresh.
    pub fn with_forget_after(mut self, frames: u64) -> Self {
        self.forget_after = frames;
        self
    }

    /// The segment's two points.
    pub fn line(&self) -> ([f64; 2], [f64; 2]) {
        (self.a, self.b)
    }

    /// Crossings *in* so far, per class id (classes without a crossing are absent).
    pub fn counts_in(&self) -> &BTreeMap<usize, u64> {
        &self.counts_in
    }

    /// Crossings *out* so far, per class id.
    pub fn counts_out(&self) -> &BTreeMap<usize, u64> {
        &self.counts_out
    }

    pub fn total_in(&self) -> u64 {
        self.counts_in.values().sum()
    }

    pub fn total_out(&self) -> u64 {
        self.counts_out.values().sum()
    }

    /// Tracks whose position is held (seen within the forget window).
    pub fn tracked_objects(&self) -> usize {
        self.objects.len()
    }

    /// Forgets every track and every count.
    pub fn reset(&mut self) {
        self.objects.clear();
        self.counts_in.clear();
        self.counts_out.clear();
    }

    /// The tracks of frame `frame_index` (the tracker's output): each box's centre.
    /// Returns the crossings counted in this frame.
    pub fn update(&mut self, frame_index: u64, tracks: &[Track]) -> Vec<Crossing> {
        self.update_points(
            frame_index,
            tracks.iter().map(|t| {
                let [x1, y1, x2, y2] = t.bbox.map(f64::from);
                (t.track_id, t.class_id, [(x1 + x2) / 2.0, (y1 + y2) / 2.0])
            }),
        )
    }

    /// Frame `frame_index`'s objects as `(track_id, class_id, centre)`. Frame indices
    /// should increase (they only decide when unseen tracks are forgotten). Returns the
    /// crossings counted in this frame, in input order.
    pub fn update_points(
        &mut self,
        frame_index: u64,
        points: impl IntoIterator<Item = (u64, usize, [f64; 2])>,
    ) -> Vec<Crossing> {
        let mut crossings = Vec::new();
        for (track_id, class_id, p) in points {
            if !(p[0].is_finite() && p[1].is_finite()) {
                continue;
            }
            if let Some(direction) = self.step(track_id, p, frame_index) {
                let counts = match direction {
                    Direction::In => &mut self.counts_in,
                    Direction::Out => &mut self.counts_out,
                };
                *counts.entry(class_id).or_insert(0) += 1;
                crossings.push(Crossing { track_id, class_id, direction });
            }
        }
        let forget_after = self.forget_after;
        self.objects.retain(|_, o| frame_index.saturating_sub(o.last_seen) <= forget_after);
        crossings
    }

    /// Moves one track to `p`; returns the direction when this counts a crossing.
    fn step(&mut self, track_id: u64, p: [f64; 2], frame_index: u64) -> Option<Direction> {
        let (a, b, min_frames) = (self.a, self.b, self.min_frames);
        let side = sign(cross(a, b, p));
        let o = self.objects.entry(track_id).or_insert(Object {
            side,
            anchor: p,
            pending: 0,
            pending_hits: false,
            counted_in: false,
            counted_out: false,
            last_seen: frame_index,
        });
        o.last_seen = frame_index;
        if side == 0 {
            // On the line: on neither side; the crossing (if any) is decided when it leaves.
            return None;
        }
        if o.side == 0 || side == o.side {
            // First side seen, or still (or back) on its side.
            (o.side, o.anchor, o.pending) = (side, p, 0);
            return None;
        }
        if o.pending == 0 {
            o.pending_hits = meets_segment(o.anchor, p, a, b);
        }
        o.pending += 1;
        if o.pending < min_frames {
            return None;
        }
        let direction = if side > 0 { Direction::In } else { Direction::Out };
        let hits = o.pending_hits;
        (o.side, o.anchor, o.pending) = (side, p, 0);
        if !hits {
            return None;
        }
        let counted = match direction {
            Direction::In => &mut o.counted_in,
            Direction::Out => &mut o.counted_out,
        };
        if *counted {
            return None;
        }
        *counted = true;
        Some(direction)
    }
}

/// Whether the step p→q, whose ends lie strictly on opposite sides of the line through a
/// and b, meets the closed segment a-b: a and b are not strictly on the same side of p→q.
fn meets_segment(p: [f64; 2], q: [f64; 2], a: [f64; 2], b: [f64; 2]) -> bool {
    let (sa, sb) = (sign(cross(p, q, a)), sign(cross(p, q, b)));
    sa == 0 || sb == 0 || sa != sb
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A horizontal line at y = 100 from x = 0 to x = 200 (left to right: *in* is down).
    fn horizontal() -> LineCounter {
        LineCounter::new([0.0, 100.0], [200.0, 100.0]).unwrap()
    }

    /// Feeds one track's centres, one frame each; returns the directions counted.
    fn run(line: &mut LineCounter, id: u64, class: usize, path: &[[f64; 2]]) -> Vec<Direction> {
        let mut out = Vec::new();
        for (f, p) in path.iter().enumerate() {
            out.extend(line.update_points(f as u64, [(id, class, *p)]).into_iter().map(|c| c.direction));
        }
        out
    }

    /// (class, count) pairs.
    type Counts = Vec<(usize, u64)>;

    fn counts(line: &LineCounter) -> (Counts, Counts) {
        (
            line.counts_in().iter().map(|(k, v)| (*k, *v)).collect(),
            line.counts_out().iter().map(|(k, v)| (*k, *v)).collect(),
        )
    }

    #[test]
    fn crossings_both_ways_per_class() {
        let mut line = horizontal();
        // Track 1 (class 0) moves down: in. Track 2 (class 1) moves up: out.
        assert_eq!(run(&mut line, 1, 0, &[[50.0, 60.0], [52.0, 90.0], [54.0, 110.0], [56.0, 140.0]]), [Direction::In]);
        assert_eq!(run(&mut line, 2, 1, &[[150.0, 150.0], [148.0, 101.0], [146.0, 99.0]]), [Direction::Out]);
        // Track 3 (class 0) moves down too: class 0 has two in.
        assert_eq!(run(&mut line, 3, 0, &[[10.0, 0.0], [190.0, 200.0]]), [Direction::In]);
        assert_eq!(counts(&line), (vec![(0, 2)], vec![(1, 1)]));
        assert_eq!((line.total_in(), line.total_out()), (2, 1));
        // Swapping the points swaps the directions.
        let mut swapped = LineCounter::new([200.0, 100.0], [0.0, 100.0]).unwrap();
        assert_eq!(run(&mut swapped, 1, 0, &[[50.0, 60.0], [54.0, 140.0]]), [Direction::Out]);
        // A vertical line drawn top to bottom: in is leftwards.
        let mut vertical = LineCounter::new([100.0, 0.0], [100.0, 200.0]).unwrap();
        assert_eq!(run(&mut vertical, 1, 0, &[[150.0, 50.0], [50.0, 60.0]]), [Direction::In]);
        // A line drawn down-right: in is towards the lower left.
        let mut diagonal = LineCounter::new([0.0, 0.0], [100.0, 100.0]).unwrap();
        assert_eq!(run(&mut diagonal, 1, 0, &[[60.0, 40.0], [40.0, 60.0]]), [Direction::In]);
        assert_eq!(run(&mut diagonal, 2, 0, &[[40.0, 60.0], [60.0, 40.0]]), [Direction::Out]);
    }

    #[test]
    fn a_round_trip_counts_in_then_out() {
        let mut line = horizontal();
        let path = [[50.0, 50.0], [50.0, 150.0], [60.0, 150.0], [60.0, 50.0]];
        assert_eq!(run(&mut line, 7, 2, &path), [Direction::In, Direction::Out]);
        assert_eq!(counts(&line), (vec![(2, 1)], vec![(2, 1)]));
    }

    #[test]
    fn parallel_motion_counts_nothing() {
        let mut line = horizontal();
        // Parallel above, parallel below, and along the line itself.
        let above: Vec<[f64; 2]> = (0..20).map(|i| [i as f64 * 10.0, 95.0]).collect();
        let below: Vec<[f64; 2]> = (0..20).map(|i| [i as f64 * 10.0, 105.0]).collect();
        let on: Vec<[f64; 2]> = (0..20).map(|i| [i as f64 * 10.0, 100.0]).collect();
        assert!(run(&mut line, 1, 0, &above).is_empty());
        assert!(run(&mut line, 2, 0, &below).is_empty());
        assert!(run(&mut line, 3, 0, &on).is_empty());
        assert_eq!((line.total_in(), line.total_out()), (0, 0));
    }

    #[test]
    fn outside_the_segment_and_at_its_ends() {
        let mut line = horizontal();
        // Crossing the line's extension beyond either end counts nothing...
        assert!(run(&mut line, 1, 0, &[[-10.0, 50.0], [-10.0, 150.0]]).is_empty());
        assert!(run(&mut line, 2, 0, &[[201.0, 50.0], [201.0, 150.0]]).is_empty());
        // ...and that track is below the line from then on: crossing back through the
        // segment counts out.
        assert_eq!(run(&mut line, 1, 0, &[[-10.0, 150.0], [100.0, 50.0]]), [Direction::Out]);
        // Touching an end of the segment and going back: nothing.
        assert!(run(&mut line, 3, 0, &[[0.0, 50.0], [0.0, 100.0], [0.0, 50.0]]).is_empty());
        assert!(run(&mut line, 4, 0, &[[200.0, 150.0], [200.0, 100.0], [210.0, 150.0]]).is_empty());
        // A step passing exactly through an end crosses the closed segment: counted.
        assert_eq!(run(&mut line, 5, 0, &[[-10.0, 90.0], [10.0, 110.0]]), [Direction::In]);
        assert_eq!(run(&mut line, 6, 0, &[[190.0, 90.0], [210.0, 110.0]]), [Direction::In]);
        // Stopping on the end point, then leaving to the other side: the step from the
        // last point above to the first point below passes through the segment: counted.
        assert_eq!(run(&mut line, 8, 0, &[[0.0, 50.0], [0.0, 100.0], [0.0, 150.0]]), [Direction::In]);
        // Stopping on the line beyond the end, then leaving: not counted.
        assert!(run(&mut line, 9, 0, &[[-5.0, 50.0], [-5.0, 100.0], [-5.0, 150.0]]).is_empty());
    }

    #[test]
    fn jitter_around_the_line_counts_at_most_once_each_way() {
        // The centre wobbles across the line (±3 px) while it slowly moves down.
        let mut path = vec![[100.0, 80.0], [100.0, 90.0]];
        for i in 0..20 {
            path.push([100.0 + i as f64, if i % 2 == 0 { 103.0 } else { 97.0 }]);
        }
        path.extend([[100.0, 120.0], [100.0, 140.0]]);
        let mut line = horizontal();
        // Counted as soon as it crosses: one in and one out at most, however often it
        // crosses.
        assert_eq!(run(&mut line, 1, 0, &path), [Direction::In, Direction::Out]);
        assert_eq!(counts(&line), (vec![(0, 1)], vec![(0, 1)]));
        // With min_frames 2 the one-frame excursions count nothing: only the real crossing.
        let mut steady = horizontal().with_min_frames(2);
        assert_eq!(run(&mut steady, 1, 0, &path), [Direction::In]);
        assert_eq!(counts(&steady), (vec![(0, 1)], vec![]));
        // Exactly on the line between the two sides: still one crossing.
        let mut touching = horizontal();
        let path = [[100.0, 90.0], [100.0, 100.0], [100.0, 100.0], [100.0, 110.0], [100.0, 100.0], [100.0, 112.0]];
        assert_eq!(run(&mut touching, 1, 0, &path), [Direction::In]);
    }

    #[test]
    fn gaps_forgetting_and_invalid_input() {
        let mut line = horizontal().with_forget_after(5);
        line.update_points(0, [(1, 0, [50.0, 50.0]), (2, 0, [60.0, 50.0])]);
        // Track 1 is lost for 4 frames and reappears below the line: still counted.
        let c = line.update_points(5, [(1, 0, [50.0, 150.0])]);
        assert_eq!(c, [Crossing { track_id: 1, class_id: 0, direction: Direction::In }]);
        assert_eq!(line.tracked_objects(), 2);
        // Track 2 unseen for more than 5 frames: forgotten; it starts afresh.
        line.update_points(6, []);
        assert_eq!(line.tracked_objects(), 1);
        assert!(line.update_points(7, [(2, 0, [60.0, 150.0])]).is_empty());
        // NaN and infinite centres are ignored.
        assert!(line.update_points(8, [(2, 0, [f64::NAN, 50.0]), (2, 0, [60.0, f64::INFINITY])]).is_empty());
        assert_eq!(line.update_points(9, [(2, 0, [60.0, 50.0])])[0].direction, Direction::Out);
        // Counts survive forgetting; reset clears everything.
        assert_eq!((line.total_in(), line.total_out()), (1, 1));
        line.reset();
        assert_eq!((line.total_in(), line.total_out(), line.tracked_objects()), (0, 0, 0));
        assert_eq!(LineCounter::new([1.0, 2.0], [1.0, 2.0]).unwrap_err(), LineError::Degenerate([1.0, 2.0]));
        assert!(matches!(LineCounter::new([f64::NAN, 0.0], [1.0, 2.0]), Err(LineError::NotFinite(..))));
    }

    #[test]
    fn tracks_use_their_box_centre() {
        let mut line = horizontal();
        let track = |y: f32| Track {
            track_id: 4,
            bbox: [40.0, y - 10.0, 60.0, y + 10.0],
            score: 0.9,
            class_id: 1,
            detection_index: 0,
        };
        assert!(line.update(0, &[track(80.0)]).is_empty());
        // The box overlaps the line (y 95..115) but its centre (105) is what crossed.
        assert_eq!(line.update(1, &[track(105.0)])[0].direction, Direction::In);
    }
}
