//! COCO data types, loading and writing.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{CocoError, Result};

/// A COCO ground-truth annotation file (`instances_val2017.json` layout).
///
/// Only the fields that bbox evaluation needs are kept; unknown fields
/// (`info`, `licenses`, `segmentation`, ...) are accepted and ignored.
/// `images` and `categories` are required; `annotations` may be absent (no GT).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CocoDataset {
    /// The images. Their ids define the default set of evaluated images.
    pub images: Vec<Image>,
    /// The ground-truth objects.
    #[serde(default)]
    pub annotations: Vec<Annotation>,
    /// The categories. Their ids define the default set of evaluated categories.
    pub categories: Vec<Category>,
}

/// One entry of `images`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Image id, referenced by annotations and detections.
    pub id: i64,
    /// File name, if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// Width in pixels, if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<f64>,
    /// Height in pixels, if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<f64>,
}

/// One ground-truth object of `annotations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// Annotation id. As in pycocotools, when two annotations share an id both
    /// entries resolve to the *last* one, and a detection matched to a GT with
    /// id 0 counts as unmatched.
    pub id: i64,
    /// The image this object is on.
    pub image_id: i64,
    /// Its category.
    pub category_id: i64,
    /// Box `[x, y, width, height]` in pixels. The IoU uses this box.
    pub bbox: [f64; 4],
    /// Object area (for COCO: the segmentation area), which decides the
    /// small/medium/large range. When absent, `bbox` width × height is used
    /// (pycocotools would fail with a `KeyError`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<f64>,
    /// Crowd flag (0/1 or a JSON bool; absent = 0). Crowd objects are ignored,
    /// may be matched by any number of detections, and their IoU is
    /// intersection / detection area.
    #[serde(default, deserialize_with = "de_flag")]
    pub iscrowd: i64,
    /// Optional `ignore` flag. Kept for round-tripping only: pycocotools
    /// overwrites it with `iscrowd` before evaluating, and so does this crate.
    #[serde(default, deserialize_with = "de_opt_flag", skip_serializing_if = "Option::is_none")]
    pub ignore: Option<i64>,
}

impl Annotation {
    /// The area used for the area ranges: `area` if given, else bbox w × h.
    pub fn effective_area(&self) -> f64 {
        self.area.unwrap_or(self.bbox[2] * self.bbox[3])
    }
}

/// One entry of `categories`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Category {
    /// Category id.
    pub id: i64,
    /// Human-readable name (empty when absent).
    #[serde(default)]
    pub name: String,
    /// Super-category, if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
}

/// One detection of a COCO results file: `{image_id, category_id, bbox, score}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Image the detection belongs to (must be an image of the ground truth).
    pub image_id: i64,
    /// Predicted category id.
    pub category_id: i64,
    /// Box `[x, y, width, height]` in pixels.
    pub bbox: [f64; 4],
    /// Confidence; higher ranks first.
    pub score: f64,
}

impl Detection {
    /// Area used for the detection's area range: width × height, as
    /// pycocotools' `loadRes` computes it.
    pub fn area(&self) -> f64 {
        self.bbox[2] * self.bbox[3]
    }
}

impl CocoDataset {
    /// Reads and parses a COCO annotation file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes =
            fs::read(path).map_err(|source| CocoError::Io { action: "read", path: path.to_path_buf(), source })?;
        Self::from_slice(&bytes)
    }

    /// Parses a COCO annotation file from JSON bytes.
    pub fn from_slice(json: &[u8]) -> Result<Self> {
        serde_json::from_slice(json).map_err(|source| CocoError::Json { what: "annotation file", source })
    }

    /// Parses a COCO annotation file from a JSON string.
    pub fn from_json_str(json: &str) -> Result<Self> {
        Self::from_slice(json.as_bytes())
    }

    /// Name of the category with this id (the first listed), if any.
    pub fn category_name(&self, id: i64) -> Option<&str> {
        self.categories.iter().find(|c| c.id == id).map(|c| c.name.as_str())
    }
}

