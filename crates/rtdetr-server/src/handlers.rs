//! HTTP route handlers: they parse and validate requests and shape responses; the images go
//! through the [`pipeline`] (shared with the WebSocket stream). No tensor code here.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Json, Response};
use futures_util::StreamExt;
use rtdetr::Detection;
use serde::de::DeserializeOwned;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::config::MAX_IMAGES_PER_REQUEST;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::input::{annotated_jpeg_data_url, parse_image_ref, ImageSource};
use crate::metrics as m;
use crate::pipeline::{self, KeptImage};
use crate::state::{unix_now, AppState, MemoryBudget, ServedModel};
use crate::types::*;

#[derive(Debug)]
enum BodyKind {
    Json,
    Multipart,
    Other(String),
}

fn body_kind(headers: &HeaderMap) -> BodyKind {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return BodyKind::Json;
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim().to_string();
    if essence == "application/json" || essence.ends_with("+json") {
        BodyKind::Json
    } else if essence == "multipart/form-data" {
        BodyKind::Multipart
    } else {
        BodyKind::Other(essence)
    }
}

fn unsupported_body(found: &str, expected: &str) -> ApiError {
    ApiError::unsupported_media(
        "unsupported_media_type",
        format!("unsupported Content-Type {found:?}; send {expected}"),
    )
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::too_large(
        "request_too_large",
        format!("the request body is larger than this server's limit of {limit} bytes"),
    )
}

/// After refusing a body as too large, read and discard a bounded remainder so that the
/// client receives the 413 instead of a connection reset (a close with unread data).
const DRAIN_CAP: usize = 1024 * 1024;

async fn drain(mut body: axum::body::BodyDataStream, mut budget: usize) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async move {
        while let Some(Ok(chunk)) = body.next().await {
            if chunk.len() >= budget {
                break;
            }
            budget -= chunk.len();
        }
    })
    .await;
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
}

/// Refuses (413) a request whose `Content-Length` is above `limit`, without keeping it.
async fn refuse_declared_too_large(headers: &HeaderMap, body: Body, limit: usize) -> ApiError {
    if declared_length(headers).is_some_and(|n| n <= DRAIN_CAP as u64) {
        drain(body.into_data_stream(), DRAIN_CAP).await;
    }
    body_too_large(limit)
}

/// A request body in memory, with its charge against the server's body memory.
struct ReceivedBody {
    bytes: Bytes,
    _charge: Option<OwnedSemaphorePermit>,
}

/// Reads the whole body: 413 above `--max-body-bytes` (from `Content-Length` or while
/// reading), 408 past `--body-read-timeout-secs`, 429 `server_busy` when the bodies being
/// received already hold `--max-body-memory-mb` (charged as the bytes arrive, so slow
/// uploads hold only what they sent).
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<ReceivedBody> {
    let limit = state.config.max_body_bytes;
    if declared_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(refuse_declared_too_large(headers, body, limit).await);
    }
    let timeout = state.config.body_read_timeout;
    let read = async {
        let mut body = body.into_data_stream();
        let mut buf = Vec::new();
        let mut charge: Option<OwnedSemaphorePermit> = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|_| ApiError::bad_request("invalid_body", "could not read the request body"))?;
            if buf.len() + chunk.len() > limit {
                drain(body, DRAIN_CAP).await;
                return Err(body_too_large(limit));
            }
            let held = charge.as_ref().map_or(0, MemoryBudget::charged);
            let total = (buf.len() + chunk.len()) as u64;
            if total > held {
                let more = state.body_memory.try_charge(total - held).ok_or_else(|| {
                    metrics::counter!(m::REJECTED, "reason" => "body_memory").increment(1);
                    ApiError::busy(
                        "server_busy",
                        "the server is receiving too many request bodies at once; retry shortly",
                    )
                })?;
                match &mut charge {
                    Some(c) => c.merge(more),
                    None => charge = Some(more),
                }
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(ReceivedBody { bytes: Bytes::from(buf), _charge: charge })
    };
    tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
        metrics::counter!(m::REJECTED, "reason" => "body_timeout").increment(1);
        Err(ApiError::body_timeout(format!("the request body was not received within {} s", timeout.as_secs())))
    })
}

