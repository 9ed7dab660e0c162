//! The inference queue: one thread owns the [`Detector`] and runs dynamic batches.
//!
//! The server's pipeline decodes and preprocesses images on tokio's blocking pool (in
//! parallel with inference) and submits the [`PreparedImage`]s here. The batcher
//! takes the first waiting job, then gathers more for up to `max_batch_delay` or until
//! `max_batch_size`, drops jobs whose client went away or whose deadline passed, groups the
//! rest by input size and hands each group to [`Detector::detect_prepared`]: one forward
//! pass, each image post-processed with its own options (threshold, class filter, cap), so
//! requests with different options still share a forward pass. Results equal one-by-one
//! inference because the engine runs the same preprocessing and post-processing as
//! [`Detector::detect`]. The server holds no tensor code: batching and post-processing are
//! the engine's.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rtdetr::io::preprocess::Preprocessor;
use rtdetr::{DetectOptions, Detection, Detector, PreparedImage};
use tokio::sync::{oneshot, watch};

use crate::metrics as m;

/// Builds the detector on the inference thread.
pub type ModelLoader = Box<dyn FnOnce() -> anyhow::Result<Detector> + Send>;

/// Batching parameters.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The served model's name (the `model` label of the queue's metrics).
    pub model: String,
    pub max_batch_size: usize,
    pub max_batch_delay: Duration,
    /// Jobs the channel holds (live ones are bounded by the server's admission permits).
    pub capacity: usize,
    /// Test hook: sleep this long before each batch (to fill the queue deterministically).
    #[doc(hidden)]
    pub test_batch_delay: Option<Duration>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            model: "rtdetr".into(),
            max_batch_size: 4,
            max_batch_delay: Duration::from_millis(5),
            capacity: 128,
            test_batch_delay: None,
        }
    }
}

/// What request handlers need to know about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub labels: Vec<String>,
    pub preprocessor: Preprocessor,
}

/// Loading progress, observed by `/health` and the handlers.
#[derive(Debug, Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<ModelInfo>),
    Failed(String),
}

/// One image ready for the network, with its post-processing options.
#[derive(Debug)]
pub struct InferenceRequest {
    /// Pixels from the model's preprocessor, their input size and the original image size.
    pub image: PreparedImage,
    pub options: DetectOptions,
    /// Skipped (and answered with [`QueueError::DeadlineExceeded`]) if not started by then.
    pub deadline: Instant,
}

#[derive(Debug, Clone)]
pub struct InferenceResult {
    pub detections: Vec<Detection>,
    /// Time spent waiting in the queue.
    pub queue_time: Duration,
    /// Forward pass + post-processing of the batch this image was in.
    pub inference_time: Duration,
    pub batch_size: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum QueueError {
    Full,
    Closed,
    DeadlineExceeded,
    Failed(String),
}

struct Job {
    req: InferenceRequest,
    enqueued: Instant,
    reply: oneshot::Sender<Result<InferenceResult, QueueError>>,
}

/// Counters for tests and logs.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub batches: AtomicU64,
    pub images: AtomicU64,
    pub max_batch_seen: AtomicUsize,
    /// Jobs dropped because the client went away before inference.
    pub skipped_disconnected: AtomicU64,
    pub skipped_deadline: AtomicU64,
}

/// Handle to the inference thread.
pub struct InferenceQueue {
    model: String,
    tx: Mutex<Option<SyncSender<Job>>>,
    depth: Arc<AtomicUsize>,
    stats: Arc<QueueStats>,
    state: watch::Receiver<ModelState>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl InferenceQueue {
    /// Starts the inference thread: loads the model, warms it up with one forward pass,
    /// then serves batches. The state goes `Loading` → `Ready` (or `Failed`).
    pub fn start(loader: ModelLoader, config: QueueConfig) -> Arc<Self> {
        let (tx, rx) = sync_channel::<Job>(config.capacity.max(1));
        let (state_tx, state_rx) = watch::channel(ModelState::Loading);
        let depth = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(QueueStats::default());
        let (d, s) = (depth.clone(), stats.clone());
        let model = config.model.clone();
        let spawned = std::thread::Builder::new().name("rtdetr-inference".into()).spawn(move || {
            let detector = match std::panic::catch_unwind(AssertUnwindSafe(loader)) {
                Ok(Ok(det)) => det,
                Ok(Err(e)) => {
                    let _ = state_tx.send(ModelState::Failed(format!("{e:#}")));
                    return;
                }
                Err(_) => {
                    let _ = state_tx.send(ModelState::Failed("model loading panicked".into()));
                    return;
                }
            };
            let started = Instant::now();
            if let Err(e) = detector.warm_up() {
                let _ = state_tx.send(ModelState::Failed(format!("warm-up failed: {e}")));
                return;
            }
            tracing::info!(model = %config.model, warmup_ms = started.elapsed().as_millis() as u64, "model warmed up");
            let info = ModelInfo { labels: detector.labels().to_vec(), preprocessor: detector.preprocessor().clone() };
            let _ = state_tx.send(ModelState::Ready(Arc::new(info)));
            batch_loop(&detector, rx, &config, &d, &s);
            tracing::debug!("inference thread stopped");
        });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                // The closure (and its state sender) is gone: report the failure through a
                // fresh channel whose sender is dropped, so waiters see it at once.
                let (_, failed) = watch::channel(ModelState::Failed(format!("cannot start the inference thread: {e}")));
                return Arc::new(Self {
                    model,
                    tx: Mutex::new(None),
                    depth,
                    stats,
                    state: failed,
                    thread: Mutex::new(None),
                });
            }
        };
        Arc::new(Self { model, tx: Mutex::new(Some(tx)), depth, stats, state: state_rx, thread: Mutex::new(thread) })
    }

    pub fn state(&self) -> ModelState {
        self.state.borrow().clone()
    }

    /// Waits until the model is ready (`Ok`) or failed to load (`Err`).
    pub async fn wait_ready(&self) -> Result<Arc<ModelInfo>, String> {
        let mut rx = self.state.clone();
        loop {
            match &*rx.borrow_and_update() {
                ModelState::Ready(info) => return Ok(info.clone()),
                ModelState::Failed(e) => return Err(e.clone()),
                ModelState::Loading => {}
            }
            if rx.changed().await.is_err() {
                return match &*rx.borrow() {
                    ModelState::Ready(info) => Ok(info.clone()),
                    ModelState::Failed(e) => Err(e.clone()),
                    ModelState::Loading => Err("the inference thread stopped".into()),
                };
            }
        }
    }

    /// The served model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// Images waiting for the inference thread.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Queues one image; never blocks. The receiver yields its result.
    pub fn submit(
        &self,
        req: InferenceRequest,
    ) -> Result<oneshot::Receiver<Result<InferenceResult, QueueError>>, QueueError> {
        let (reply, rx) = oneshot::channel();
        let guard = self.tx.lock().map_err(|_| QueueError::Closed)?;
        let tx = guard.as_ref().ok_or(QueueError::Closed)?;
        // Count before sending so the batcher never sees the depth go negative.
        let depth = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        match tx.try_send(Job { req, enqueued: Instant::now(), reply }) {
            Ok(()) => {
                metrics::gauge!(m::QUEUE_DEPTH, "model" => self.model.clone()).set(depth as f64);
                Ok(rx)
            }
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => QueueError::Full,
                    TrySendError::Disconnected(_) => QueueError::Closed,
                })
            }
        }
    }

    /// Stops accepting jobs; the thread finishes what is queued and exits. Waits up to `timeout`.
    pub fn close(&self, timeout: Duration) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let deadline = Instant::now() + timeout;
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::warn!("inference thread still busy after {timeout:?}; not waiting for it");
            }
        }
    }
}

