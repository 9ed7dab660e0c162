//! RT-DETR real-time object detection in native Rust.
//!
//! Loads the Hugging Face checkpoints of the `PekingU/rtdetr_*` family (RT-DETR,
//! RT-DETRv2) and D-FINE's (`model_type: "d_fine"`) unchanged (config.json,
//! model.safetensors, preprocessor_config.json) and reproduces the reference
//! implementation (transformers' `RTDetrForObjectDetection`, `RTDetrV2ForObjectDetection`,
//! `DFineForObjectDetection` and their image processor). Start with [`Detector`].
//!
//! Layout (`docs/architecture.md`): [`io`] reads checkpoints and images and turns raw
//! outputs into detections; `model` holds the network, one file per stage, behind the
//! [`Model`] enum of architectures; `kernels` (crate-private) holds the CPU kernels.

// Every unsafe operation sits in its own `unsafe` block with a `// SAFETY:` comment, also
// inside `unsafe fn`s; the raw-pointer kernels assert their promised bounds in debug builds.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod detector;
mod error;
pub mod io;
mod kernels;
mod model;
#[cfg(test)]
mod test_rng;

pub use detector::{Detector, LoadOptions};
pub use error::{Error, Result};
pub use io::decode::{decode_image, image_dimensions, load_image};
pub use io::hub::DEFAULT_MODEL;
pub use io::postprocess::{BoundingBox, DetectOptions, Detection};
pub use io::preprocess::PreparedImage;
pub use kernels::{Precision, WinogradChoice};
pub use model::{LayerOutput, Model, ModelOutput, StageTimes, Trace};

/// Per-operation timing and the model's nominal FLOP count (`rtdetr bench --profile`).
pub mod profile {
    pub use crate::kernels::flops::{set_profiling, take_profile, total, OpStat};
}

/// D-FINE's backbone and encoder on their own, for their stage tests
/// (`tests/dfine_parity.rs`) only: not a stable API.
#[doc(hidden)]
pub mod dfine_internals {
    pub use crate::io::weights::Weights;
    pub use crate::model::dfine_encoder::DFineEncoder;
    pub use crate::model::hgnet_v2::HgNetV2;
}

/// The kernels, for the kernel benchmark (`examples/kernel_bench.rs`) only: not a stable
/// API.
#[doc(hidden)]
pub mod bench_internals {
    pub use crate::kernels::{bf16, dispatch, ops, sgemm};
}