/// JSON syntax errors are 400; a field of the wrong type or value is 422 naming the field.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("invalid_json", "the request body must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        if path == "." {
            ApiError::invalid_param(msg.split('`').nth(1).unwrap_or("body").to_string(), msg)
        } else {
            ApiError::invalid_param(path.clone(), format!("{path}: {msg}"))
        }
    })
}

/// Runs `f` under the request's deadline.
async fn with_deadline<F>(state: &AppState, f: impl FnOnce(Instant) -> F) -> Response
where
    F: std::future::Future<Output = ApiResult<Response>>,
{
    let deadline = Instant::now() + state.config.request_timeout;
    pipeline::within(deadline, f(deadline)).await.unwrap_or_else(IntoResponse::into_response)
}

/// Draws the detections on the blocking pool (`return_image`), on the kept image itself,
/// whose memory charge is returned when the drawing ends.
async fn annotate(kept: KeptImage, detections: &[Detection]) -> ApiResult<String> {
    let detections = detections.to_vec();
    tokio::task::spawn_blocking(move || {
        let KeptImage { image, charge } = kept;
        let url = annotated_jpeg_data_url(image, &detections);
        drop(charge);
        url
    })
    .await
    .map_err(|_| ApiError::internal("the drawing task failed"))?
}

/// The error answers that `/v1/detections` and `/v1/chat/completions` share, written once
/// for their OpenAPI descriptions (each route adds its own 200, 400 and 404).
/// Documentation only: never constructed.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum InferenceErrors {
    #[response(status = 401, description = "Missing or wrong API key")]
    Unauthorized(ErrorResponse),
    #[response(status = 408, description = "The request body was not received in time (`body_timeout`)")]
    BodyTimeout(ErrorResponse),
    #[response(status = 413, description = "Body, download, image size or decode memory too large")]
    TooLarge(ErrorResponse),
    #[response(status = 415, description = "Unsupported Content-Type or non-image media")]
    UnsupportedMedia(ErrorResponse),
    #[response(status = 422, description = "Invalid parameter")]
    InvalidParameter(ErrorResponse),
    #[response(
        status = 429,
        description = "Queue full (`queue_full`) or too many bodies being received (`server_busy`); see Retry-After"
    )]
    QueueFull(ErrorResponse),
    #[response(status = 503, description = "Not ready or shutting down (no work done: safe to retry elsewhere)")]
    Unavailable(ErrorResponse),
    #[response(status = 504, description = "The request's deadline passed (`timeout`)")]
    Timeout(ErrorResponse),
}

/// Detect objects in one image (JSON or multipart).
#[utoipa::path(
    post,
    path = "/v1/detections",
    tag = "detection",
    request_body(
        description = "JSON with `image` (data URL, http(s) URL or raw base64), or a multipart form with a file field `image`",
        content(
            (DetectionRequest = "application/json"),
            (DetectionForm = "multipart/form-data")
        )
    ),
    responses(
        (status = 200, description = "Detections", body = DetectionResponse),
        (status = 400, description = "Bad request: invalid JSON, base64, image or URL", body = ErrorResponse),
        (status = 404, description = "Unknown model", body = ErrorResponse),
        InferenceErrors,
    ),
    security(("bearer" = []))
)]
pub async fn detections(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let st = state.clone();
    with_deadline(&state, move |deadline| async move { detections_inner(&st, req, deadline).await }).await
}

