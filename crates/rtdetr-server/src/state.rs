//! What every request shares, and the gates in front of the work: readiness (503),
//! admission slots (429) with the in-flight gauge, and the registry of open streams.
//! The bottom of the server's modules: it knows the queue, the config and the error shape,
//! nothing about routes or protocols.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};
use crate::metrics as m;
use crate::queue::{InferenceQueue, ModelInfo, ModelState};

/// One served model: the name clients pass as `model`, and its inference queue (its own
/// thread, weights and batches).
pub struct ServedModel {
    pub name: String,
    pub queue: Arc<InferenceQueue>,
}

/// Shared by every handler.
pub struct AppState {
    pub config: ServerConfig,
    /// Every served model, the default (for requests without `model`) first.
    pub models: Vec<Arc<ServedModel>>,
    /// The default model.
    pub default_model: Arc<ServedModel>,
    /// Admission slots, one per image in flight (`--max-queue`).
    pub permits: Arc<Semaphore>,
    /// Concurrent image decodes (one per CPU): decoding is CPU-bound.
    pub decode_slots: Arc<Semaphore>,
    /// Memory of images being decoded and of decoded images kept for `return_image`.
    pub decode_memory: MemoryBudget,
    /// Memory of request bodies being received.
    pub body_memory: MemoryBudget,
    /// Decodes stopped early because their request was dropped (client gone, deadline).
    pub decodes_cancelled: Arc<AtomicU64>,
    /// Set once shutdown starts: `/health` and new inference requests answer 503 (the listener
    /// stays open while admitted work finishes, at least `drain_delay`).
    pub draining: AtomicBool,
    /// Unix time the server started (the model's `created`).
    pub created: u64,
    /// Open `/v1/stream` WebSockets (per-key limit, closed on shutdown).
    pub streams: Arc<StreamRegistry>,
}

impl AppState {
    /// The state of a server that starts now with `default_model` and `others`.
    pub fn new(config: ServerConfig, default_model: Arc<ServedModel>, others: Vec<Arc<ServedModel>>) -> Self {
        let mut models = vec![default_model.clone()];
        models.extend(others);
        Self {
            models,
            default_model,
            permits: Arc::new(Semaphore::new(config.max_queue)),
            decode_slots: Arc::new(Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))),
            decode_memory: MemoryBudget::new(config.max_decode_memory),
            body_memory: MemoryBudget::new(config.max_body_memory as u64),
            decodes_cancelled: Arc::default(),
            streams: StreamRegistry::new(config.max_streams_per_key),
            config,
            draining: AtomicBool::new(false),
            created: unix_now(),
        }
    }

    /// 503 `shutting_down` once shutdown started.
    pub fn serving(&self) -> ApiResult<()> {
        if self.draining.load(Ordering::Relaxed) || self.streams.is_shut_down() {
            return Err(ApiError::unavailable("shutting_down", "the server is shutting down"));
        }
        Ok(())
    }

    /// The model called `name` (`None`: the default one), or 404 `model_not_found` naming
    /// the served models.
    pub fn find_model(&self, name: Option<&str>) -> ApiResult<Arc<ServedModel>> {
        let Some(name) = name else {
            return Ok(self.default_model.clone());
        };
        self.models.iter().find(|m| m.name == name).cloned().ok_or_else(|| {
            let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            ApiError::not_found(
                "model_not_found",
                format!("the model {name:?} does not exist; this server serves {}", names.join(", ")),
            )
            .with_param("model")
        })
    }

    /// `model`'s labels and preprocessor, if it is ready and the server is not shutting down;
    /// else 503 (`shutting_down`, `not_ready` or `model_unavailable`, with `Retry-After`).
    pub fn ready(&self, model: &ServedModel) -> ApiResult<Arc<ModelInfo>> {
        self.serving()?;
        match model.queue.state() {
            ModelState::Ready(info) => Ok(info),
            ModelState::Loading => Err(ApiError::unavailable("not_ready", "the model is still loading; retry shortly")),
            ModelState::Failed(_) => Err(ApiError::unavailable("model_unavailable", "the model failed to load")),
        }
    }

    /// Takes `n` admission slots (one per image, released when the permit drops) or answers
    /// 429 `queue_full` at once.
    pub fn admit(&self, n: usize) -> ApiResult<OwnedSemaphorePermit> {
        let permit = u32::try_from(n)
            .ok()
            .and_then(|n| self.permits.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                metrics::counter!(m::REJECTED, "reason" => "queue_full").increment(1);
                ApiError::queue_full()
            })?;
        self.record_in_flight();
        Ok(permit)
    }

    /// The decode limits of the server's flags (no cancel flag).
    pub fn decode_limits(&self) -> rtdetr::io::decode::DecodeLimits {
        rtdetr::io::decode::DecodeLimits {
            max_pixels: self.config.max_image_pixels,
            max_side: self.config.max_image_side,
            max_jpeg_scans: self.config.max_jpeg_scans,
            max_alloc: None,
            cancel: None,
        }
    }

    /// Images admitted (decoding, queued or in inference).
    pub fn in_flight(&self) -> usize {
        self.config.max_queue.saturating_sub(self.permits.available_permits())
    }

    /// Sets the `rtdetr_in_flight_images` gauge.
    pub fn record_in_flight(&self) {
        metrics::gauge!(m::IN_FLIGHT).set(self.in_flight() as f64);
    }
}

