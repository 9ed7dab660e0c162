//! `rtdetr detect --track`: ByteTrack over the frames of a video, or over the images in the
//! order given (`rtdetr_server::tracking`, the same as `/v1/stream`'s `{"track": true}`):
//! `track_id` on each tracked detection, line-crossing counts with `--line`, ids and trails
//! drawn on the annotated output, and a summary at the end.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;

use image::{Rgb, RgbImage};
use rtdetr::io::draw;
use rtdetr::{DetectOptions, Detection};
use rtdetr_server::tracking::{LineCounts, SequenceTracker, TrackSettings, TrackedDetection, TrackedFrame};
use rtdetr_track::ByteTrackConfig;
use serde::Serialize;

use crate::detect::DetectArgs;

/// Centre points kept per track for its trail.
pub const TRAIL_POINTS: usize = 30;

/// `--line x1,y1,x2,y2`.
pub fn parse_line(s: &str) -> anyhow::Result<[[f64; 2]; 2]> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
        .collect::<Option<_>>()
        .filter(|v: &Vec<f64>| v.len() == 4)
        .ok_or_else(|| anyhow::anyhow!("invalid --line {s:?}: expected four numbers x1,y1,x2,y2 (pixels)"))?;
    Ok([[v[0], v[1]], [v[2], v[3]]])
}

/// The tracking settings of `rtdetr detect`'s flags; `frame_rate` scales `--track-buffer`
/// (frames at 30 fps) to the video's frame rate.
pub fn settings(args: &DetectArgs, frame_rate: f64) -> anyhow::Result<TrackSettings> {
    let line = args.line.as_deref().map(parse_line).transpose()?;
    let config = ByteTrackConfig {
        track_thresh: args.track_thresh,
        match_thresh: args.match_thresh,
        track_buffer: args.track_buffer,
        frame_rate: if frame_rate.is_finite() && frame_rate > 0.0 { frame_rate } else { 30.0 },
        ..ByteTrackConfig::default()
    };
    let settings = TrackSettings { config, line };
    settings.validate().map_err(|(field, msg)| anyhow::anyhow!("--{}: {msg}", field.replace('_', "-")))?;
    Ok(settings)
}

/// One frame of JSON Lines output with tracking.
#[derive(Serialize)]
pub struct TrackedLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<&'a str>,
    pub frame: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_s: Option<f64>,
    pub width: u32,
    pub height: u32,
    pub detections: &'a [TrackedDetection],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<&'a LineCounts>,
}

struct Trail {
    class_id: usize,
    last_frame: u64,
    points: VecDeque<(f32, f32)>,
}

/// A tracked sequence: the tracker, each track's trail, what to draw.
pub struct Sequence {
    tracker: SequenceTracker,
    settings: TrackSettings,
    labels: Vec<String>,
    trails: HashMap<u64, Trail>,
    frames: u64,
    max_track_id: u64,
}

impl Sequence {
    pub fn new(settings: TrackSettings, labels: &[String]) -> anyhow::Result<Self> {
        let tracker = SequenceTracker::new(&settings).map_err(|(field, msg)| anyhow::anyhow!("{field}: {msg}"))?;
        Ok(Self { tracker, settings, labels: labels.to_vec(), trails: HashMap::new(), frames: 0, max_track_id: 0 })
    }

    /// The detector's options while tracking (the tracker's low threshold, see
    /// `rtdetr_server::tracking`).
    pub fn detect_options(&self, user: &DetectOptions) -> DetectOptions {
        self.settings.detect_options(user)
    }

