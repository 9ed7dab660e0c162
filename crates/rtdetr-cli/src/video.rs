//! Video files and streams for `rtdetr detect` (cargo feature `video`): decoded with the
//! FFmpeg libraries, JSON Lines per processed frame, optionally an annotated video; with
//! `--track`, ByteTrack ids, trails and line counts ([`crate::track`]).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Context};
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling::{context::Context as Scaler, flag::Flags};
use ffmpeg::util::frame::video::Video as Frame;
use ffmpeg_next as ffmpeg;
use indicatif::{ProgressBar, ProgressStyle};
use rtdetr::{DetectOptions, Detection, Detector};
use rtdetr_server::tracking::{TrackSettings, TrackedFrame};
use serde::Serialize;

use crate::track::{Sequence, TrackedLine};

#[derive(Serialize)]
struct FrameResult<'a> {
    frame: u64,
    time_s: f64,
    width: u32,
    height: u32,
    detections: &'a [Detection],
}

/// Copies a packed RGB24 frame (rows may be padded) into an `RgbImage`.
fn frame_to_rgb(frame: &Frame) -> image::RgbImage {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let stride = frame.stride(0);
    let data = frame.data(0);
    let mut buf = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        buf.extend_from_slice(&data[y * stride..y * stride + w * 3]);
    }
    image::RgbImage::from_raw(w as u32, h as u32, buf).expect("buffer has w*h*3 bytes")
}

fn rgb_to_frame(img: &image::RgbImage) -> Frame {
    let (w, h) = img.dimensions();
    let mut frame = Frame::new(Pixel::RGB24, w, h);
    let stride = frame.stride(0);
    let row = w as usize * 3;
    let data = frame.data_mut(0);
    for (y, src) in img.as_raw().chunks_exact(row).enumerate() {
        data[y * stride..y * stride + row].copy_from_slice(src);
    }
    frame
}

/// An H.264 (or MPEG-4 Part 2) writer for annotated frames.
struct VideoWriter {
    octx: ffmpeg::format::context::Output,
    encoder: ffmpeg::encoder::video::Encoder,
    scaler: Scaler,
    stream_index: usize,
    time_base: ffmpeg::Rational,
    stream_time_base: ffmpeg::Rational,
    next_pts: i64,
}

