//! `rtdetr serve`: an OpenAI-compatible HTTP API for RT-DETR detection.
//!
//! Layout (after text-embeddings-inference's router): the HTTP layer ([`handlers`],
//! [`server`]) validates requests, decodes and preprocesses images on tokio's blocking pool
//! and never touches tensors; the [`queue`] owns the [`rtdetr::Detector`] on a dedicated
//! thread and runs dynamic batches. Admission is bounded (429 when full), every request has
//! a deadline, URL inputs are fetched by [`fetch`] without SSRF exposure.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use rtdetr_server::{RunningServer, ServerConfig};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let config = ServerConfig { served_model_name: "shapes-demo".into(), ..Default::default() };
//! let server = RunningServer::start(config, Box::new(|| Ok(rtdetr::Detector::load("models/shapes-demo")?)), listener).await?;
//! server.wait().await
//! # }
//! ```

pub mod auth;
pub mod config;
pub mod error;
pub mod fetch;
pub mod handlers;
pub mod input;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod queue;
pub mod server;
pub mod stream;
pub mod types;

pub use auth::ApiKeys;
pub use config::ServerConfig;
pub use error::{ApiError, ErrorResponse};
pub use fetch::{AddressPolicy, FetchConfig};
pub use queue::{InferenceQueue, ModelLoader};
pub use server::{router, AppState, RunningServer, ShutdownHandle};
