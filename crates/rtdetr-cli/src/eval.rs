//! `rtdetr eval`: COCO bbox mAP of a checkpoint on a COCO-format dataset (or of an
//! existing detections file), identical to pycocotools. The detection loop is
//! `rtdetr_coco::detector`, shared with the Python package.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rtdetr_coco::{detector, CocoDataset, STAT_NAMES};

use crate::ModelArgs;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// COCO annotation file (instances_*.json).
    #[arg(long)]
    pub annotations: PathBuf,
    /// Directory holding the images named by the annotation file's `file_name`s.
    #[arg(long, required_unless_present = "detections")]
    pub images: Option<PathBuf>,
    /// Evaluate this COCO results file instead of running a model.
    #[arg(long, conflicts_with = "images")]
    pub detections: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Evaluate only the first N images (sorted by id).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the detections as a COCO results file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON line with the 12 numbers instead of the tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<i32> {
    let gt = CocoDataset::from_path(&args.annotations)
        .with_context(|| format!("cannot load {}", args.annotations.display()))?;
    let images = detector::eval_images(&gt, args.limit);
    let (dets, speed) = if let Some(path) = &args.detections {
        let dets = rtdetr_coco::load_results(path).with_context(|| format!("cannot load {}", path.display()))?;
        rtdetr_coco::validate_results(&gt, &dets)?;
        (dets, None)
    } else {
        let dir = args.images.as_ref().expect("clap requires --images without --detections");
        if args.batch_size == 0 {
            anyhow::bail!("--batch-size must be at least 1");
        }
        let det = args.model.load()?;
        // Checked before the progress bar appears.
        detector::map_categories(det.labels(), &gt)?;
        let bar = ProgressBar::new(images.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if args.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let start = Instant::now();
        let out = detector::detect_images(&det, &gt, &images, dir, args.batch_size, |done| {
            bar.set_position(done as u64);
            ControlFlow::Continue(())
        })?;
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        (out, Some(images.len() as f64 / secs.max(1e-9)))
    };
    if let Some(path) = &args.out {
        rtdetr_coco::write_results(path, &dets).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let summary = detector::evaluate_images(&gt, &dets, &images);
    if args.json {
        let mut m = serde_json::Map::new();
        for (name, v) in STAT_NAMES.iter().zip(summary.stats.iter()) {
            m.insert((*name).to_string(), serde_json::json!(v));
        }
        println!("{}", serde_json::Value::Object(m));
    } else {
        if let Some(s) = speed {
            println!("{} images, {:.2} images/s", images.len(), s);
        }
        print!("{}", summary.format_table());
        println!();
        print!("{}", summary.format_per_category());
    }
    Ok(0)
}
