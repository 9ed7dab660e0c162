//! The engine's error type: every failure carries a message fit for a user, and the
//! underlying error as its `source` where there is one.

use std::path::PathBuf;

/// Errors from loading a model, decoding an image or running inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The model directory or Hub id does not exist or is not a checkpoint.
    #[error("{0}")]
    NotFound(String),
    /// A JSON file of the checkpoint is not valid JSON or misses a field.
    #[error("config error: {}: invalid {what}: {source}", path.display())]
    Json {
        path: PathBuf,
        /// The file's role, e.g. `"config.json"`.
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The configuration is valid JSON but describes something this engine cannot run.
    #[error("config error: {0}")]
    Config(String),
    #[error("weights error: {0}")]
    Weights(String),
    #[error("image error: {0}")]
    Image(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("model download failed: {0}")]
    Hub(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// An invariant of the engine itself failed: a bug, never the user's input.
    #[error("internal error (a bug in rtdetr, please report it): {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