fn batch_loop(detector: &Detector, rx: Receiver<Job>, cfg: &QueueConfig, depth: &AtomicUsize, stats: &QueueStats) {
    let max_batch = cfg.max_batch_size.max(1);
    loop {
        let first = match rx.recv() {
            Ok(j) => j,
            Err(_) => return, // closed and drained
        };
        let mut batch = vec![first];
        let opened = Instant::now();
        while batch.len() < max_batch {
            let left = cfg.max_batch_delay.saturating_sub(opened.elapsed());
            let next = if left.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(left)
            };
            match next {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let left = depth.fetch_sub(batch.len(), Ordering::Relaxed).saturating_sub(batch.len());
        metrics::gauge!(m::QUEUE_DEPTH, "model" => cfg.model.clone()).set(left as f64);
        if let Some(d) = cfg.test_batch_delay {
            std::thread::sleep(d);
        }
        let now = Instant::now();
        let mut live = Vec::with_capacity(batch.len());
        for job in batch {
            if job.reply.is_closed() {
                // The client went away: do not spend inference on it.
                stats.skipped_disconnected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::REJECTED, "reason" => "client_gone").increment(1);
            } else if now > job.req.deadline {
                stats.skipped_deadline.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::REJECTED, "reason" => "deadline").increment(1);
                let _ = job.reply.send(Err(QueueError::DeadlineExceeded));
            } else {
                live.push(job);
            }
        }
        let mut batch = live;
        if batch.is_empty() {
            continue;
        }
        // Images of one forward pass must share an input size (they do unless the
        // checkpoint keeps the original size).
        while !batch.is_empty() {
            let size = batch[0].req.image.input_size;
            let (group, rest): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.req.image.input_size == size);
            batch = rest;
            run_group(detector, group, stats, &cfg.model);
        }
    }
}

fn run_group(detector: &Detector, group: Vec<Job>, stats: &QueueStats, model: &str) {
    let n = group.len();
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| infer(detector, &group)));
    let elapsed = started.elapsed();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.images.fetch_add(n as u64, Ordering::Relaxed);
    stats.max_batch_seen.fetch_max(n, Ordering::Relaxed);
    metrics::histogram!(m::BATCH_SIZE, "model" => model.to_string()).record(n as f64);
    metrics::histogram!(m::INFERENCE_DURATION, "model" => model.to_string()).record(elapsed.as_secs_f64());
    let outcome = match result {
        Ok(Ok(dets)) => Ok(dets),
        Ok(Err(e)) => Err(QueueError::Failed(e.to_string())),
        Err(_) => Err(QueueError::Failed("the inference engine panicked".into())),
    };
    match outcome {
        Ok(all) => {
            for (job, detections) in group.into_iter().zip(all) {
                let queue_time = started.saturating_duration_since(job.enqueued);
                metrics::histogram!(m::QUEUE_WAIT, "model" => model.to_string()).record(queue_time.as_secs_f64());
                let _ = job.reply.send(Ok(InferenceResult {
                    detections,
                    queue_time,
                    inference_time: elapsed,
                    batch_size: n,
                }));
            }
        }
        Err(e) => {
            tracing::error!(batch = n, "inference failed: {e:?}");
            for job in group {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// One forward pass for the group, each image post-processed with its own options.
fn infer(detector: &Detector, group: &[Job]) -> rtdetr::Result<Vec<Vec<Detection>>> {
    let batch: Vec<(&PreparedImage, &DetectOptions)> = group.iter().map(|j| (&j.req.image, &j.req.options)).collect();
    let out = detector.detect_prepared(&batch)?;
    if out.len() != group.len() {
        return Err(rtdetr::Error::Internal(format!(
            "the engine returned {} results for {} images",
            out.len(),
            group.len()
        )));
    }
    Ok(out)
}
