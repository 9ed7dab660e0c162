//! ByteTrack over the engine's detections, one sequence of frames at a time: what
//! `/v1/stream`'s `{"track": true}` and `rtdetr detect --track` share (the tracker itself is
//! the `rtdetr-track` crate).
//!
//! - The detector runs at the tracker's low threshold (`low_thresh`, 0.1) whatever the
//!   caller's `threshold`, and keeps up to [`TRACK_MAX_DETECTIONS`] boxes: ByteTrack's
//!   second association needs the low-score boxes to keep occluded or blurred objects on
//!   their track, and new tracks only start from `track_thresh + 0.1` anyway.
//! - What is returned: the detections matched to a confirmed track in this frame, each
//!   with its `track_id`, that score above the caller's `threshold`, highest scores first,
//!   at most `max_detections`. Detections that no confirmed track took (one-frame false
//!   positives, a new object's first frame, low-score boxes) are not returned.
//! - With a line, every frame also carries the cumulative counts of tracks whose box
//!   centre (the tracker's box) crossed it, per direction and class label.

use std::collections::BTreeMap;

use rtdetr::{DetectOptions, Detection};
use rtdetr_track::{ByteTrackConfig, ByteTracker, Crossing, LineCounter, Track, TrackError};
use serde::{Deserialize, Serialize};

/// Most detections per frame given to the tracker (the detector's cap while tracking).
pub const TRACK_MAX_DETECTIONS: usize = 300;
/// Largest `track_buffer` accepted (frames a lost track is kept).
pub const MAX_TRACK_BUFFER: u32 = 300;

/// How a sequence is tracked: the tracker's configuration and an optional counting line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrackSettings {
    pub config: ByteTrackConfig,
    /// A segment `[[x1, y1], [x2, y2]]` in image pixels.
    pub line: Option<[[f64; 2]; 2]>,
}

impl TrackSettings {
    /// The options the detector runs with while tracking: the caller's class filter, the
    /// tracker's low threshold, up to [`TRACK_MAX_DETECTIONS`] boxes.
    pub fn detect_options(&self, user: &DetectOptions) -> DetectOptions {
        DetectOptions {
            threshold: self.config.low_thresh as f32,
            max_detections: TRACK_MAX_DETECTIONS,
            classes: user.classes.clone(),
        }
    }

    /// Checks the tracker's configuration, `track_buffer` (1..=[`MAX_TRACK_BUFFER`]) and
    /// the line; `Err((field, message))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = self.config.validate() {
            let field = match &e {
                rtdetr_track::ConfigError::Threshold { name, .. } => name,
                rtdetr_track::ConfigError::FrameRate(_) => "frame_rate",
            };
            return Err((field, e.to_string()));
        }
        let b = self.config.track_buffer;
        if !(1..=MAX_TRACK_BUFFER).contains(&b) {
            return Err(("track_buffer", format!("track_buffer must be in 1..={MAX_TRACK_BUFFER}, got {b}")));
        }
        if let Some([a, b]) = self.line {
            LineCounter::new(a, b).map_err(|e| ("line", e.to_string()))?;
        }
        Ok(())
    }
}

/// A detection with the id of the track it belongs to (the detection's own box, label and
/// score, as without tracking, plus `track_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackedDetection {
    #[serde(flatten)]
    pub detection: Detection,
    pub track_id: u64,
}

/// Cumulative line crossings per class label (`{"in": {...}, "out": {...}}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineCounts {
    #[serde(rename = "in")]
    pub inward: BTreeMap<String, u64>,
    pub out: BTreeMap<String, u64>,
}

/// One frame's tracking result.
#[derive(Debug, Clone)]
pub struct TrackedFrame {
    /// What to return (see the module documentation).
    pub detections: Vec<TrackedDetection>,
    /// Every confirmed track of the frame (the tracker's output, with its Kalman box),
    /// including those whose detection scored below the caller's threshold.
    pub tracks: Vec<Track>,
    /// Crossings counted in this frame.
    pub crossings: Vec<Crossing>,
    /// Counts so far, with a line.
    pub counts: Option<LineCounts>,
}

/// A class id's label (`LABEL_{id}` beyond the model's list, as the engine names them).
pub fn label(labels: &[String], class_id: usize) -> String {
    labels.get(class_id).cloned().unwrap_or_else(|| format!("LABEL_{class_id}"))
}

/// The tracker (and line counter) of one sequence of frames.
pub struct SequenceTracker {
    tracker: ByteTracker,
    counter: Option<LineCounter>,
}

impl SequenceTracker {
    /// A fresh tracker; `Err` names the invalid setting (see [`TrackSettings::validate`]).
    pub fn new(settings: &TrackSettings) -> Result<Self, (&'static str, String)> {
        settings.validate()?;
        let tracker = ByteTracker::new(settings.config.clone()).map_err(|e| ("track", e.to_string()))?;
        let counter = match settings.line {
            Some([a, b]) => Some(
                LineCounter::new(a, b)
                    .map_err(|e| ("line", e.to_string()))?
                    .with_forget_after(settings.config.max_time_lost() + 2),
            ),
            None => None,
        };
        Ok(Self { tracker, counter })
    }

