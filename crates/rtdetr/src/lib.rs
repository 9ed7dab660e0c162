//! RT-DETR real-time object detection in native Rust.
//!
//! Loads the Hugging Face checkpoints of the `PekingU/rtdetr_*` family unchanged
//! (config.json, model.safetensors, preprocessor_config.json) and reproduces the
//! reference implementation (transformers' `RTDetrForObjectDetection` and its image
//! processor). Start with [`Detector`].

pub mod backbone;
pub mod bf16;
pub mod config;
pub mod conv;
pub mod cpu;
pub mod decoder;
pub mod deform_attn;
pub mod detector;
pub mod draw;
pub mod encoder;
pub mod error;
pub mod flops;
pub mod hub;
pub mod kernels;
pub mod model;
pub mod nn;
pub mod postprocess;
pub mod preprocess;
pub mod resize;
pub mod sgemm;
#[cfg(test)]
mod test_rng;
pub mod weights;
pub mod winograd;

pub use bf16::{set_precision, Precision};
pub use detector::Detector;
pub use error::{Error, Result};
pub use postprocess::{BoundingBox, DetectOptions, Detection};
pub use preprocess::{decode_image, load_image};
