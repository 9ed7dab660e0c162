//! Server settings (the `rtdetr serve` flags).

use std::time::Duration;

use crate::auth::ApiKeys;
use crate::fetch::{AddressPolicy, FetchConfig};

/// Default pixel limit per image: 40 megapixels (e.g. 8000x5000), about 120 MB decoded.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 40_000_000;
/// Default request body limit: 20 MiB (base64 inflates images by a third).
pub const DEFAULT_MAX_BODY_BYTES: usize = 20 * 1024 * 1024;
/// Default concurrent WebSocket streams per API key.
pub const DEFAULT_MAX_STREAMS_PER_KEY: usize = 4;
/// Most images in one request.
pub const MAX_IMAGES_PER_REQUEST: usize = 16;
/// Default memory for images being decoded (and kept for `return_image`): 384 MiB, room for
/// one 40 MP image in any supported format but a 16-bit RGBA PNG.
pub const DEFAULT_MAX_DECODE_MEMORY: u64 = 384 << 20;
/// Default memory for request bodies being received and parsed: 128 MiB.
pub const DEFAULT_MAX_BODY_MEMORY: usize = 128 << 20;
/// Default most open connections (lowered to fit the process's file descriptor limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name clients pass as `model` (`GET /v1/models` lists it).
    pub served_model_name: String,
    pub api_keys: ApiKeys,
    /// Most images per forward pass.
    pub max_batch_size: usize,
    /// How long the batcher waits for more images after the first.
    pub max_batch_delay: Duration,
    /// Most images admitted at once (decoding, queued or in inference); beyond it requests get 429.
    pub max_queue: usize,
    pub max_image_pixels: u64,
    pub max_body_bytes: usize,
    /// Per-request deadline (reading the body, fetching, decoding, queueing, inference): 504 past it.
    pub request_timeout: Duration,
    /// URL fetching rules (the address policy comes from `--allow-private-urls`).
    pub fetch: FetchConfig,
    /// Longest wait for in-flight requests on shutdown.
    pub shutdown_timeout: Duration,
    /// On shutdown, how long the listener at least stays open answering 503 (`/health` and new
    /// requests) before connections are refused, so that load balancers see the replica drain.
    pub drain_delay: Duration,
    /// Most concurrent `/v1/stream` WebSocket connections per API key (all clients share one
    /// allowance when no key is configured); beyond it the upgrade is refused with 429.
    pub max_streams_per_key: usize,
    /// Longest side of an image, from its header.
    pub max_image_side: u32,
    /// Most scans of a progressive JPEG (each costs a pass over the image).
    pub max_jpeg_scans: u32,
    /// Bytes that images being decoded may hold at once (and annotated images kept for
    /// `return_image`): an image waits for its share; one that needs more than all of it
    /// gets 413.
    pub max_decode_memory: u64,
    /// Bytes that request bodies being received may hold at once; beyond it 429.
    pub max_body_memory: usize,
    /// Time to receive a request body (408 past it).
    pub body_read_timeout: Duration,
    /// Time to send a request's headers, from the connection's start or the end of the
    /// previous response: also the keep-alive idle timeout. The connection is closed past it.
    pub header_read_timeout: Duration,
    /// Most open connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// A `/v1/stream` WebSocket that sends no frame or message for this long is closed (1001).
    pub stream_idle_timeout: Duration,
    /// How often the server pings an open WebSocket; a peer that has not answered (any
    /// frame, pongs included) within two intervals is closed.
    pub stream_ping_interval: Duration,
    /// Test hook: the batcher sleeps this long before each batch.
    #[doc(hidden)]
    pub test_batch_delay: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            served_model_name: "rtdetr".into(),
            api_keys: ApiKeys::default(),
            max_batch_size: 2,
            max_batch_delay: Duration::from_millis(5),
            max_queue: 64,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(60),
            fetch: FetchConfig::default(),
            shutdown_timeout: Duration::from_secs(30),
            drain_delay: Duration::from_secs(1),
            max_streams_per_key: DEFAULT_MAX_STREAMS_PER_KEY,
            max_image_side: rtdetr::io::decode::DEFAULT_MAX_SIDE,
            max_jpeg_scans: rtdetr::io::decode::DEFAULT_MAX_JPEG_SCANS,
            max_decode_memory: DEFAULT_MAX_DECODE_MEMORY,
            max_body_memory: DEFAULT_MAX_BODY_MEMORY,
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(20),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            stream_idle_timeout: Duration::from_secs(60),
            stream_ping_interval: Duration::from_secs(20),
            test_batch_delay: None,
        }
    }
}

impl ServerConfig {
    /// `--allow-private-urls`: let image URLs point at private and loopback addresses.
    pub fn allow_private_urls(mut self, allow: bool) -> Self {
        self.fetch.policy = if allow { AddressPolicy::AllowPrivate } else { AddressPolicy::PublicOnly };
        self
    }

    /// Checks the values; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.served_model_name.trim().is_empty() {
            return Err("--served-model-name must not be empty".into());
        }
        if self.max_batch_size == 0 {
            return Err("--max-batch-size must be at least 1".into());
        }
        if self.max_queue == 0 || self.max_queue > u32::MAX as usize / 2 {
            return Err("--max-queue must be at least 1".into());
        }
        if self.max_image_pixels == 0 {
            return Err("--max-image-pixels must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("--max-body-bytes must be at least 1024".into());
        }
        if self.max_streams_per_key == 0 {
            return Err("--max-streams-per-key must be at least 1".into());
        }
        if self.request_timeout.is_zero() {
            return Err("--request-timeout-secs must be at least 1".into());
        }
        if self.max_body_memory < self.max_body_bytes {
            return Err("--max-body-memory-mb must be at least --max-body-bytes".into());
        }
        if self.max_decode_memory < 1 << 20 || self.max_decode_memory / 1024 > u64::from(u32::MAX / 2) {
            return Err("--max-decode-memory-mb must be between 1 and 2 TiB".into());
        }
        if self.max_image_side == 0 || self.max_jpeg_scans == 0 {
            return Err("--max-image-side and --max-jpeg-scans must be at least 1".into());
        }
        for (d, flag) in [
            (self.body_read_timeout, "--body-read-timeout-secs"),
            (self.header_read_timeout, "--header-read-timeout-secs"),
            (self.stream_idle_timeout, "--stream-idle-timeout-secs"),
            (self.stream_ping_interval, "--stream-ping-interval-secs"),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be above 0"));
            }
        }
        if self.max_connections < 4 {
            return Err("--max-connections must be at least 4".into());
        }
        Ok(())
    }
}
