//! Input and output: checkpoint configuration and weights, the Hub, image decoding and
//! preprocessing, post-processing into detections, drawing.

pub mod config;
pub mod decode;
pub mod draw;
pub(crate) mod hub;
mod jpeg;
pub mod postprocess;
pub mod preprocess;
pub(crate) mod resize;
pub(crate) mod weights;
