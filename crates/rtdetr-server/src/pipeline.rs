//! The one way an image becomes detections, for HTTP requests and stream frames alike:
//! fetch (URLs), decode and preprocess on the blocking pool (at most one decode per CPU),
//! submit to the [`InferenceQueue`](crate::queue::InferenceQueue) with the request's
//! deadline, await the batch, map queue failures to API errors (429, 503, 504, 500) and
//! count decode time and detections. Readiness and admission are the [`AppState`]'s
//! ([`AppState::ready`], [`AppState::admit`]); callers pass them before calling [`detect`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use image::RgbImage;
use rtdetr::io::decode::DecodeLimits;
use rtdetr::{DetectOptions, Detection};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::error::{ApiError, ApiResult};
use crate::input::{decode_and_prepare, decode_base64, read_header, ImageSource};
use crate::metrics as m;
use crate::queue::{InferenceRequest, InferenceResult, ModelInfo, QueueError};
use crate::state::{AppState, MemoryBudget, ServedModel};
use crate::types::{millis, Timings};

/// One image's detections.
pub struct Detected {
    /// Size of the decoded image (boxes are in its pixels).
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
    /// The decoded image, when [`detect`] was asked to keep it.
    pub image: Option<KeptImage>,
    /// Fetch, decode, queue and inference times and the batch size (`total` left at 0).
    pub timings: Timings,
}

/// A decoded image kept for drawing, with its share of the decode memory budget.
pub struct KeptImage {
    pub image: RgbImage,
    pub charge: Option<OwnedSemaphorePermit>,
}

/// Sets the flag when dropped: a request dropped mid-decode (its client went away, its
/// deadline passed) tells the decoder to stop.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Fetches (URL) or decodes (base64) the image's bytes, decodes and preprocesses it off the
/// async threads, runs it through the inference queue and returns its detections.
///
/// The decode waits for a CPU slot and for its share of the decode memory budget (413 when
/// the image needs more than the whole budget). Both stay held by the decoding thread until
/// the decode really ends, even when the request is dropped meanwhile: a dropped request
/// sets the cancel flag, which the decoder checks between JPEG scans and between reads.
pub async fn detect(
    state: &AppState,
    model: &ServedModel,
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
    let limits = state.decode_limits();
    let max_bytes = state.config.max_body_bytes;
    // Base64 and the header: cheap, and they tell what the decode will cost.
    let (bytes, header) = {
        let limits = limits.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = match b64 {
                Some(s) => decode_base64(&s, max_bytes)?.into(),
                None => bytes,
            };
            let header = read_header(&bytes, &limits)?;
            Ok::<_, ApiError>((bytes, header))
        })
        .await
        .map_err(|_| ApiError::internal("the image decoding task failed"))??
    };
    let need = header.decode_bytes() + info.preprocessor.scratch_bytes(header.width, header.height);
    if !state.decode_memory.fits(need) {
        return Err(ApiError::too_large(
            "image_too_large",
            format!(
                "decoding this {}x{} image needs {} MiB, above this server's decode memory of {} MiB",
                header.width,
                header.height,
                need.div_ceil(1 << 20),
                state.config.max_decode_memory >> 20
            ),
        ));
    }
    let mut charge = state
        .decode_memory
        .charge(need)
        .await
        .ok_or_else(|| ApiError::internal("the decode memory budget is closed"))?;
    // At most one full-size decode per CPU at a time (more would not be faster, only bigger).
    let slot = state
        .decode_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("shutting_down", "the server is shutting down"))?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let limits = DecodeLimits { cancel: Some(cancel), ..limits };
    let info = info.clone();
    let cancelled = state.decodes_cancelled.clone();
    let (prepared, kept_charge) = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let prepared = decode_and_prepare(&bytes, &limits, &info.preprocessor, keep_image).inspect_err(|_| {
            if limits.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                cancelled.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::REJECTED, "reason" => "decode_cancelled").increment(1);
            }
        })?;
        // The kept image keeps its share; the rest returns when this closure ends.
        let kept = prepared.image.as_ref().and_then(|img| MemoryBudget::split(&mut charge, img.as_raw().len() as u64));
        Ok::<_, ApiError>((prepared, kept))
    })
    .await
    .map_err(|_| ApiError::internal("the image decoding task failed"))??;
    timings.decode = millis(prepared.decode_time);
    metrics::histogram!(m::DECODE_DURATION).record(prepared.decode_time.as_secs_f64());
    let (width, height) = prepared.input.image_size;
    let request = InferenceRequest { image: prepared.input, options, deadline: deadline.into_std() };
    let image = prepared.image.map(|image| KeptImage { image, charge: kept_charge });
    let result = infer(model, request).await?;
    timings.queue = millis(result.queue_time);
    timings.inference = millis(result.inference_time);
    timings.batch_size = result.batch_size;
    Ok(Detected { width, height, detections: result.detections, image, timings })
}

/// Runs `work` until `deadline`: past it, 504 `timeout`.
pub async fn within<T>(deadline: Instant, work: impl Future<Output = ApiResult<T>>) -> ApiResult<T> {
    tokio::time::timeout_at(deadline, work).await.unwrap_or_else(|_| Err(deadline_error()))
}

/// Queues one prepared image on its model's queue and waits for its detections.
async fn infer(model: &ServedModel, request: InferenceRequest) -> ApiResult<InferenceResult> {
    let rx = model.queue.submit(request).map_err(queue_error)?;
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
