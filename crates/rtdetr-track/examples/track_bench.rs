//! Time per frame of `ByteTracker::update` at ~100 detections per frame.
//!
//! `cargo run --release -p rtdetr-track --example track_bench [frames] [objects] [reference]`
//! (`reference`: `ByteTrackConfig::reference()` instead of the default settings)
//!
//! A deterministic synthetic 1920x1080 sequence: `objects` boxes (default 100) moving at
//! constant velocity with jitter, 5% of them missed in any frame, a quarter of the scores
//! below the high threshold, a few false positives, objects leaving the image re-entering
//! as new objects; four classes. Prints the median, 90th percentile and maximum.

use std::time::Instant;

use rtdetr_track::{ByteTrackConfig, ByteTracker, Detection};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next()
    }
}

struct Obj {
    x: f32,
    y: f32,
    vx: f32,
    vy: f32,
    w: f32,
    h: f32,
    class_id: usize,
    score: f32,
}

fn spawn(rng: &mut Rng) -> Obj {
    Obj {
        x: rng.range(0.0, 1880.0),
        y: rng.range(0.0, 1020.0),
        vx: rng.range(-6.0, 6.0),
        vy: rng.range(-4.0, 4.0),
        w: rng.range(20.0, 80.0),
        h: rng.range(30.0, 120.0),
        class_id: (rng.next() * 4.0) as usize % 4,
        score: if rng.next() < 0.25 { rng.range(0.12, 0.25) } else { rng.range(0.3, 0.95) },
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let frames: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3000).max(1);
    let n_obj: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut objs: Vec<Obj> = (0..n_obj).map(|_| spawn(&mut rng)).collect();
    let config = if args.next().as_deref() == Some("reference") {
        ByteTrackConfig::reference()
    } else {
        ByteTrackConfig::default()
    };
    let mut tracker = match ByteTracker::new(config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };

    let mut times = Vec::with_capacity(frames);
    let mut dets_total = 0usize;
    let mut tracks_total = 0usize;
    let mut max_id = 0u64;
    for _ in 0..frames {
        let mut dets = Vec::with_capacity(n_obj + 8);
        for o in objs.iter_mut() {
            o.x += o.vx;
            o.y += o.vy;
            if o.x < -o.w || o.x > 1920.0 || o.y < -o.h || o.y > 1080.0 {
                *o = spawn(&mut rng);
            }
            if rng.next() < 0.05 {
                continue; // missed
            }
            let j = |rng: &mut Rng| rng.range(-1.5, 1.5);
            let x1 = (o.x + j(&mut rng)).max(0.0);
            let y1 = (o.y + j(&mut rng)).max(0.0);
            let x2 = (o.x + o.w + j(&mut rng)).min(1920.0);
            let y2 = (o.y + o.h + j(&mut rng)).min(1080.0);
            let score = (o.score + rng.range(-0.05, 0.05)).clamp(0.0, 1.0);
            dets.push(Detection { bbox: [x1, y1, x2, y2], score, class_id: o.class_id });
        }
        while rng.next() < 0.8 {
            let (x, y) = (rng.range(0.0, 1850.0), rng.range(0.0, 1000.0));
            dets.push(Detection { bbox: [x, y, x + 50.0, y + 60.0], score: rng.range(0.1, 0.5), class_id: 0 });
        }
        dets_total += dets.len();
        let t0 = Instant::now();
        let tracks = tracker.update(&dets);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        tracks_total += tracks.len();
        max_id = tracks.iter().map(|t| t.track_id).fold(max_id, u64::max);
    }

    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "frames {frames}  detections/frame {:.1}  tracks/frame {:.1}  ids {max_id}",
        dets_total as f64 / frames as f64,
        tracks_total as f64 / frames as f64
    );
    println!("update: median {:.3} ms  p90 {:.3} ms  max {:.3} ms", pct(0.5), pct(0.9), pct(1.0));
}
