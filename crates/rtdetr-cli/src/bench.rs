//! `rtdetr bench`: latency per stage (preprocessed tensor in, detections out).

use std::time::Instant;

use rtdetr::DetectOptions;
use rtdetr::StageTimes;
use serde::Serialize;

use crate::ModelArgs;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Also time every operation (convolution, linear layer, attention) of the timed runs
    /// and print the most expensive ones, with their kernel path and GFLOP/s.
    #[arg(long)]
    pub profile: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    size: [usize; 2],
    batch: usize,
    runs: usize,
    median_ms: f64,
    min_ms: f64,
    images_per_s: f64,
    gflop: f64,
    gflop_per_s: f64,
    stages: serde_json::Map<String, serde_json::Value>,
    threads: usize,
    /// The precision in effect ("f32" or "bf16").
    precision: String,
    /// Model load (read config, map weights, fold BatchNorm).
    load_ms: f64,
    /// The first (warm-up) run, when there is one.
    first_run_ms: Option<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    if args.batch == 0 || args.runs == 0 {
        anyhow::bail!("--batch and --runs must be at least 1");
    }
    let t_load = Instant::now();
    let det = args.model.load()?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let (h, w) = det.preprocessor().size.unwrap_or((640, 640));
    // A deterministic textured image; content does not change the cost.
    let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x + y) * 3 % 256) as u8])
    });
    let images = vec![img; args.batch];
    let pixels = det.pixel_batch(&images)?;
    let sizes = vec![(w as u32, h as u32); args.batch];
    let opts = DetectOptions::default();
    let per_image = vec![&opts; args.batch];
    let run_once = |times: &mut StageTimes| -> anyhow::Result<(f64, f64)> {
        let t0 = Instant::now();
        let out = det.forward(&pixels, times)?;
        let t1 = Instant::now();
        det.post_process(&out, &sizes, &per_image)?;
        let t2 = Instant::now();
        Ok(((t2 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3))
    };
    // The first run also builds the per-layer kernel forms (Winograd, bf16 packing): it is
    // the start-up cost a server pays before it reports ready.
    let mut first_run_ms = None;
    for _ in 0..args.warmup {
        let (total, _) = run_once(&mut StageTimes::default())?;
        first_run_ms.get_or_insert(total);
    }
    rtdetr::profile::set_profiling(args.profile);
    let flops_before = rtdetr::profile::total();
    let mut totals = Vec::new();
    let mut stage_runs: Vec<(StageTimes, f64)> = Vec::new();
    for _ in 0..args.runs {
        let mut t = StageTimes::default();
        let (total, post) = run_once(&mut t)?;
        totals.push(total);
        stage_runs.push((t, post));
    }
    let gflop = (rtdetr::profile::total() - flops_before) as f64 / args.runs as f64 / 1e9;
    rtdetr::profile::set_profiling(false);
    let profile = rtdetr::profile::take_profile();
    let min_ms = totals.iter().copied().fold(f64::INFINITY, f64::min);
    let median_ms = median(&mut totals.clone());
    let mut stages = serde_json::Map::new();
    type Stage = fn(&(StageTimes, f64)) -> f64;
    let pick: [(&str, Stage); 5] = [
        ("backbone", |s| s.0.backbone * 1e3),
        ("encoder", |s| s.0.encoder * 1e3),
        ("query_selection", |s| s.0.query_selection * 1e3),
        ("decoder", |s| s.0.decoder * 1e3),
        ("postprocess", |s| s.1),
    ];
    for (name, f) in pick {
        let mut v: Vec<f64> = stage_runs.iter().map(f).collect();
        stages.insert(name.into(), serde_json::json!((median(&mut v) * 1000.0).round() / 1000.0));
    }
    let report = Report {
        model: args.model.model.clone(),
        size: [h, w],
        batch: args.batch,
        runs: args.runs,
        median_ms,
        min_ms,
        images_per_s: args.batch as f64 / (median_ms / 1e3),
        gflop,
        gflop_per_s: gflop / (median_ms / 1e3),
        stages,
        threads: rayon::current_num_threads(),
        precision: format!("{:?}", det.precision()).to_lowercase(),
        load_ms,
        first_run_ms,
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if args.profile {
            value["profile"] = profile
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "op": p.name,
                        "ms_per_run": p.time.as_secs_f64() * 1e3 / args.runs as f64,
                        "calls_per_run": p.calls as f64 / args.runs as f64,
                        "gflop_per_s": p.flops as f64 / p.time.as_secs_f64().max(1e-12) / 1e9,
                    })
                })
                .collect();
        }
        println!("{value}");
    } else {
        println!(
            "model {}  input {}x{}  batch {}  runs {}  threads {}  precision {}",
            report.model, h, w, report.batch, report.runs, report.threads, report.precision
        );
        println!(
            "  total      median {:>9.2} ms   min {:>9.2} ms   {:.2} images/s",
            median_ms, min_ms, report.images_per_s
        );
        for (k, v) in &report.stages {
            println!("  {:<16} {:>9.2} ms (median)", k, v.as_f64().unwrap_or(0.0));
        }
        println!("  {:.2} GFLOP per forward, {:.1} GFLOP/s", gflop, report.gflop_per_s);
        match first_run_ms {
            Some(f) => println!("  start-up: load {load_ms:.0} ms + first run {f:.0} ms"),
            None => println!("  start-up: load {load_ms:.0} ms"),
        }
        if !profile.is_empty() {
            let total: f64 = profile.iter().map(|p| p.time.as_secs_f64()).sum::<f64>() * 1e3 / args.runs as f64;
            println!("  profile (per run, most time first; all listed ops: {total:.1} ms):");
            println!("  {:>9} {:>6} {:>8} {:>6}  operation", "ms", "share", "GFLOP/s", "calls");
            for p in &profile {
                let ms = p.time.as_secs_f64() * 1e3 / args.runs as f64;
                let gfs = p.flops as f64 / p.time.as_secs_f64().max(1e-12) / 1e9;
                let calls = p.calls as f64 / args.runs as f64;
                println!("  {ms:>9.2} {:>5.1}% {gfs:>8.1} {calls:>6.0}  {}", 100.0 * ms / total, p.name);
            }
        }
    }
    Ok(0)
}