impl VideoWriter {
    fn new(path: &Path, width: u32, height: u32, rate: ffmpeg::Rational) -> anyhow::Result<Self> {
        let mut octx = ffmpeg::format::output(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let global_header = octx.format().flags().contains(ffmpeg::format::flag::Flags::GLOBAL_HEADER);
        let codec = ffmpeg::encoder::find_by_name("libx264")
            .or_else(|| ffmpeg::encoder::find(ffmpeg::codec::Id::MPEG4))
            .ok_or_else(|| anyhow!("no H.264 or MPEG-4 encoder in this FFmpeg build"))?;
        let mut stream = octx.add_stream(codec)?;
        let stream_index = stream.index();
        let mut enc = ffmpeg::codec::context::Context::new_with_codec(codec).encoder().video()?;
        // Even dimensions for 4:2:0.
        let (w, h) = (width & !1, height & !1);
        let rate = if rate.numerator() > 0 && rate.denominator() > 0 { rate } else { ffmpeg::Rational(25, 1) };
        let time_base = rate.invert();
        enc.set_width(w);
        enc.set_height(h);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(time_base);
        enc.set_frame_rate(Some(rate));
        if global_header {
            enc.set_flags(ffmpeg::codec::flag::Flags::GLOBAL_HEADER);
        }
        let encoder = enc.open_as(codec)?;
        stream.set_parameters(&encoder);
        stream.set_time_base(time_base);
        octx.write_header()?;
        let stream_time_base = octx.stream(stream_index).map(|s| s.time_base()).unwrap_or(time_base);
        let scaler = Scaler::get(Pixel::RGB24, width, height, Pixel::YUV420P, w, h, Flags::BILINEAR)?;
        Ok(Self { octx, encoder, scaler, stream_index, time_base, stream_time_base, next_pts: 0 })
    }

    fn write(&mut self, img: &image::RgbImage) -> anyhow::Result<()> {
        let rgb = rgb_to_frame(img);
        let mut yuv = Frame::empty();
        self.scaler.run(&rgb, &mut yuv)?;
        yuv.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.encoder.send_frame(&yuv)?;
        self.drain()
    }

    fn drain(&mut self) -> anyhow::Result<()> {
        let mut packet = ffmpeg::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(self.stream_index);
            packet.rescale_ts(self.time_base, self.stream_time_base);
            packet.write_interleaved(&mut self.octx)?;
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.encoder.send_eof()?;
        self.drain()?;
        self.octx.write_trailer()?;
        Ok(())
    }
}

/// Runs detection on every `every`-th frame of a video file or stream URL; with `track`,
/// tracks across the processed frames (by frame number, so skipped frames are predicted
/// through; the video's frame rate replaces the settings' 30 fps).
pub fn run(
    det: &Detector,
    input: &str,
    opts: &DetectOptions,
    every: u64,
    json: bool,
    output: Option<&Path>,
    track: Option<TrackSettings>,
) -> anyhow::Result<()> {
    ffmpeg::init().context("cannot initialise FFmpeg")?;
    // Errors come back as values with their reason; FFmpeg's own log would add noise.
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Quiet);
    let mut ictx = ffmpeg::format::input(&input).with_context(|| format!("{input}: cannot open video"))?;
    let stream = ictx.streams().best(ffmpeg::media::Type::Video).ok_or_else(|| anyhow!("{input}: no video stream"))?;
    let stream_index = stream.index();
    let time_base = stream.time_base();
    let rate = stream.avg_frame_rate();
    let total = u64::try_from(stream.frames()).unwrap_or(0);
    let ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters())?;
    let mut decoder = ctx.decoder().video().with_context(|| format!("{input}: unsupported video codec"))?;
    let (w, h) = (decoder.width(), decoder.height());
    if w == 0 || h == 0 {
        anyhow::bail!("{input}: video has no size");
    }
    let mut scaler = Scaler::get(decoder.format(), w, h, Pixel::RGB24, w, h, Flags::BILINEAR)?;
    let mut seq = match track {
        Some(mut settings) => {
            let fps = f64::from(rate);
            if fps.is_finite() && fps > 0.0 {
                settings.config.frame_rate = fps;
            }
            Some(Sequence::new(settings, det.labels())?)
        }
        None => None,
    };
    let detect_opts = seq.as_ref().map_or_else(|| opts.clone(), |s| s.detect_options(opts));
    let mut writer = match output {
        Some(p) => Some(VideoWriter::new(p, w, h, rate)?),
        None => None,
    };
    let bar = if total > 0 { ProgressBar::new(total) } else { ProgressBar::new_spinner() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} frames  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut index: u64 = 0;
    let mut last: Vec<Detection> = Vec::new();
    let mut last_tracked: Option<TrackedFrame> = None;
    let mut handle = |decoded: &Frame, index: &mut u64, last: &mut Vec<Detection>| -> anyhow::Result<()> {
        let mut rgb = Frame::empty();
        scaler.run(decoded, &mut rgb)?;
        let img = frame_to_rgb(&rgb);
        let n = *index;
        *index += 1;
        if n.is_multiple_of(every) {
            *last = det.detect(&img, &detect_opts)?;
            let t = decoded.timestamp().or(decoded.pts()).unwrap_or(0) as f64 * f64::from(time_base);
            if let Some(seq) = seq.as_mut() {
                let tracked = seq.update(n, std::mem::take(last), opts)?;
                if json {
                    let line = serde_json::to_string(&TrackedLine {
                        image: None,
                        frame: n,
                        time_s: Some(t),
                        width: img.width(),
                        height: img.height(),
                        detections: &tracked.detections,
                        counts: tracked.counts.as_ref(),
                    })?;
                    writeln!(stdout.lock(), "{line}")?;
                }
                last_tracked = Some(tracked);
            } else if json {
                let line = serde_json::to_string(&FrameResult {
                    frame: n,
                    time_s: t,
                    width: img.width(),
                    height: img.height(),
                    detections: last,
                })?;
                writeln!(stdout.lock(), "{line}")?;
            }
        }
        if let Some(wr) = writer.as_mut() {
            // Frames between processed ones reuse the last detections.
            match (seq.as_ref(), last_tracked.as_ref()) {
                (Some(seq), Some(tracked)) => wr.write(&seq.draw(&img, tracked))?,
                _ => wr.write(&rtdetr::io::draw::annotate(&img, last))?,
            }
        }
        bar.inc(1);
        Ok(())
    };
    let mut decoded = Frame::empty();
    for (s, packet) in ictx.packets() {
        if s.index() != stream_index {
            continue;
        }
        decoder.send_packet(&packet)?;
        while decoder.receive_frame(&mut decoded).is_ok() {
            handle(&decoded, &mut index, &mut last)?;
        }
    }
    decoder.send_eof()?;
    while decoder.receive_frame(&mut decoded).is_ok() {
        handle(&decoded, &mut index, &mut last)?;
    }
    bar.finish_and_clear();
    if let Some(wr) = writer {
        wr.finish()?;
    }
    let secs = started.elapsed().as_secs_f64();
    if !json {
        println!("{input}: {index} frames in {secs:.1} s ({:.1} frames/s)", index as f64 / secs.max(1e-9));
        if let Some(p) = output {
            println!("  wrote {}", p.display());
        }
    }
    if let Some(seq) = &seq {
        seq.write_summary(&mut std::io::stdout().lock(), json)?;
    }
    Ok(())
}
