//! COCO bounding-box evaluation, numerically identical to pycocotools'
//! `COCOeval(cocoGt, cocoDt, iouType="bbox")`.
//!
//! ```no_run
//! use rtdetr_coco::{evaluate, load_results, CocoDataset, Params};
//!
//! let gt = CocoDataset::from_path("instances_val2017.json")?;
//! let dets = load_results("detections.json")?;
//! let summary = evaluate(&gt, &dets, &Params::default());
//! print!("{}", summary.format_table());
//! println!("AP = {:.3}", summary.ap());
//! # Ok::<(), rtdetr_coco::CocoError>(())
//! ```
//!
//! Parity with pycocotools covers: stable score sorting
//! (`argsort(-score, kind="mergesort")`), the top-`maxDets[-1]` cut per image
//! and category, crowd IoU (intersection / detection area), ignored GT sorted
//! last, greedy matching with the same tie and break rules, the area-range
//! ignore rule for GT (`area` field) and detections (w × h), 101-point
//! interpolated precision with `searchsorted(..., side="left")`, and numpy's
//! summation order in the final means. The committed parity tests compare all
//! 12 stats and per-category AP with pycocotools on adversarial fixtures.
//!
//! With the `detector` feature, [`detector`] runs an `rtdetr::Detector` over a dataset
//! (what `rtdetr eval` and the Python package's `Detector.eval` share).

#![warn(missing_docs)]

#[cfg(feature = "detector")]
pub mod detector;
mod error;
mod eval;
mod params;
mod types;

pub use error::{CocoError, Result};
pub use eval::{accumulate, evaluate, CategoryAp, Evaluation, Summary, STAT_NAMES};
pub use params::{numpy_linspace, Params};
pub use types::{
    load_results, parse_results, results_to_json_string, validate_results, write_results, write_results_to, Annotation,
    Category, CocoDataset, Detection, Image,
};