/// Reads and parses a COCO results file (a JSON array of [`Detection`]s).
pub fn load_results(path: impl AsRef<Path>) -> Result<Vec<Detection>> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| CocoError::Io { action: "read", path: path.to_path_buf(), source })?;
    parse_results(&bytes)
}

/// Parses a COCO results file from JSON bytes. The top level must be an array
/// (it may be empty); every element needs `image_id`, `category_id`, a 4-number
/// `bbox` and `score`. Other fields are ignored.
pub fn parse_results(json: &[u8]) -> Result<Vec<Detection>> {
    serde_json::from_slice(json).map_err(|source| CocoError::Json { what: "results file", source })
}

/// Checks the detections the way pycocotools' `loadRes` does: every
/// `image_id` must be an image of the ground truth. [`crate::evaluate`] does
/// not need this (detections on unknown images are never evaluated), but a
/// results file that fails it would be rejected by pycocotools.
pub fn validate_results(gt: &CocoDataset, dets: &[Detection]) -> Result<()> {
    let ids: std::collections::HashSet<i64> = gt.images.iter().map(|i| i.id).collect();
    match dets.iter().enumerate().find(|(_, d)| !ids.contains(&d.image_id)) {
        Some((index, d)) => Err(CocoError::UnknownImage { index, image_id: d.image_id }),
        None => Ok(()),
    }
}

fn check_finite(dets: &[Detection]) -> Result<()> {
    for (index, d) in dets.iter().enumerate() {
        if !d.bbox.iter().all(|v| v.is_finite()) {
            return Err(CocoError::NonFinite { index, field: "bbox" });
        }
        if !d.score.is_finite() {
            return Err(CocoError::NonFinite { index, field: "score" });
        }
    }
    Ok(())
}

/// Writes detections as a COCO results JSON array to `writer`.
/// Fails with [`CocoError::NonFinite`] (before writing anything) if a box or
/// score is NaN or infinite.
pub fn write_results_to<W: Write>(writer: W, dets: &[Detection]) -> Result<()> {
    check_finite(dets)?;
    let mut w = BufWriter::new(writer);
    serde_json::to_writer(&mut w, dets).map_err(CocoError::Write)?;
    w.flush().map_err(|e| CocoError::Write(serde_json::Error::io(e)))
}

/// Writes detections as a COCO results JSON file at `path`
/// (loadable by pycocotools' `loadRes` and by [`load_results`]).
pub fn write_results(path: impl AsRef<Path>, dets: &[Detection]) -> Result<()> {
    let path = path.as_ref();
    let file = fs::File::create(path).map_err(|source| CocoError::Io {
        action: "create",
        path: path.to_path_buf(),
        source,
    })?;
    write_results_to(file, dets)
}

/// Serializes detections as a COCO results JSON string.
pub fn results_to_json_string(dets: &[Detection]) -> Result<String> {
    check_finite(dets)?;
    serde_json::to_string(dets).map_err(CocoError::Write)
}

/// A 0/1 flag as pycocotools reads it with `int(x)`: integers, bools and
/// integral floats are accepted.
fn de_flag<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    d.deserialize_any(FlagVisitor)
}

fn de_opt_flag<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<i64>, D::Error> {
    d.deserialize_option(OptFlagVisitor)
}

struct FlagVisitor;

impl<'de> serde::de::Visitor<'de> for FlagVisitor {
    type Value = i64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer or a bool")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<i64, E> {
        Ok(v as i64)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom("flag out of range"))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<i64, E> {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("expected an integer flag, got {v}")))
        }
    }
}

struct OptFlagVisitor;

impl<'de> serde::de::Visitor<'de> for OptFlagVisitor {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer, a bool or null")
    }
    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        de_flag(d).map(Some)
    }
}
