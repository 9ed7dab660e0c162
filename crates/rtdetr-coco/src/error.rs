//! Error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading, validating or writing COCO data.
///
/// Evaluation itself ([`crate::evaluate`]) is infallible: malformed input is
/// rejected when it is parsed.
#[derive(Debug, thiserror::Error)]
pub enum CocoError {
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was attempted (`"read"`, `"create"`, `"write"`).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not valid JSON, or does not have the COCO layout
    /// (missing field, wrong type, bbox without exactly 4 numbers, ...).
    /// The message carries serde_json's line and column.
    #[error("invalid COCO {what}: {source}")]
    Json {
        /// `"annotation file"` or `"results file"`.
        what: &'static str,
        /// The underlying parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A detection refers to an image id that the ground truth does not list
    /// (pycocotools' `loadRes` rejects such results with
    /// "Results do not correspond to current coco set").
    #[error("detection #{index} has image_id {image_id}, which is not an image of the ground truth")]
    UnknownImage {
        /// Position of the detection in the results list.
        index: usize,
        /// Its image id.
        image_id: i64,
    },
    /// A detection has a NaN or infinite coordinate or score, which JSON cannot represent.
    #[error("detection #{index} has a non-finite {field}")]
    NonFinite {
        /// Position of the detection in the list.
        index: usize,
        /// `"bbox"` or `"score"`.
        field: &'static str,
    },
    /// Serializing results failed (for example, the writer returned an error).
    #[error("cannot write COCO results: {0}")]
    Write(#[source] serde_json::Error),
}

/// Shorthand for `Result<T, CocoError>`.
pub type Result<T> = std::result::Result<T, CocoError>;