    /// Frame `frame` (indices increase; skipped or dropped frames are predicted through)
    /// with its detections, as the detector returned them for
    /// [`TrackSettings::detect_options`] (highest scores first).
    pub fn update(
        &mut self,
        frame: u64,
        detections: Vec<Detection>,
        threshold: f32,
        max_detections: usize,
        labels: &[String],
    ) -> Result<TrackedFrame, TrackError> {
        let inputs: Vec<rtdetr_track::Detection> = detections
            .iter()
            .map(|d| rtdetr_track::Detection {
                bbox: [d.bbox.xmin, d.bbox.ymin, d.bbox.xmax, d.bbox.ymax],
                score: d.score,
                class_id: d.class_id,
            })
            .collect();
        let tracks = self.tracker.update_with_frame(frame, &inputs)?;
        let crossings = match &mut self.counter {
            Some(c) => c.update(frame, &tracks),
            None => Vec::new(),
        };
        // In the detector's order (highest score first).
        let mut matched: Vec<(usize, u64)> = tracks.iter().map(|t| (t.detection_index, t.track_id)).collect();
        matched.sort_unstable();
        let mut detections: Vec<Option<Detection>> = detections.into_iter().map(Some).collect();
        let detections = matched
            .into_iter()
            .filter_map(|(i, track_id)| {
                let detection = detections.get_mut(i)?.take()?;
                (detection.score > threshold).then_some(TrackedDetection { detection, track_id })
            })
            .take(max_detections)
            .collect();
        Ok(TrackedFrame { detections, tracks, crossings, counts: self.counts(labels) })
    }

    /// Counts so far, with a line.
    pub fn counts(&self, labels: &[String]) -> Option<LineCounts> {
        let c = self.counter.as_ref()?;
        let by_label = |m: &BTreeMap<usize, u64>| m.iter().map(|(&id, &n)| (label(labels, id), n)).collect();
        Some(LineCounts { inward: by_label(c.counts_in()), out: by_label(c.counts_out()) })
    }

    pub fn line(&self) -> Option<([f64; 2], [f64; 2])> {
        self.counter.as_ref().map(|c| c.line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtdetr::BoundingBox;

    fn det(class_id: usize, score: f32, x: f32, y: f32) -> Detection {
        Detection {
            label: ["a", "b"][class_id].into(),
            class_id,
            score,
            bbox: BoundingBox { xmin: x, ymin: y, xmax: x + 40.0, ymax: y + 40.0 },
        }
    }

    #[test]
    fn returns_tracked_detections_above_the_threshold_with_counts() {
        let settings = TrackSettings { line: Some([[0.0, 32.0], [200.0, 32.0]]), ..Default::default() };
        let labels = vec!["a".to_string(), "b".to_string()];
        let mut t = SequenceTracker::new(&settings).unwrap();
        // Frame 0: both high-score objects get ids at once (first frame); the 0.3 one starts
        // nothing and is not returned.
        let f = t
            .update(
                0,
                vec![det(0, 0.9, 10.0, 10.0), det(1, 0.8, 100.0, 100.0), det(0, 0.3, 150.0, 10.0)],
                0.5,
                100,
                &labels,
            )
            .unwrap();
        let ids: Vec<(u64, f32)> = f.detections.iter().map(|d| (d.track_id, d.detection.score)).collect();
        assert_eq!(ids, [(1, 0.9), (2, 0.8)]);
        assert_eq!(f.counts, Some(LineCounts::default()));
        // Frame 2 (frame 1 dropped): object a moved down, its centre across y = 32, and
        // scores 0.4: it keeps its track (second association) and is counted, but is below
        // the threshold: not returned. Object b is returned with its id.
        let f = t.update(2, vec![det(1, 0.85, 102.0, 102.0), det(0, 0.4, 10.0, 16.0)], 0.5, 100, &labels).unwrap();
        let ids: Vec<u64> = f.detections.iter().map(|d| d.track_id).collect();
        assert_eq!(ids, [2]);
        assert_eq!(f.tracks.len(), 2);
        let counts = f.counts.unwrap();
        assert_eq!(counts.inward.get("a"), Some(&1));
        assert!(counts.out.is_empty());
        // At threshold 0.1 both are returned, in score order; max_detections caps them.
        let f = t.update(3, vec![det(1, 0.85, 103.0, 103.0), det(0, 0.4, 10.0, 18.0)], 0.1, 100, &labels).unwrap();
        assert_eq!(f.detections.iter().map(|d| d.track_id).collect::<Vec<_>>(), [2, 1]);
        let f = t.update(4, vec![det(1, 0.85, 104.0, 104.0), det(0, 0.4, 10.0, 19.0)], 0.1, 1, &labels).unwrap();
        assert_eq!(f.detections.len(), 1);
        let json = serde_json::to_value(&f.detections[0]).unwrap();
        assert_eq!(json["track_id"], 2);
        assert_eq!(json["label"], "b");
        assert!(json["box"]["xmin"].is_number());
        // Frames must increase.
        assert!(t.update(4, vec![], 0.5, 100, &labels).is_err());
    }

    #[test]
    fn settings_are_validated() {
        let bad = |s: TrackSettings| TrackSettings::validate(&s).unwrap_err().0;
        let mut s = TrackSettings::default();
        s.config.track_thresh = 1.5;
        assert_eq!(bad(s), "track_thresh");
        let mut s = TrackSettings::default();
        s.config.match_thresh = -0.1;
        assert_eq!(bad(s), "match_thresh");
        let mut s = TrackSettings::default();
        s.config.track_buffer = 0;
        assert_eq!(bad(s), "track_buffer");
        let s = TrackSettings { line: Some([[1.0, 1.0], [1.0, 1.0]]), ..Default::default() };
        assert_eq!(bad(s), "line");
        let opts =
            TrackSettings::default().detect_options(&DetectOptions { classes: Some(vec![1]), ..Default::default() });
        assert_eq!((opts.threshold, opts.max_detections, opts.classes), (0.1, TRACK_MAX_DETECTIONS, Some(vec![1])));
    }
}
