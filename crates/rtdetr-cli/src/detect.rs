//! `rtdetr detect`: detections as a table or JSON Lines, optional annotated images.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rtdetr::{DetectOptions, Detection};
use serde::Serialize;

use crate::ModelArgs;

#[derive(clap::Args)]
pub struct DetectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Keep detections with a score above this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// At most this many detections per image.
    #[arg(long, default_value_t = 100)]
    pub max_detections: usize,
    /// Only these classes (comma-separated label names), e.g. person,car.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Print one JSON object per image per line.
    #[arg(long)]
    pub json: bool,
    /// Write annotated images: a file (one input image) or a directory.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Videos: run the model on every Nth frame (the others reuse its detections).
    #[arg(long, default_value_t = 1)]
    pub every: u64,
    /// Track objects (ByteTrack) across a video's frames, or across the images in the order
    /// given: each returned detection gets a `track_id`; the annotated output shows ids and
    /// trails. The model then runs at the tracker's low threshold (0.1) and `--threshold`
    /// applies to the tracked detections printed.
    #[arg(long)]
    pub track: bool,
    /// Tracking: detections scoring at least this are matched first; new tracks start from
    /// this + 0.1.
    #[arg(long, default_value_t = 0.5, requires = "track")]
    pub track_thresh: f64,
    /// Tracking: largest matching cost (1 - IoU x score) accepted in the first association.
    #[arg(long, default_value_t = 0.9, requires = "track")]
    pub match_thresh: f64,
    /// Tracking: frames (at 30 fps; scaled to the video's rate) a lost track is kept for
    /// re-identification, 1..=300.
    #[arg(long, default_value_t = 30, requires = "track")]
    pub track_buffer: u32,
    /// Tracking: count tracks whose box centre crosses the segment from (x1,y1) to (x2,y2)
    /// (pixels), per class; `in` is a move from the left of the line to its right, as seen
    /// on the image (for a line drawn left to right: downwards).
    #[arg(long, value_name = "X1,Y1,X2,Y2", requires = "track")]
    pub line: Option<String>,
    /// Image files (JPEG, PNG, WebP, BMP, GIF), video files (MP4, MKV, AVI, MOV, WebM, ...)
    /// or stream URLs (rtsp://, http(s):// MJPEG). Video needs the `video` build feature.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

fn is_video(p: &Path) -> bool {
    let s = p.to_string_lossy().to_lowercase();
    ["rtsp://", "rtmp://", "http://", "https://"].iter().any(|x| s.starts_with(x))
        || ["mp4", "mkv", "avi", "mov", "webm", "m4v", "mjpeg", "mpg", "mpeg", "ts"]
            .iter()
            .any(|e| p.extension().is_some_and(|x| x.to_string_lossy().to_lowercase() == *e))
}

#[cfg(feature = "video")]
fn run_video(
    det: &rtdetr::Detector,
    input: &Path,
    opts: &DetectOptions,
    args: &DetectArgs,
    single: bool,
) -> anyhow::Result<()> {
    // The video's frame rate replaces 30 fps in the settings once the video is open.
    let track = if args.track { Some(crate::track::settings(args, 30.0)?) } else { None };
    let out = args.output.as_ref().map(|o| {
        if single && o.extension().is_some() && !o.is_dir() {
            o.clone()
        } else {
            let stem = input.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "video".into());
            o.join(format!("{stem}.mp4"))
        }
    });
    crate::video::run(det, &input.to_string_lossy(), opts, args.every, args.json, out.as_deref(), track)
}

#[cfg(not(feature = "video"))]
fn run_video(_: &rtdetr::Detector, input: &Path, _: &DetectOptions, _: &DetectArgs, _: bool) -> anyhow::Result<()> {
    anyhow::bail!(
        "{}: this build has no video support; rebuild with `cargo build --release --features video` (needs the FFmpeg development libraries)",
        input.display()
    )
}

/// One line of `--json` output.
#[derive(Serialize)]
pub struct ImageResult<'a> {
    pub image: &'a str,
    pub width: u32,
    pub height: u32,
    pub detections: &'a [Detection],
}

fn output_path(output: &Path, image: &Path, single: bool) -> PathBuf {
    let is_file_target = single
        && output.extension().is_some_and(|e| {
            ["png", "jpg", "jpeg", "bmp", "webp"].contains(&e.to_string_lossy().to_lowercase().as_str())
        })
        && !output.is_dir();
    if is_file_target {
        output.to_path_buf()
    } else {
        let stem = image.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
        output.join(format!("{stem}.png"))
    }
}