    /// Frame `frame`'s detections (found with [`Sequence::detect_options`]).
    pub fn update(
        &mut self,
        frame: u64,
        detections: Vec<Detection>,
        user: &DetectOptions,
    ) -> anyhow::Result<TrackedFrame> {
        let out = self.tracker.update(frame, detections, user.threshold, user.max_detections, &self.labels)?;
        self.frames += 1;
        for t in &out.tracks {
            self.max_track_id = self.max_track_id.max(t.track_id);
            let [x1, y1, x2, y2] = t.bbox;
            let trail = self.trails.entry(t.track_id).or_insert_with(|| Trail {
                class_id: t.class_id,
                last_frame: frame,
                points: VecDeque::new(),
            });
            trail.last_frame = frame;
            trail.points.push_back(((x1 + x2) / 2.0, (y1 + y2) / 2.0));
            while trail.points.len() > TRAIL_POINTS {
                trail.points.pop_front();
            }
        }
        // A track unseen for longer than the tracker keeps lost tracks is gone for good.
        let keep = self.settings.config.max_time_lost() + 2;
        self.trails.retain(|_, t| frame.saturating_sub(t.last_frame) <= keep);
        Ok(out)
    }

    /// `image` with the frame's tracked boxes (labelled `#id label score`), each track's
    /// trail (its last [`TRAIL_POINTS`] centres), the line and the counts.
    pub fn draw(&self, image: &RgbImage, frame: &TrackedFrame) -> RgbImage {
        let labelled: Vec<Detection> = frame
            .detections
            .iter()
            .map(|d| Detection { label: format!("#{} {}", d.track_id, d.detection.label), ..d.detection.clone() })
            .collect();
        let mut canvas = image.clone();
        let thickness = draw::line_thickness(canvas.width(), canvas.height());
        for d in &frame.detections {
            if let Some(trail) = self.trails.get(&d.track_id) {
                let color = draw::class_color(trail.class_id);
                for (a, b) in trail.points.iter().zip(trail.points.iter().skip(1)) {
                    draw::draw_line(&mut canvas, *a, *b, color, thickness);
                }
            }
        }
        draw::annotate_in_place(&mut canvas, &labelled);
        if let Some([a, b]) = self.settings.line {
            let yellow = Rgb([255, 220, 0]);
            draw::draw_line(&mut canvas, (a[0] as f32, a[1] as f32), (b[0] as f32, b[1] as f32), yellow, thickness + 1);
            if let Some(counts) = &frame.counts {
                draw::draw_label(&mut canvas, 2, 2, &counts_text(counts), yellow);
            }
        }
        canvas
    }

    pub fn counts(&self) -> Option<LineCounts> {
        self.tracker.counts(&self.labels)
    }

    /// The end-of-run summary: a JSON line `{"summary":{"frames","tracks","counts"?}}`, or
    /// text lines.
    pub fn write_summary(&self, out: &mut impl Write, json: bool) -> anyhow::Result<()> {
        let counts = self.counts();
        if json {
            #[derive(Serialize)]
            struct Summary<'a> {
                frames: u64,
                tracks: u64,
                #[serde(skip_serializing_if = "Option::is_none")]
                counts: Option<&'a LineCounts>,
            }
            let s = Summary { frames: self.frames, tracks: self.max_track_id, counts: counts.as_ref() };
            writeln!(out, "{}", serde_json::json!({ "summary": s }))?;
        } else {
            writeln!(out, "tracking: {} frames, {} tracks", self.frames, self.max_track_id)?;
            if let (Some(c), Some([a, b])) = (&counts, self.settings.line) {
                writeln!(out, "line ({},{}) -> ({},{}): {}", a[0], a[1], b[0], b[1], counts_text(c))?;
            }
        }
        Ok(())
    }
}

fn side(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        "0".into()
    } else {
        m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    }
}

/// `in: triangle 1, star 2  out: 0`.
pub fn counts_text(c: &LineCounts) -> String {
    format!("in: {}  out: {}", side(&c.inward), side(&c.out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(parse_line("0,10.5, 100 ,10.5").unwrap(), [[0.0, 10.5], [100.0, 10.5]]);
        for bad in ["", "1,2,3", "1,2,3,4,5", "a,b,c,d", "1,2,3,inf", "1,2,3,NaN"] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
        let mut c = LineCounts::default();
        assert_eq!(counts_text(&c), "in: 0  out: 0");
        c.inward.insert("triangle".into(), 2);
        c.inward.insert("circle".into(), 1);
        assert_eq!(counts_text(&c), "in: circle 1, triangle 2  out: 0");
    }
}
