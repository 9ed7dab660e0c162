//! `rtdetr serve`: the OpenAI-compatible HTTP API (crate `rtdetr-server`).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use rtdetr_server::config::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BODY_MEMORY, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_DECODE_MEMORY,
    DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_STREAMS_PER_KEY,
};
use rtdetr_server::{ApiKeys, ModelSpec, RunningServer, ServerConfig};

use crate::{ModelArgs, PrecisionArg};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Checkpoint to serve: a local directory or a Hugging Face Hub id. Repeat to serve
    /// several from one server (clients pick one with the request's `model`); the first is
    /// the default for requests that name none. Default: the Hub's r50vd.
    #[arg(long = "model", short = 'm', value_name = "MODEL")]
    pub models: Vec<String>,
    /// Input size of every --model: one multiple of 32 (square) or HxW (default: each
    /// checkpoint's preprocessor_config.json).
    #[arg(long)]
    pub size: Option<String>,
    /// Run only the first N decoder layers of every --model.
    #[arg(long)]
    pub decoder_layers: Option<usize>,
    /// Arithmetic of every --model (f32, or bf16 where the CPU has it).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// A JSON file listing models with their own options, served after the --model ones:
    /// `[{"model": "PekingU/rtdetr_r18vd", "served_model_name": "fast", "precision": "bf16",
    /// "size": 640, "decoder_layers": 3, "default": true}, ...]`.
    #[arg(long, value_name = "FILE")]
    pub models_config: Option<std::path::PathBuf>,
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
    /// Name clients pass as `model`, one per --model in order (default: the checkpoint
    /// directory's name or the Hub id).
    #[arg(long = "served-model-name", value_name = "NAME")]
    pub served_model_names: Vec<String>,
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

/// One entry of `--models-config`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    model: String,
    served_model_name: Option<String>,
    precision: Option<PrecisionArg>,
    size: Option<serde_json::Value>,
    decoder_layers: Option<usize>,
    #[serde(default)]
    default: bool,
}

/// The models to serve, the default first: the --model flags (with the shared load flags
/// and --served-model-name), then the --models-config entries.
fn served_models(args: &ServeArgs) -> anyhow::Result<Vec<(String, ModelArgs)>> {
    if args.served_model_names.len() > args.models.len().max(1) {
        anyhow::bail!(
            "{} --served-model-name for {} --model: give at most one name per model",
            args.served_model_names.len(),
            args.models.len().max(1)
        );
    }
    let mut models: Vec<String> = args.models.clone();
    if models.is_empty() && args.models_config.is_none() {
        models.push(rtdetr::DEFAULT_MODEL.to_string());
    }
    let mut out: Vec<(String, ModelArgs)> = models
        .into_iter()
        .enumerate()
        .map(|(i, model)| {
            let name = args.served_model_names.get(i).cloned().unwrap_or_else(|| default_served_name(&model));
            let load = ModelArgs {
                model,
                size: args.size.clone(),
                decoder_layers: args.decoder_layers,
                precision: args.precision,
            };
            (name, load)
        })
        .collect();
    if let Some(path) = &args.models_config {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let entries: Vec<ModelEntry> = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected a JSON list of {{\"model\", ...}} objects", path.display()))?;
        let mut default = None;
        for e in entries {
            let size = match e.size {
                None => None,
                Some(serde_json::Value::String(s)) => Some(s),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(other) => anyhow::bail!("{}: size must be a number or \"HxW\", got {other}", path.display()),
            };
            let name = e.served_model_name.clone().unwrap_or_else(|| default_served_name(&e.model));
            if e.default {
                if default.is_some() {
                    anyhow::bail!("{}: more than one model is marked default", path.display());
                }
                default = Some(out.len());
            }
            let load = ModelArgs {
                model: e.model,
                size,
                decoder_layers: e.decoder_layers,
                precision: e.precision.unwrap_or(args.precision),
            };
            out.push((name, load));
        }
        if let Some(i) = default {
            let entry = out.remove(i);
            out.insert(0, entry);
        }
        if out.is_empty() {
            anyhow::bail!("{}: no model listed", path.display());
        }
    }
    Ok(out)
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
    let models = served_models(&args)?;
    let names: Vec<String> = models.iter().map(|(name, _)| name.clone()).collect();
    let config = ServerConfig {
        served_model_name: names[0].clone(),
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
        let specs =
            models.into_iter().map(|(name, load)| ModelSpec { name, loader: Box::new(move || load.load()) }).collect();
        let server = RunningServer::start_models(config, specs, listener).await?;
        println!(
            "rtdetr serve: listening on http://{addr} (models {names:?}, default {:?}; ready when /health answers 200)",
            names[0]
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).expect("flags").serve
    }

    fn summary(models: &[(String, ModelArgs)]) -> Vec<(String, String, Option<String>, PrecisionArg)> {
        models.iter().map(|(n, m)| (n.clone(), m.model.clone(), m.size.clone(), m.precision)).collect()
    }

    #[test]
    fn models_from_flags_and_a_config_file() {
        let s = |v: &str| v.to_string();
        let one = served_models(&parse(&[])).unwrap();
        assert_eq!(summary(&one), [(s(rtdetr::DEFAULT_MODEL), s(rtdetr::DEFAULT_MODEL), None, PrecisionArg::F32)]);
        let two =
            served_models(&parse(&["--model", "a/b", "--model", "c/d", "--served-model-name", "x", "--size", "320"]))
                .unwrap();
        assert_eq!(
            summary(&two),
            [
                (s("x"), s("a/b"), Some(s("320")), PrecisionArg::F32),
                (s("c/d"), s("c/d"), Some(s("320")), PrecisionArg::F32)
            ]
        );
        assert!(
            served_models(&parse(&["--model", "a/b", "--served-model-name", "x", "--served-model-name", "y"])).is_err()
        );

        let dir = std::env::temp_dir().join(format!("rtdetr-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("models.json");
        std::fs::write(
            &file,
            r#"[{"model": "e/f", "served_model_name": "fast", "precision": "bf16", "size": "480x640", "decoder_layers": 3},
                {"model": "g/h", "size": 800, "default": true}]"#,
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let all = served_models(&parse(&["--model", "a/b", "--models-config", f])).unwrap();
        assert_eq!(
            summary(&all),
            [
                (s("g/h"), s("g/h"), Some(s("800")), PrecisionArg::F32),
                (s("a/b"), s("a/b"), None, PrecisionArg::F32),
                (s("fast"), s("e/f"), Some(s("480x640")), PrecisionArg::Bf16),
            ]
        );
        assert_eq!(all[2].1.decoder_layers, Some(3));
        for bad in [
            r#"[{"model": "a", "colour": 1}]"#,
            r#"[{"model": "a", "size": true}]"#,
            "[]",
            "{",
            r#"[{"model": "a", "default": true}, {"model": "b", "default": true}]"#,
        ] {
            std::fs::write(&file, bad).unwrap();
            assert!(served_models(&parse(&["--models-config", f])).is_err(), "{bad}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