async fn detections_inner(state: &AppState, req: Request, deadline: Instant) -> ApiResult<Response> {
    let start = Instant::now();
    state.serving()?;
    let kind = body_kind(req.headers());
    if let BodyKind::Other(ct) = &kind {
        return Err(unsupported_body(ct, "application/json or multipart/form-data"));
    }
    let (parts, body) = req.into_parts();
    let received = read_body(state, &parts.headers, body).await?;
    let (source, params, model, return_image) = match kind {
        BodyKind::Multipart => read_multipart(parts, received.bytes.clone(), state.config.max_body_bytes).await?,
        _ => {
            let body: DetectionRequest = parse_json(&received.bytes)?;
            let source = parse_image_ref(&body.image, true, "image")?;
            (source, body.params(), body.model.clone(), body.return_image)
        }
    };
    drop(received);
    let model = state.find_model(model.as_deref())?;
    let info = state.ready(&model)?;
    let options = params.to_options(&info.labels)?;
    // Admission after the body: a slow upload holds no slot.
    let _permit = state.admit(1)?;
    let mut out = pipeline::detect(state, &model, &info, source, options, deadline, return_image).await?;
    let annotated_image = match out.image.take() {
        Some(image) => Some(annotate(image, &out.detections).await?),
        None => None,
    };
    out.timings.total = millis(start.elapsed());
    Ok(Json(DetectionResponse {
        model: model.name.clone(),
        width: out.width,
        height: out.height,
        detections: out.detections,
        timings_ms: out.timings,
        annotated_image,
    })
    .into_response())
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        body_too_large(limit)
    } else {
        ApiError::bad_request("invalid_multipart", format!("invalid multipart body: {}", e.body_text()))
    }
}

fn form_value<T: std::str::FromStr>(name: &str, text: &str) -> ApiResult<T> {
    text.trim().parse::<T>().map_err(|_| ApiError::invalid_param(name, format!("{name}: invalid value {text:?}")))
}

/// Parses a multipart form received whole by [`read_body`].
pub(crate) async fn read_multipart(
    parts: axum::http::request::Parts,
    bytes: Bytes,
    limit: usize,
) -> ApiResult<(ImageSource, DetectParams, Option<String>, bool)> {
    let req = Request::from_parts(parts, Body::from(bytes));
    let mut form = Multipart::from_request(req, &()).await.map_err(|e| {
        ApiError::bad_request("invalid_multipart", format!("invalid multipart body: {}", e.body_text()))
    })?;
    let mut image = None;
    let mut params = DetectParams::default();
    let mut model = None;
    let mut return_image = false;
    let mut seen: Vec<&'static str> = Vec::new();
    while let Some(field) = form.next_field().await.map_err(|e| multipart_error(e, limit))? {
        let name = field.name().unwrap_or("").to_string();
        // One image per request, each option once (`classes` may repeat): a second value
        // would otherwise silently win.
        let key = match name.as_str() {
            "image" | "file" => Some("image"),
            "threshold" => Some("threshold"),
            "max_detections" => Some("max_detections"),
            "return_image" => Some("return_image"),
            "model" => Some("model"),
            _ => None,
        };
        if let Some(key) = key {
            if seen.contains(&key) {
                return Err(ApiError::bad_request(
                    "duplicate_field",
                    format!("the form has more than one `{key}` field; send one"),
                )
                .with_param(key));
            }
            seen.push(key);
        }
        match name.as_str() {
            "image" | "file" => {
                let is_file = field.file_name().is_some();
                let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                let text = if is_file { None } else { std::str::from_utf8(&bytes).ok() };
                image = Some(match text {
                    // A text field holding a URL or base64 rather than a file.
                    Some(t) if t.trim_start().starts_with("data:") || t.contains("://") => {
                        parse_image_ref(t, true, "image")?
                    }
                    _ => ImageSource::Bytes(bytes),
                });
            }
            "threshold" | "max_detections" | "classes" | "return_image" | "model" => {
                let text = field.text().await.map_err(|e| multipart_error(e, limit))?;
                match name.as_str() {
                    "threshold" => params.threshold = Some(form_value(&name, &text)?),
                    "max_detections" => params.max_detections = Some(form_value(&name, &text)?),
                    "classes" => params
                        .classes
                        .get_or_insert_with(Vec::new)
                        .extend(text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)),
                    "return_image" => return_image = form_value(&name, &text.to_ascii_lowercase())?,
                    _ => model = Some(text.trim().to_string()),
                }
            }
            _ => {} // unknown fields are ignored
        }
    }
    let image = image.ok_or_else(|| {
        ApiError::bad_request("missing_image", "the multipart form has no `image` file field").with_param("image")
    })?;
    Ok((image, params, model, return_image))
}

