//! The top of the server: the router (routes from [`handlers`], [`stream`], [`pages`] and
//! [`openapi`]), middleware (request id, logs, metrics, auth, error shape) and the server's
//! life cycle (load and warm up, serve, drain on shutdown).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::config::ServerConfig;
use crate::error::{ApiError, ErrorCode};
use crate::queue::{InferenceQueue, ModelLoader, QueueConfig};
use crate::state::{AppState, ServedModel};
use crate::{handlers, metrics as m, openapi, pages, stream};

/// The id of a request (`x-request-id`, generated when absent), in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// All routes with their middleware.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/detections", post(handlers::detections))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{*model}", get(handlers::get_model))
        .route_layer(from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .merge(api)
        // Its own auth (header or `?api_key=`), checked before the upgrade.
        .route("/v1/stream", get(stream::stream))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics_endpoint))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs_page))
        .merge(pages::routes())
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            ApiError::internal("internal error while handling the request").into_response()
        }))
        .layer(from_fn(openai_error_shape))
        .layer(from_fn(request_context))
        .with_state(state)
}

async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let auth = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match state.config.api_keys.check(auth) {
        Ok(()) => next.run(req).await,
        Err(msg) => {
            metrics::counter!(m::REJECTED, "reason" => "unauthorized").increment(1);
            ApiError::unauthorized(msg).into_response()
        }
    }
}

/// Rewrites non-JSON error responses (axum's own 405, rejections, panics) into OpenAI's shape.
async fn openai_error_shape(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let (kind, code) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("invalid_request_error", "method_not_allowed"),
        StatusCode::NOT_FOUND => ("invalid_request_error", "not_found"),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", "request_too_large"),
        s if s.is_server_error() => ("server_error", "internal_error"),
        _ => ("invalid_request_error", "invalid_request"),
    };
    let mut out = ApiError::new(status, kind, code, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
        .then(|| s.to_string())
}

