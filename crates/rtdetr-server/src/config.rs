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
        Ok(())
    }
}