/// Collects the images of a chat request, in order; text parts are ignored.
pub(crate) fn collect_images(messages: &[ChatMessage]) -> ApiResult<Vec<ImageSource>> {
    let mut images = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        match &msg.content {
            serde_json::Value::Null | serde_json::Value::String(_) => {}
            serde_json::Value::Array(parts) => {
                for (j, part) in parts.iter().enumerate() {
                    let param = format!("messages[{i}].content[{j}]");
                    let kind = part.get("type").and_then(|t| t.as_str()).ok_or_else(|| {
                        ApiError::bad_request("invalid_content_part", format!("{param}: content part without a type"))
                            .with_param(format!("{param}.type"))
                    })?;
                    match kind {
                        "text" | "input_text" => {}
                        "image_url" | "input_image" => {
                            let url = match part.get("image_url") {
                                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                                Some(serde_json::Value::Object(o)) => o.get("url").and_then(|u| u.as_str()),
                                _ => None,
                            }
                            .ok_or_else(|| {
                                ApiError::bad_request(
                                    "invalid_content_part",
                                    format!("{param}: image_url part needs image_url.url"),
                                )
                                .with_param(format!("{param}.image_url.url"))
                            })?;
                            images.push(parse_image_ref(url, false, &format!("{param}.image_url.url"))?);
                        }
                        other => {
                            return Err(ApiError::bad_request(
                                "unsupported_content_part",
                                format!(
                                "{param}: content parts of type {other:?} are not supported (use image_url or text)"
                            ),
                            )
                            .with_param(format!("{param}.type")))
                        }
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].content"),
                    "message content must be a string or a list of content parts",
                ))
            }
        }
    }
    Ok(images)
}

/// OpenAI chat completions: detect objects in the message's images.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body(content = ChatCompletionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A chat.completion whose message.content is a JSON string of DetectionContent; with `stream: true`, Server-Sent Events of chat.completion.chunk objects ending with `data: [DONE]`",
            content(
                (ChatCompletionResponse = "application/json"),
                (ChatCompletionChunk = "text/event-stream")
            )
        ),
        (status = 400, description = "Bad request: no image, invalid JSON, base64, image or URL", body = ErrorResponse),
        (status = 404, description = "Unknown model (`model_not_found`)", body = ErrorResponse),
        InferenceErrors,
    ),
    security(("bearer" = []))
)]
pub async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let st = state.clone();
    with_deadline(&state, move |deadline| async move { chat_inner(&st, req, deadline).await }).await
}

async fn chat_inner(state: &AppState, req: Request, deadline: Instant) -> ApiResult<Response> {
    state.serving()?;
    match body_kind(req.headers()) {
        BodyKind::Json => {}
        BodyKind::Multipart => return Err(unsupported_body("multipart/form-data", "application/json")),
        BodyKind::Other(ct) => return Err(unsupported_body(&ct, "application/json")),
    }
    let (parts, body) = req.into_parts();
    let received = read_body(state, &parts.headers, body).await?;
    let body: ChatCompletionRequest = parse_json(&received.bytes)?;
    drop(received);
    let model = state.find_model(Some(&body.model))?;
    let info = state.ready(&model)?;
    let images = collect_images(&body.messages)?;
    if images.is_empty() {
        return Err(ApiError::bad_request(
            "no_image",
            "the request has no image: add a content part {\"type\":\"image_url\",\"image_url\":{\"url\":...}}",
        )
        .with_param("messages"));
    }
    let most = MAX_IMAGES_PER_REQUEST.min(state.config.max_queue);
    if images.len() > most {
        return Err(ApiError::bad_request(
            "too_many_images",
            format!("{} images in one request; this server takes at most {most}", images.len()),
        )
        .with_param("messages"));
    }
    let options = body.params().to_options(&info.labels)?;
    // Admission after the body: a slow upload holds no slot.
    let _permits = state.admit(images.len())?;
    let n_images = images.len() as u64;
    let outcomes = futures_util::future::try_join_all(
        images.into_iter().map(|src| pipeline::detect(state, &model, &info, src, options.clone(), deadline, false)),
    )
    .await?;
    let detections: u64 = outcomes.iter().map(|o| o.detections.len() as u64).sum();
    let content = DetectionContent {
        results: outcomes
            .into_iter()
            .map(|o| ImageResult { width: o.width, height: o.height, detections: o.detections })
            .collect(),
    };
    let content = serde_json::to_string(&content).map_err(|e| ApiError::internal(e.to_string()))?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    let model = model.name.clone();
    let usage = Usage { prompt_tokens: n_images, completion_tokens: detections, total_tokens: n_images + detections };
    if body.stream.unwrap_or(false) {
        let include_usage = body.stream_options.as_ref().is_some_and(|o| o.include_usage);
        return Ok(stream_response(id, created, model, content, include_usage.then_some(usage)));
    }
    Ok(Json(ChatCompletionResponse {
        id,
        object: "chat.completion".into(),
        created,
        model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage { role: "assistant".into(), content, refusal: None },
            logprobs: None,
            finish_reason: "stop".into(),
        }],
        usage,
        system_fingerprint: None,
    })
    .into_response())
}

