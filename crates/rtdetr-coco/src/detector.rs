//! Running an [`rtdetr::Detector`] over a COCO dataset (feature `detector`): the part of
//! `rtdetr eval` that the Python package's `Detector.eval` shares with the CLI.
//!
//! ```no_run
//! use rtdetr_coco::{detector, CocoDataset};
//! let det = rtdetr::Detector::load("models/shapes-demo", &rtdetr::LoadOptions::default())?;
//! let gt = CocoDataset::from_path("tests/data/shapes-heldout/instances.json")?;
//! let run = detector::evaluate_detector(
//!     &det,
//!     &gt,
//!     "tests/data/shapes-heldout/images".as_ref(),
//!     &detector::EvalOptions::default(),
//!     |_done| std::ops::ControlFlow::Continue(()),
//! )?;
//! println!("AP = {:.3} on {} images", run.summary.ap(), run.images);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use rtdetr::{DetectOptions, Detector};

use crate::{evaluate, CocoDataset, Detection, Image, Params, Summary};

/// Why running a detector over a dataset failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A dataset category has no label of the same name in the model.
    #[error("the dataset's categories {missing:?} have no matching label in the model (its labels: {})", labels.join(", "))]
    UnmatchedCategories {
        /// The dataset's category names without a matching label.
        missing: Vec<String>,
        /// The model's labels.
        labels: Vec<String>,
    },
    /// An image entry of the annotation file has no `file_name`.
    #[error("image {0} has no file_name")]
    NoFileName(i64),
    /// An option is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Loading an image or running the model failed.
    #[error(transparent)]
    Detector(#[from] rtdetr::Error),
    /// The progress callback asked to stop.
    #[error("cancelled")]
    Cancelled,
}

/// How to run the detector over the dataset.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Images per forward pass (at least 1).
    pub batch_size: usize,
    /// Evaluate only the first N images (sorted by id).
    pub limit: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { batch_size: 1, limit: None }
    }
}

/// The outcome of [`evaluate_detector`].
#[derive(Debug, Clone)]
pub struct DetectorEval {
    /// The 12 numbers and per-category AP.
    pub summary: Summary,
    /// The detections, as a COCO results list.
    pub detections: Vec<Detection>,
    /// Images evaluated.
    pub images: usize,
    /// Seconds spent loading images and detecting.
    pub seconds: f64,
}

/// The images to evaluate: sorted by id, the first `limit` of them.
pub fn eval_images(gt: &CocoDataset, limit: Option<usize>) -> Vec<Image> {
    let mut images = gt.images.clone();
    images.sort_by_key(|i| i.id);
    if let Some(n) = limit {
        images.truncate(n);
    }
    images
}

/// Maps the model's class ids to the dataset's category ids by name (case, `_` and `-`
/// ignored); every dataset category must have a label.
pub fn map_categories(labels: &[String], gt: &CocoDataset) -> Result<HashMap<usize, i64>, EvalError> {
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
        return Err(EvalError::UnmatchedCategories { missing, labels: labels.to_vec() });
    }
    Ok(map)
}

/// Runs `det` on `images` (files under `dir`) as the reference evaluation does (threshold
/// 0, at most 100 detections per image) and returns them as COCO results. `progress` is
/// called after each batch with the number of images done; `Break` stops with
/// [`EvalError::Cancelled`].
pub fn detect_images(
    det: &Detector,
    gt: &CocoDataset,
    images: &[Image],
    dir: &Path,
    batch_size: usize,
    mut progress: impl FnMut(usize) -> ControlFlow<()>,
) -> Result<Vec<Detection>, EvalError> {
    if batch_size == 0 {
        return Err(EvalError::InvalidArgument("batch size must be at least 1".into()));
    }
    let cat_of = map_categories(det.labels(), gt)?;
    // The reference evaluation keeps everything: threshold 0, top 100 per image.
    let opts = DetectOptions { threshold: 0.0, max_detections: 100, classes: None };
    let mut out = Vec::new();
    let mut done = 0;
    for chunk in images.chunks(batch_size) {
        let mut batch = Vec::with_capacity(chunk.len());
        for im in chunk {
            let name = im.file_name.as_deref().ok_or(EvalError::NoFileName(im.id))?;
            batch.push(rtdetr::load_image(&dir.join(name))?);
        }
        let results = det.detect_batch(&batch, &opts)?;
        for (im, ds) in chunk.iter().zip(results) {
            for d in ds {
                if let Some(&category_id) = cat_of.get(&d.class_id) {
                    let b = d.bbox;
                    out.push(Detection {
                        image_id: im.id,
                        category_id,
                        bbox: [b.xmin as f64, b.ymin as f64, (b.xmax - b.xmin) as f64, (b.ymax - b.ymin) as f64],
                        score: d.score as f64,
                    });
                }
            }
        }
        done += chunk.len();
        if progress(done).is_break() {
            return Err(EvalError::Cancelled);
        }
    }
    Ok(out)
}

/// Evaluates detections of `images` (the evaluated image set is exactly these ids).
pub fn evaluate_images(gt: &CocoDataset, dets: &[Detection], images: &[Image]) -> Summary {
    let params = Params::default().with_img_ids(images.iter().map(|i| i.id).collect::<Vec<_>>());
    evaluate(gt, dets, &params)
}

/// [`eval_images`], [`detect_images`] and [`evaluate_images`] in one call: what
/// `rtdetr eval --model M --images DIR --annotations FILE` computes.
pub fn evaluate_detector(
    det: &Detector,
    gt: &CocoDataset,
    images_dir: &Path,
    opts: &EvalOptions,
    progress: impl FnMut(usize) -> ControlFlow<()>,
) -> Result<DetectorEval, EvalError> {
    let images = eval_images(gt, opts.limit);
    let start = Instant::now();
    let detections = detect_images(det, gt, &images, images_dir, opts.batch_size, progress)?;
    let seconds = start.elapsed().as_secs_f64();
    let summary = evaluate_images(gt, &detections, &images);
    Ok(DetectorEval { summary, detections, images: images.len(), seconds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Category;

    fn dataset(names: &[&str]) -> CocoDataset {
        CocoDataset {
            categories: names
                .iter()
                .enumerate()
                .map(|(i, n)| Category { id: 10 + i as i64, name: (*n).to_string(), ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn categories_map_by_normalised_name() {
        let labels: Vec<String> = ["person", "traffic_light", "Stop-Sign"].iter().map(|s| s.to_string()).collect();
        let map = map_categories(&labels, &dataset(&["stop sign", "Person"])).unwrap();
        assert_eq!(map, HashMap::from([(2, 10), (0, 11)]));
        let err = map_categories(&labels, &dataset(&["person", "zebra"])).unwrap_err();
        assert!(matches!(&err, EvalError::UnmatchedCategories { missing, .. } if missing == &["zebra"]));
        assert!(err.to_string().contains("[\"zebra\"] have no matching label"), "{err}");
    }

    #[test]
    fn images_sorted_and_limited() {
        let gt = CocoDataset {
            images: [3, 1, 2].iter().map(|&id| Image { id, ..Default::default() }).collect(),
            ..Default::default()
        };
        let ids: Vec<i64> = eval_images(&gt, Some(2)).iter().map(|i| i.id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(eval_images(&gt, None).len(), 3);
    }
}