/// Request id, a tracing span per request, one log line per response, request metrics.
/// Logs name the method, path, status and timing, never headers (API keys stay out).
async fn request_context(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(valid_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let status = resp.status();
    metrics::counter!(m::REQUESTS, "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
    // /health answering 503 while loading or draining is the probe doing its job, not a
    // failure.
    let expected_unavailable = status == StatusCode::SERVICE_UNAVAILABLE && route == "/health";
    metrics::histogram!(m::REQUEST_DURATION, "route" => route).record(elapsed.as_secs_f64());
    let code = resp.extensions().get::<ErrorCode>().map(|c| c.0).unwrap_or("");
    let latency_ms = (elapsed.as_secs_f64() * 1e4).round() / 10.0;
    span.in_scope(|| {
        if status.is_server_error() && !expected_unavailable {
            tracing::warn!(status = status.as_u16(), latency_ms, code, "request failed");
        } else if status.is_client_error() {
            tracing::info!(status = status.as_u16(), latency_ms, code, "request refused");
        } else {
            tracing::info!(status = status.as_u16(), latency_ms, "request done");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// A model to serve: the name clients pass as `model`, and how to load it (on its
/// inference thread).
pub struct ModelSpec {
    pub name: String,
    pub loader: ModelLoader,
}

/// A server running on a tokio runtime.
pub struct RunningServer {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// After the stop signal: keeps accepting connections while admitted requests finish (bounded
/// by `shutdown_timeout`) and for at least `drain_delay`, with `/health` and new inference
/// requests answering 503 `shutting_down` (no work done, so a load balancer may retry them on
/// another replica). Then the HTTP server stops accepting and finishes what is still running
/// on its connections. Not loaded (e.g. a load failure): no wait.
async fn wait_drained(state: &AppState) {
    let start = Instant::now();
    if !state.models.iter().any(|m| matches!(m.queue.state(), crate::queue::ModelState::Ready(_))) {
        return;
    }
    tracing::info!(
        drain_delay_ms = state.config.drain_delay.as_millis() as u64,
        "draining: /health and new requests answer 503; finishing admitted requests"
    );
    loop {
        let idle = state.in_flight() == 0;
        let elapsed = start.elapsed();
        if (idle && elapsed >= state.config.drain_delay) || elapsed >= state.config.shutdown_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Triggers a graceful shutdown from anywhere (signal handlers, tests).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

impl RunningServer {
    /// Starts serving on `listener` at once (`/health` answers 503), loads and warms up the
    /// model on the inference thread, then answers requests. If the model fails to load the
    /// server stops and [`RunningServer::wait`] returns the error.
    pub async fn start(config: ServerConfig, loader: ModelLoader, listener: TcpListener) -> anyhow::Result<Self> {
        let name = config.served_model_name.clone();
        Self::start_models(config, vec![ModelSpec { name, loader }], listener).await
    }

    /// [`start`](Self::start) with several models, each on its own inference thread with its
    /// own batches; the first is the default for requests that name none. The server is
    /// ready (`/health` 200) once every model is; if one fails to load, the server stops.
    pub async fn start_models(
        config: ServerConfig,
        models: Vec<ModelSpec>,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let mut names = std::collections::HashSet::new();
        for spec in &models {
            if spec.name.trim().is_empty() {
                anyhow::bail!("a served model name must not be empty");
            }
            if !names.insert(spec.name.as_str()) {
                anyhow::bail!("two models are served as {:?}: give each its own --served-model-name", spec.name);
            }
        }
        let mut config = config;
        // A downloaded image is capped like an uploaded one.
        config.fetch.max_bytes = config.fetch.max_bytes.min(config.max_body_bytes);
        m::handle();
        let addr = listener.local_addr()?;
        if config.api_keys.is_empty() {
            tracing::warn!(
                "NO API KEY CONFIGURED: anyone who can reach http://{addr} can use this server. \
                 Set --api-key or RTDETR_API_KEYS before exposing it."
            );
        } else {
            tracing::info!(keys = config.api_keys.len(), "API key authentication enabled");
        }
        let served: Vec<Arc<ServedModel>> = models
            .into_iter()
            .map(|spec| {
                let queue = InferenceQueue::start(
                    spec.loader,
                    QueueConfig {
                        model: spec.name.clone(),
                        max_batch_size: config.max_batch_size,
                        max_batch_delay: config.max_batch_delay,
                        capacity: config.max_queue.saturating_mul(2),
                        test_batch_delay: config.test_batch_delay,
                    },
                );
                Arc::new(ServedModel { name: spec.name, queue })
            })
            .collect();
        let mut served = served.into_iter();
        let default_model = served.next().ok_or_else(|| anyhow::anyhow!("no model to serve"))?;
        let state = Arc::new(AppState::new(config, default_model, served.collect()));
        let (stop_tx, _) = watch::channel(false);
        let stop = Arc::new(stop_tx);
        let failure: Arc<Mutex<Option<String>>> = Arc::default();

        // Stop if a model cannot be loaded.
        for model in &state.models {
            let (model, stop, failure) = (model.clone(), stop.clone(), failure.clone());
            tokio::spawn(async move {
                match model.queue.wait_ready().await {
                    Ok(_) => tracing::info!(model = %model.name, "ready: model loaded and warmed up"),
                    Err(e) => {
                        tracing::error!(model = %model.name, "cannot load the model: {e}");
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(format!("{}: {e}", model.name));
                        }
                        stop.send_replace(true);
                    }
                }
            });
        }
        // Keep histogram memory bounded.
        {
            let mut rx = stop.subscribe();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(10)) => m::run_upkeep(),
                        _ = rx.wait_for(|s| *s) => break,
                    }
                }
            });
        }

        let app = router(state.clone());
        let task = {
            let state = state.clone();
            let mut rx_graceful = stop.subscribe();
            let mut rx_hard = stop.subscribe();
            let st = state.clone();
            let graceful = async move {
                let _ = rx_graceful.wait_for(|s| *s).await;
                st.draining.store(true, Ordering::SeqCst);
                // Upgraded WebSockets are not tracked by the HTTP server: close them (1001).
                st.streams.shutdown();
                wait_drained(&st).await;
                tracing::info!("shutting down: no new connections, finishing in-flight requests");
            };
            let timeout = state.config.shutdown_timeout;
            let limits = crate::conn::ConnectionLimits {
                max_connections: crate::conn::fit_to_descriptor_limit(state.config.max_connections),
                header_read_timeout: state.config.header_read_timeout,
            };
            tokio::spawn(async move {
                let serve = crate::conn::serve(listener, app, limits, graceful);
                let hard_stop = async move {
                    let _ = rx_hard.wait_for(|s| *s).await;
                    tokio::time::sleep(timeout).await;
                };
                tokio::select! {
                    _ = serve => {}
                    _ = hard_stop => tracing::warn!("requests still running after {timeout:?}; stopping anyway"),
                }
                if !state.streams.wait_closed(Duration::from_secs(5)).await {
                    tracing::warn!(open = state.streams.open_streams(), "streams still open after shutdown");
                }
                let models = state.models.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for model in models {
                        model.queue.close(timeout);
                    }
                })
                .await;
                if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
                    anyhow::bail!("cannot load the model: {e}");
                }
                tracing::info!("server stopped");
                Ok(())
            })
        };
        Ok(Self { addr, state, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    pub fn queue(&self) -> &InferenceQueue {
        &self.state.default_model.queue
    }

    /// Waits until every model is loaded and warmed up.
    pub async fn wait_ready(&self) -> Result<(), String> {
        for model in &self.state.models {
            model.queue.wait_ready().await.map_err(|e| format!("{}: {e}", model.name))?;
        }
        Ok(())
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop.clone())
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the server has stopped (after [`shutdown`](Self::shutdown), or a load failure).
    pub async fn wait(self) -> anyhow::Result<()> {
        let stop = self.stop;
        let r = self.task.await.map_err(|e| anyhow::anyhow!("server task failed: {e}"))?;
        drop(stop);
        r
    }
}
