//! The engine's error type: every failure carries a message fit for a user.

/// Errors from loading a model, decoding an image or running inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(String),
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
}

pub type Result<T> = std::result::Result<T, Error>;
