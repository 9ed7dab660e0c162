//! `rtdetr eval`: COCO bbox mAP of a checkpoint on a COCO-format dataset (or of an
//! existing detections file), identical to pycocotools.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rtdetr::DetectOptions;
use rtdetr_coco::{CocoDataset, Params, STAT_NAMES};

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

/// Maps the model's class ids to the dataset's category ids by name.
pub fn map_categories(labels: &[String], gt: &CocoDataset) -> anyhow::Result<HashMap<usize, i64>> {
    let norm = |s: &str| s.trim().to_lowercase().replace(['_', '-'], " ");
    let by_name: HashMap<String, usize> = labels.iter().enumerate().map(|(i, l)| (norm(l), i)).collect();
    let mut map = HashMap::new();
    let mut missing = Vec::new();
    for c in &gt.categories {
        match by_name.get(&norm(&c.name)) {
            Some(&i) => {
                map.insert(i, c.id);
            }
            None => missing.push(c.name.clone()),
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "the dataset's categories {:?} have no matching label in the model (its labels: {})",
            missing,
            labels.join(", ")
        );
    }
    Ok(map)
}

pub fn run(args: EvalArgs) -> anyhow::Result<i32> {
    let gt = CocoDataset::from_path(&args.annotations)
        .with_context(|| format!("cannot load {}", args.annotations.display()))?;
    let mut images = gt.images.clone();
    images.sort_by_key(|i| i.id);
    if let Some(n) = args.limit {
        images.truncate(n);
    }
    let img_ids: Vec<i64> = images.iter().map(|i| i.id).collect();
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
        let cat_of = map_categories(det.labels(), &gt)?;
        // The reference evaluation keeps everything: threshold 0, top 100 per image.
        let opts = DetectOptions { threshold: 0.0, max_detections: 100, classes: None };
        let bar = ProgressBar::new(images.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if args.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let start = Instant::now();
        let mut out = Vec::new();
        for chunk in images.chunks(args.batch_size) {
            let mut batch = Vec::with_capacity(chunk.len());
            for im in chunk {
                let name =
                    im.file_name.as_deref().ok_or_else(|| anyhow::anyhow!("image {} has no file_name", im.id))?;
                batch.push(rtdetr::load_image(&dir.join(name))?);
            }
            let results = det.detect_batch(&batch, &opts)?;
            for (im, ds) in chunk.iter().zip(results) {
                for d in ds {
                    if let Some(&category_id) = cat_of.get(&d.class_id) {
                        let b = d.bbox;
                        out.push(rtdetr_coco::Detection {
                            image_id: im.id,
                            category_id,
                            bbox: [b.xmin as f64, b.ymin as f64, (b.xmax - b.xmin) as f64, (b.ymax - b.ymin) as f64],
                            score: d.score as f64,
                        });
                    }
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        (out, Some(images.len() as f64 / secs.max(1e-9)))
    };
    if let Some(path) = &args.out {
        rtdetr_coco::write_results(path, &dets).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let params = Params::default().with_img_ids(img_ids);
    let summary = rtdetr_coco::evaluate(&gt, &dets, &params);
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