pub fn run(args: DetectArgs) -> anyhow::Result<i32> {
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.threshold) {
        anyhow::bail!("--threshold must be in [0, 1], got {}", args.threshold);
    }
    if args.every == 0 {
        anyhow::bail!("--every must be at least 1");
    }
    // Check the tracking flags before the model load too.
    let track_settings = if args.track { Some(crate::track::settings(&args, 30.0)?) } else { None };
    // Check the inputs before the (possibly slow) model load.
    for p in &args.images {
        let url = p.to_string_lossy().contains("://");
        if !url && !p.is_file() {
            anyhow::bail!("{}: no such file", p.display());
        }
    }
    let det = args.model.load()?;
    let classes = match &args.classes {
        Some(names) => Some(det.class_ids(names)?),
        None => None,
    };
    let opts = DetectOptions { threshold: args.threshold, max_detections: args.max_detections, classes };
    let single = args.images.len() == 1;
    if let Some(out) = &args.output {
        if !single || out.extension().is_none() {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create output directory {}", out.display()))?;
        }
    }
    let stdout = std::io::stdout();
    let mut failures = 0;
    let (videos, images): (Vec<&PathBuf>, Vec<&PathBuf>) = args.images.iter().partition(|p| is_video(p));
    for v in videos {
        if let Err(e) = run_video(&det, v, &opts, &args, single) {
            eprintln!("error: {e:#}");
            failures += 1;
        }
    }
    let images: Vec<PathBuf> = images.into_iter().cloned().collect();
    if let Some(settings) = track_settings {
        if !images.is_empty() {
            failures += track_images(&det, &images, &opts, settings, &args, single)?;
        }
        return Ok(if failures > 0 { 1 } else { 0 });
    }
    for chunk in images.chunks(args.batch_size) {
        // Decode each file; one bad file is reported and skipped, not fatal.
        let mut loaded = Vec::new();
        for path in chunk {
            match rtdetr::load_image(path) {
                Ok(img) => loaded.push((path, img)),
                Err(e) => {
                    eprintln!("error: {e}");
                    failures += 1;
                }
            }
        }
        if loaded.is_empty() {
            continue;
        }
        let images: Vec<_> = loaded.iter().map(|(_, i)| i.clone()).collect();
        let results = det.detect_batch(&images, &opts)?;
        for ((path, img), dets) in loaded.iter().zip(&results) {
            let name = path.to_string_lossy();
            let mut lock = stdout.lock();
            if args.json {
                let line = serde_json::to_string(&ImageResult {
                    image: &name,
                    width: img.width(),
                    height: img.height(),
                    detections: dets,
                })?;
                writeln!(lock, "{line}")?;
            } else {
                writeln!(lock, "{name} ({}x{}): {} detection(s)", img.width(), img.height(), dets.len())?;
                if !dets.is_empty() {
                    writeln!(
                        lock,
                        "  {:<16} {:>6}  {:>8} {:>8} {:>8} {:>8}",
                        "label", "score", "xmin", "ymin", "xmax", "ymax"
                    )?;
                }
                for d in dets {
                    writeln!(
                        lock,
                        "  {:<16} {:>6.3}  {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                        d.label, d.score, d.bbox.xmin, d.bbox.ymin, d.bbox.xmax, d.bbox.ymax
                    )?;
                }
            }
            if let Some(out) = &args.output {
                let target = output_path(out, path, single);
                rtdetr::io::draw::annotate(img, dets)
                    .save(&target)
                    .with_context(|| format!("cannot write {}", target.display()))?;
                if !args.json {
                    writeln!(lock, "  wrote {}", target.display())?;
                }
            }
        }
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

/// `--track` over images: frames 0, 1, 2, ... in the order given (an image that fails to
/// load is a frame the tracker predicts through). Returns the number of failures.
fn track_images(
    det: &rtdetr::Detector,
    images: &[PathBuf],
    opts: &DetectOptions,
    settings: rtdetr_server::tracking::TrackSettings,
    args: &DetectArgs,
    single: bool,
) -> anyhow::Result<usize> {
    let mut seq = crate::track::Sequence::new(settings, det.labels())?;
    let detect_opts = seq.detect_options(opts);
    let stdout = std::io::stdout();
    let mut failures = 0;
    let mut frame = 0u64;
    for chunk in images.chunks(args.batch_size) {
        let mut loaded = Vec::new();
        for path in chunk {
            match rtdetr::load_image(path) {
                Ok(img) => loaded.push((path, frame, img)),
                Err(e) => {
                    eprintln!("error: {e}");
                    failures += 1;
                }
            }
            frame += 1;
        }
        if loaded.is_empty() {
            continue;
        }
        let batch: Vec<_> = loaded.iter().map(|(_, _, i)| i.clone()).collect();
        let results = det.detect_batch(&batch, &detect_opts)?;
        for ((path, n, img), dets) in loaded.iter().zip(results) {
            let tracked = seq.update(*n, dets, opts)?;
            let name = path.to_string_lossy();
            let mut lock = stdout.lock();
            if args.json {
                let line = crate::track::TrackedLine {
                    image: Some(&name),
                    frame: *n,
                    time_s: None,
                    width: img.width(),
                    height: img.height(),
                    detections: &tracked.detections,
                    counts: tracked.counts.as_ref(),
                };
                writeln!(lock, "{}", serde_json::to_string(&line)?)?;
            } else {
                let n_dets = tracked.detections.len();
                writeln!(lock, "{name} ({}x{}): {n_dets} tracked detection(s)", img.width(), img.height())?;
                if n_dets > 0 {
                    writeln!(
                        lock,
                        "  {:>5} {:<16} {:>6}  {:>8} {:>8} {:>8} {:>8}",
                        "id", "label", "score", "xmin", "ymin", "xmax", "ymax"
                    )?;
                }
                for t in &tracked.detections {
                    let d = &t.detection;
                    writeln!(
                        lock,
                        "  {:>5} {:<16} {:>6.3}  {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                        t.track_id, d.label, d.score, d.bbox.xmin, d.bbox.ymin, d.bbox.xmax, d.bbox.ymax
                    )?;
                }
                if let Some(c) = &tracked.counts {
                    writeln!(lock, "  counts: {}", crate::track::counts_text(c))?;
                }
            }
            if let Some(out) = &args.output {
                let target = output_path(out, path, single);
                seq.draw(img, &tracked).save(&target).with_context(|| format!("cannot write {}", target.display()))?;
                if !args.json {
                    writeln!(lock, "  wrote {}", target.display())?;
                }
            }
        }
    }
    seq.write_summary(&mut stdout.lock(), args.json)?;
    Ok(failures)
}