/// The same content as Server-Sent Events: role, content, stop, [usage], `[DONE]`.
fn stream_response(id: String, created: u64, model: String, content: String, usage: Option<Usage>) -> Response {
    let chunk = |delta: Delta, finish: Option<&str>| ChatCompletionChunk {
        id: id.clone(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.clone(),
        system_fingerprint: None,
        choices: vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason: finish.map(str::to_string) }],
        usage: None,
    };
    let mut chunks = vec![
        chunk(Delta { role: Some("assistant".into()), content: Some(String::new()) }, None),
        chunk(Delta { role: None, content: Some(content) }, None),
        chunk(Delta::default(), Some("stop")),
    ];
    if let Some(usage) = usage {
        let mut last = chunk(Delta::default(), None);
        last.choices.clear();
        last.usage = Some(usage);
        chunks.push(last);
    }
    let mut events: Vec<Event> =
        chunks.iter().map(|c| Event::default().data(serde_json::to_string(c).unwrap_or_default())).collect();
    events.push(Event::default().data("[DONE]"));
    let stream = futures_util::stream::iter(events.into_iter().map(Ok::<Event, Infallible>));
    let mut resp = Sse::new(stream).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn model_entry(state: &AppState, model: &ServedModel) -> Model {
    Model { id: model.name.clone(), object: "model".into(), created: state.created, owned_by: "rtdetr".into() }
}

/// OpenAI model list: every served model, the default one first.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, body = ModelList),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse)
    ),
    security(("bearer" = []))
)]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList { object: "list".into(), data: state.models.iter().map(|m| model_entry(&state, m)).collect() })
}

/// One model by id.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "openai",
    params(("model" = String, Path, description = "Served model name")),
    responses(
        (status = 200, body = Model),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "Unknown model", body = ErrorResponse)
    ),
    security(("bearer" = []))
)]
pub async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Model>> {
    let model = state.find_model(Some(&id))?;
    Ok(Json(model_entry(&state, &model)))
}

/// 200 once every model is loaded and warmed up; 503 while loading or shutting down.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "Loading, failed, or shutting down", body = ErrorResponse)
    )
)]
pub async fn health(State(state): State<Arc<AppState>>) -> ApiResult<Json<Health>> {
    for model in &state.models {
        state.ready(model)?;
    }
    Ok(Json(Health {
        status: "ok".into(),
        model: state.default_model.name.clone(),
        models: state.models.iter().map(|m| m.name.clone()).collect(),
    }))
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub async fn metrics_endpoint(State(state): State<Arc<AppState>>) -> Response {
    for model in &state.models {
        metrics::gauge!(m::QUEUE_DEPTH, "model" => model.name.clone()).set(model.queue.depth() as f64);
    }
    state.record_in_flight();
    let body = m::render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Unknown routes: 404 in OpenAI's error shape.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found("not_found", format!("unknown route: {method} {}", uri.path()))
}