/// Bytes of memory shared by all requests, charged in KiB: a charge is held as a permit
/// and returned when it drops.
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    total_kib: u32,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX / 2).min(Semaphore::MAX_PERMITS as u32);
        Self { sem: Arc::new(Semaphore::new(total_kib as usize)), total_kib }
    }

    fn kib(bytes: u64) -> Option<u32> {
        u32::try_from(bytes.div_ceil(1024)).ok()
    }

    /// Whether `bytes` could ever be charged (not more than the whole budget).
    pub fn fits(&self, bytes: u64) -> bool {
        Self::kib(bytes).is_some_and(|k| k <= self.total_kib)
    }

    /// Waits until `bytes` are free and charges them; `None` if they never fit.
    pub async fn charge(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = Self::kib(bytes).filter(|&k| k <= self.total_kib)?;
        self.sem.clone().acquire_many_owned(kib).await.ok()
    }

    /// Charges `bytes` if they are free now.
    pub fn try_charge(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = Self::kib(bytes).filter(|&k| k <= self.total_kib)?;
        self.sem.clone().try_acquire_many_owned(kib).ok()
    }

    /// Bytes free now.
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64 * 1024
    }

    /// Bytes of a charge.
    pub fn charged(permit: &OwnedSemaphorePermit) -> u64 {
        permit.num_permits() as u64 * 1024
    }

    /// Splits `bytes` off `permit` (a part to keep longer), if it holds that much.
    pub fn split(permit: &mut OwnedSemaphorePermit, bytes: u64) -> Option<OwnedSemaphorePermit> {
        permit.split(Self::kib(bytes)? as usize)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Open streams per API key, and the shutdown signal for all of them.
pub struct StreamRegistry {
    max_per_key: usize,
    open: Mutex<HashMap<Option<usize>, usize>>,
    live: watch::Sender<usize>,
    shutdown: watch::Sender<bool>,
}

impl StreamRegistry {
    pub fn new(max_per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_key: max_per_key.max(1),
            open: Mutex::default(),
            live: watch::channel(0).0,
            shutdown: watch::channel(false).0,
        })
    }

    /// Open stream connections.
    pub fn open_streams(&self) -> usize {
        *self.live.borrow()
    }

    /// Takes a slot for `key` (`None`: no keys configured), or `None` when it has
    /// `max_per_key` streams open.
    pub(crate) fn try_open(self: &Arc<Self>, key: Option<usize>) -> Option<StreamSlot> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key).or_insert(0);
        if *n >= self.max_per_key {
            return None;
        }
        *n += 1;
        drop(open);
        self.live.send_modify(|n| *n += 1);
        // Counted up and down rather than set from this registry: the gauge is the
        // process's, and stays right with several servers in one process (tests).
        metrics::gauge!(m::STREAM_CONNECTIONS).increment(1.0);
        Some(StreamSlot { registry: self.clone(), key })
    }

    /// Asks every open stream to close (1001) and refuses new ones.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves once [`shutdown`](Self::shutdown) is called.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Waits until every stream has closed, at most `timeout`.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let mut rx = self.live.subscribe();
        let closed = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
        matches!(closed, Ok(Ok(_)))
    }
}

/// One open stream, released on drop.
pub(crate) struct StreamSlot {
    registry: Arc<StreamRegistry>,
    key: Option<usize>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.registry.open.lock() {
            if let Some(n) = open.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.key);
                }
            }
        }
        self.registry.live.send_modify(|n| *n = n.saturating_sub(1));
        metrics::gauge!(m::STREAM_CONNECTIONS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_budget_charges_and_returns() {
        let b = MemoryBudget::new(10 << 10);
        assert!(b.fits(10 << 10) && !b.fits((10 << 10) + 1));
        assert!(b.charge(11 << 10).await.is_none());
        let mut big = b.try_charge(6000).unwrap();
        assert_eq!(MemoryBudget::charged(&big), 6 << 10);
        assert!(b.try_charge(5 << 10).is_none());
        let kept = MemoryBudget::split(&mut big, 2048).unwrap();
        drop(big);
        assert_eq!(b.available(), 8 << 10);
        drop(kept);
        assert_eq!(b.available(), 10 << 10);
    }

    #[tokio::test]
    async fn registry_limits_per_key() {
        let r = StreamRegistry::new(2);
        let a1 = r.try_open(Some(0)).unwrap();
        let _a2 = r.try_open(Some(0)).unwrap();
        assert!(r.try_open(Some(0)).is_none());
        let _b = r.try_open(Some(1)).unwrap();
        assert_eq!(r.open_streams(), 3);
        drop(a1);
        assert!(r.try_open(Some(0)).is_some());
        assert!(!r.wait_closed(Duration::from_millis(10)).await);
    }
}
