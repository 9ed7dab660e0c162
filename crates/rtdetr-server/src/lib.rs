//! `rtdetr serve`: an OpenAI-compatible HTTP API for RT-DETR detection.
//!
//! Layout (after text-embeddings-inference's router); modules depend only on those listed
//! before them, never in a circle:
//! - leaves: [`error`], [`metrics`], [`auth`], [`fetch`] (URLs without SSRF exposure),
//!   [`config`], [`types`] (request and response bodies), [`input`] (image references,
//!   decoding with a pixel limit);
//! - [`queue`]: one thread owns the [`rtdetr::Detector`] and batches prepared images into
//!   [`rtdetr::Detector::detect_prepared`] (no tensor code in this crate);
//! - [`state`]: [`AppState`] and its gates: readiness (503), admission slots (429) with the
//!   in-flight gauge, open streams;
//! - [`pipeline`]: the one path of an image for HTTP and WebSocket alike: fetch, decode on
//!   the blocking pool, queue with a deadline, errors mapped to 429/503/504/500;
//! - [`tracking`]: ByteTrack (`rtdetr-track`) over the engine's detections, for the stream
//!   and the CLI's `--track`;
//! - [`handlers`] (HTTP shapes) and [`stream`] (the `/v1/stream` WebSocket protocol) both
//!   call [`pipeline`], never each other; [`pages`] and [`openapi`] serve the page and docs;
//! - [`conn`]: connections (cap, header-read and idle timeouts, graceful close);
//! - [`server`]: the router, middleware and life cycle (load, warm up, serve, drain).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use rtdetr_server::{RunningServer, ServerConfig};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let config = ServerConfig { served_model_name: "shapes-demo".into(), ..Default::default() };
//! let loader = Box::new(|| Ok(rtdetr::Detector::load("models/shapes-demo", &rtdetr::LoadOptions::default())?));
//! let server = RunningServer::start(config, loader, listener).await?;
//! server.wait().await
//! # }
//! ```

pub mod auth;
pub mod config;
pub mod conn;
pub mod error;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod handlers;
pub mod input;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod pipeline;
pub mod queue;
pub mod server;
pub mod state;
pub mod stream;
pub mod tracking;
pub mod types;

pub use auth::ApiKeys;
pub use config::ServerConfig;
pub use error::{ApiError, ErrorResponse};
pub use fetch::{AddressPolicy, FetchConfig};
pub use queue::{InferenceQueue, ModelLoader};
pub use server::{router, ModelSpec, RunningServer, ShutdownHandle};
pub use state::AppState;
