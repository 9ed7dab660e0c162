//! The one way an image becomes detections, for HTTP requests and stream frames alike:
//! fetch (URLs), decode and preprocess on the blocking pool (at most one decode per CPU),
//! submit to the [`InferenceQueue`](crate::queue::InferenceQueue) with the request's
//! deadline, await the batch, map queue failures to API errors (429, 503, 504, 500) and
//! count decode time and detections. Readiness and admission are the [`AppState`]'s
//! ([`AppState::ready`], [`AppState::admit`]); callers pass them before calling [`detect`].

use std::future::Future;
use std::sync::Arc;

use image::RgbImage;
use rtdetr::{DetectOptions, Detection};
use tokio::time::Instant;

use crate::error::{ApiError, ApiResult};
use crate::input::{decode_and_prepare, decode_base64, ImageSource};
use crate::metrics as m;
use crate::queue::{InferenceRequest, InferenceResult, ModelInfo, QueueError};
use crate::state::AppState;
use crate::types::{millis, Timings};

/// One image's detections.
pub struct Detected {
    /// Size of the decoded image (boxes are in its pixels).
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
    /// The decoded image, when [`detect`] was asked to keep it.
    pub image: Option<RgbImage>,
    /// Fetch, decode, queue and inference times and the batch size (`total` left at 0).
    pub timings: Timings,
}

/// Fetches (URL) or decodes (base64) the image's bytes, decodes and preprocesses it off the
/// async threads, runs it through the inference queue and returns its detections.
pub async fn detect(
    state: &AppState,
    info: &Arc<ModelInfo>,
    source: ImageSource,
    options: DetectOptions,
    deadline: Instant,
    keep_image: bool,
) -> ApiResult<Detected> {
    let mut timings = Timings::default();
    let (bytes, b64) = match source {
        ImageSource::Bytes(b) => (b, None),
        ImageSource::Base64(s) => (Default::default(), Some(s)),
        ImageSource::Url(u) => {
            let t = std::time::Instant::now();
            let bytes = crate::fetch::fetch_image(&u, &state.config.fetch).await?;
            timings.fetch = millis(t.elapsed());
            (bytes.into(), None)
        }
    };
    let (max_pixels, max_bytes, info) = (state.config.max_image_pixels, state.config.max_body_bytes, info.clone());
    // At most one full-size decode per CPU at a time (more would not be faster, only bigger).
    let slot = state
        .decode_slots
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("shutting_down", "the server is shutting down"))?;
    let prepared = tokio::task::spawn_blocking(move || {
        let bytes = match b64 {
            Some(s) => decode_base64(&s, max_bytes)?.into(),
            None => bytes,
        };
        decode_and_prepare(&bytes, max_pixels, &info.preprocessor, keep_image)
    })
    .await
    .map_err(|_| ApiError::internal("the image decoding task failed"))??;
    drop(slot);
    timings.decode = millis(prepared.decode_time);
    metrics::histogram!(m::DECODE_DURATION).record(prepared.decode_time.as_secs_f64());
    let (width, height) = prepared.input.image_size;
    let request = InferenceRequest { image: prepared.input, options, deadline: deadline.into_std() };
    let result = infer(state, request).await?;
    timings.queue = millis(result.queue_time);
    timings.inference = millis(result.inference_time);
    timings.batch_size = result.batch_size;
    Ok(Detected { width, height, detections: result.detections, image: prepared.image, timings })
}

/// Runs `work` until `deadline`: past it, 504 `timeout`.
pub async fn within<T>(deadline: Instant, work: impl Future<Output = ApiResult<T>>) -> ApiResult<T> {
    tokio::time::timeout_at(deadline, work).await.unwrap_or_else(|_| Err(deadline_error()))
}

/// Queues one prepared image and waits for its detections.
async fn infer(state: &AppState, request: InferenceRequest) -> ApiResult<InferenceResult> {
    let rx = state.queue.submit(request).map_err(queue_error)?;
    let result = rx
        .await
        .map_err(|_| ApiError::unavailable("shutting_down", "the inference queue stopped"))?
        .map_err(queue_error)?;
    metrics::counter!(m::DETECTIONS).increment(result.detections.len() as u64);
    Ok(result)
}

fn queue_error(e: QueueError) -> ApiError {
    match e {
        QueueError::Full => {
            metrics::counter!(m::REJECTED, "reason" => "queue_full").increment(1);
            ApiError::queue_full()
        }
        QueueError::Closed => ApiError::unavailable("shutting_down", "the server is shutting down"),
        QueueError::DeadlineExceeded => deadline_error(),
        QueueError::Failed(msg) => ApiError::internal(format!("inference failed: {msg}")),
    }
}

fn deadline_error() -> ApiError {
    metrics::counter!(m::REJECTED, "reason" => "deadline").increment(1);
    ApiError::deadline_exceeded("the request (or stream frame) did not complete within the server's time limit")
}
