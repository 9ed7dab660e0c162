//! `rtdetr serve`: the OpenAI-compatible HTTP API (crate `rtdetr-server`).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use rtdetr_server::config::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BODY_MEMORY, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_DECODE_MEMORY,
    DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_STREAMS_PER_KEY,
};
use rtdetr_server::{ApiKeys, RunningServer, ServerConfig};

use crate::ModelArgs;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (0.0.0.0 or :: to accept remote clients).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// API key that clients send as `Authorization: Bearer KEY` (repeatable; also read from
    /// RTDETR_API_KEYS, comma separated). Without any key the server is open to anyone.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// Model name that clients pass as `model` (default: the checkpoint directory's name or the Hub id).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Most images per forward pass (2 keeps r50vd's serving peak RSS at 907 MiB, 4 reaches
    /// 1.03 GiB; larger batches do not raise serving throughput on small CPUs).
    #[arg(long, default_value_t = 2)]
    pub max_batch_size: usize,
    /// How long a batch waits for more images after its first, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_batch_delay_ms: u64,
    /// Most images admitted at once (decoding, queued or running); more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Largest image in pixels (width x height), checked from the header before decoding.
    #[arg(long, default_value_t = DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,
    /// Largest request body, and largest image downloaded from a URL, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Let image URLs point at loopback, private and link-local addresses (trusted networks and tests only).
    #[arg(long)]
    pub allow_private_urls: bool,
    /// Per-request deadline in seconds (504 past it).
    #[arg(long, default_value_t = 60)]
    pub request_timeout_secs: u64,
    /// On SIGTERM, keep the port open at least this long (and until admitted requests finish),
    /// answering 503 to /health and to new requests, before refusing connections.
    #[arg(long, default_value_t = 1000)]
    pub drain_delay_ms: u64,
    /// Most concurrent /v1/stream WebSocket connections per API key (shared by all clients
    /// when no key is set); more get 429.
    #[arg(long, default_value_t = DEFAULT_MAX_STREAMS_PER_KEY)]
    pub max_streams_per_key: usize,
    /// Longest image side in pixels, checked from the header (413 above).
    #[arg(long, default_value_t = rtdetr::io::decode::DEFAULT_MAX_SIDE)]
    pub max_image_side: u32,
    /// Most scans in a progressive JPEG (each costs a pass over the image; 413 above).
    #[arg(long, default_value_t = rtdetr::io::decode::DEFAULT_MAX_JPEG_SCANS)]
    pub max_jpeg_scans: u32,
    /// Memory for images being decoded and kept for return_image, in MiB: images wait for
    /// their share; one needing more than all of it gets 413.
    #[arg(long, default_value_t = DEFAULT_MAX_DECODE_MEMORY >> 20)]
    pub max_decode_memory_mb: u64,
    /// Memory for request bodies being received, in MiB (429 `server_busy` beyond it).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_MEMORY >> 20)]
    pub max_body_memory_mb: usize,
    /// Time to receive a request body, in seconds (408 past it).
    #[arg(long, default_value_t = 30)]
    pub body_read_timeout_secs: u64,
    /// Time to send a request's headers, in seconds, from the connection's start or the
    /// previous response (so also the keep-alive idle timeout); the connection closes past it.
    #[arg(long, default_value_t = 20)]
    pub header_read_timeout_secs: u64,
    /// Most open connections (lowered to fit the file descriptor limit); more wait to be accepted.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// A /v1/stream WebSocket sending nothing for this many seconds is closed (1001).
    #[arg(long, default_value_t = 60)]
    pub stream_idle_timeout_secs: u64,
    /// Seconds between the server's pings on a /v1/stream WebSocket (no answer within two: closed).
    #[arg(long, default_value_t = 20)]
    pub stream_ping_interval_secs: u64,
}

fn default_served_name(model: &str) -> String {
    let path = std::path::Path::new(model);
    if path.is_dir() {
        if let Some(name) = path.canonicalize().ok().as_deref().and_then(|p| p.file_name()) {
            return name.to_string_lossy().into_owned();
        }
    }
    model.to_string()
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let mut keys = args.api_keys.clone();
    if let Ok(v) = std::env::var("RTDETR_API_KEYS") {
        keys.push(v);
    }
    let served_model_name = args.served_model_name.clone().unwrap_or_else(|| default_served_name(&args.model.model));
    let config = ServerConfig {
        served_model_name: served_model_name.clone(),
        api_keys: ApiKeys::new(keys),
        max_batch_size: args.max_batch_size,
        max_batch_delay: Duration::from_millis(args.max_batch_delay_ms),
        max_queue: args.max_queue,
        max_image_pixels: args.max_image_pixels,
        max_body_bytes: args.max_body_bytes,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        drain_delay: Duration::from_millis(args.drain_delay_ms),
        max_streams_per_key: args.max_streams_per_key,
        max_image_side: args.max_image_side,
        max_jpeg_scans: args.max_jpeg_scans,
        max_decode_memory: args.max_decode_memory_mb.saturating_mul(1 << 20),
        max_body_memory: args.max_body_memory_mb.saturating_mul(1 << 20),
        body_read_timeout: Duration::from_secs(args.body_read_timeout_secs),
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
        max_connections: args.max_connections,
        stream_idle_timeout: Duration::from_secs(args.stream_idle_timeout_secs),
        stream_ping_interval: Duration::from_secs(args.stream_ping_interval_secs),
        ..ServerConfig::default()
    }
    .allow_private_urls(args.allow_private_urls);
    config.validate().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        let model = args.model.clone();
        let server = RunningServer::start(config, Box::new(move || model.load()), listener).await?;
        println!(
            "rtdetr serve: listening on http://{addr} (model {served_model_name:?}; ready when /health answers 200)"
        );
        let _ = std::io::stdout().flush();
        let handle = server.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: shutting down (send it again to exit at once)");
            handle.shutdown();
            wait_for_signal().await;
            std::process::exit(130);
        });
        server.wait().await
    })?;
    Ok(0)
}
