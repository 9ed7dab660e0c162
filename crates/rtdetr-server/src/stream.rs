//! `GET /v1/stream`: live detection over a WebSocket.
//!
//! Protocol (see the README's API section):
//! - `?model=NAME` picks one of the served models (default: the server's default one; an
//!   unknown name is 404 `model_not_found` before the upgrade).
//! - Auth before the upgrade, as the rest of the API (`Authorization: Bearer KEY`) or with
//!   `?api_key=KEY` (browsers cannot set headers on a WebSocket): 401 without a valid key,
//!   426 for a plain HTTP request, 503 while loading or draining, 429 above
//!   `--max-streams-per-key` open streams for that key.
//! - The client sends binary messages (JPEG/PNG/WebP/BMP/GIF bytes), numbered 0, 1, 2, ... in
//!   the order received, and may send text messages with options
//!   `{"threshold","classes","max_detections"}` (validated like the HTTP endpoints; each
//!   message replaces the options for the frames that follow; answered
//!   `{"options":{...}}`, or `{"error":{...}}` leaving the previous options in place).
//! - Tracking (`{"track": true}`, with optional `track_thresh`, `match_thresh`,
//!   `track_buffer`, `line`, `track_reset`): the connection keeps one ByteTrack tracker
//!   ([`crate::tracking`]); each answer's detections are those matched to a confirmed
//!   track, each with its `track_id`, and with a `line` the answer carries cumulative
//!   `counts`. The tracker sees every frame number, so frames answered `dropped` (or with
//!   an error) are predicted through. It starts afresh when an options message turns
//!   tracking on, changes `classes` or a tracking option, or says `"track_reset": true`.
//! - Every frame number is answered exactly once, in order: `{"frame","width","height",
//!   "detections","latency_ms"}`, `{"frame","dropped":true}` or `{"frame","error":{...}}`.
//! - Latest frame wins: one frame per connection is in inference at a time, and only the
//!   newest waiting frame is kept; the frames it supersedes are answered `dropped`.
//! - A frame above `--max-body-bytes` is answered with the error `frame_too_large` (the
//!   connection stays open); a message above twice that limit is not read at all: the
//!   connection is closed with code 1009 (message too big).
//! - Answers go through a bounded buffer per connection; while it is full the connection
//!   reads no more frames, and a client that has not read for [`WRITE_TIMEOUT`] is
//!   disconnected, so it never holds up other connections or the inference queue.
//! - On shutdown every stream is closed with code 1001 (going away); so is a stream that
//!   sends no frame or message for `--stream-idle-timeout-secs` (while no frame is in
//!   inference), and one whose peer answers no ping (sent every
//!   `--stream-ping-interval-secs`) within two intervals. A text message that is not UTF-8
//!   closes with 1007, a protocol error with 1002 (RFC 6455).
//!
//! Frames go through the same admission slots and [`pipeline`] (decode, batching queue) as
//! HTTP requests, so streams and HTTP requests share forward passes. This module holds only
//! the WebSocket protocol; no tensor code here.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rtdetr::{DetectOptions, Detection};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::{ApiError, ApiResult};
use crate::input::ImageSource;
use crate::metrics as m;
use crate::pipeline;
use crate::queue::ModelInfo;
use crate::state::{AppState, ServedModel, StreamSlot};
use crate::tracking::{LineCounts, SequenceTracker, TrackSettings, TrackedDetection};
use crate::types::{millis, DetectParams};

/// Answers buffered per connection before the client counts as not reading.
pub const OUT_BUFFER: usize = 64;
/// Longest time one write to the client may block before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers held back (to keep them in frame order) while a frame is in inference; a client
/// that sends more frames than this during one inference is disconnected (1008).
pub const MAX_HELD: usize = 1024;

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let q = uri.query()?;
    url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn query_api_key(uri: &Uri) -> Option<String> {
    query_param(uri, "api_key")
}

/// Upgrade to a stream (see the module docs for the protocol).
#[utoipa::path(
    get,
    path = "/v1/stream",
    tag = "detection",
    description = "WebSocket: send image frames as binary messages (and options as JSON text messages), \
receive one JSON answer per frame: `{\"frame\",\"width\",\"height\",\"detections\",\"latency_ms\"}`, \
`{\"frame\",\"dropped\":true}` when a newer frame superseded it (latest frame wins), or `{\"frame\",\"error\"}`. \
The options message `{\"track\": true}` turns on object tracking (ByteTrack): each detection gets a `track_id`, \
and with `\"line\": [[x1,y1],[x2,y2]]` each answer carries line-crossing `counts`. \
See the README for the full protocol.",
    params(
        ("api_key" = Option<String>, Query, description = "API key, for clients that cannot send the Authorization header (browsers)"),
        ("model" = Option<String>, Query, description = "Served model name (`GET /v1/models`); default: the server's default model"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown model (`model_not_found`)", body = crate::error::ErrorResponse),
        (status = 426, description = "Not a WebSocket upgrade request", body = crate::error::ErrorResponse),
        (status = 429, description = "Too many open streams for this API key; see Retry-After", body = crate::error::ErrorResponse),
        (status = 503, description = "Not ready or shutting down", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match open(state, &headers, &uri, ws) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

fn open(
    state: Arc<AppState>,
    headers: &HeaderMap,
    uri: &Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let query_key = query_api_key(uri);
    let key = state
        .config
        .api_keys
        .identify(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()), query_key.as_deref().map(str::as_bytes))
        .map_err(|msg| {
            metrics::counter!(m::REJECTED, "reason" => "unauthorized").increment(1);
            ApiError::unauthorized(msg)
        })?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "invalid_request_error",
            "websocket_required",
            format!("/v1/stream is a WebSocket endpoint: {}", e.body_text()),
        )
    })?;
    let model = state.find_model(query_param(uri, "model").as_deref())?;
    let info = state.ready(&model)?;
    let limit = state.config.max_streams_per_key;
    let slot = state.streams.try_open(key).ok_or_else(|| {
        metrics::counter!(m::REJECTED, "reason" => "too_many_streams").increment(1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "too_many_streams",
            format!("this API key already has {limit} open streams (--max-streams-per-key); close one first"),
        );
        e.retry_after = Some(1);
        e
    })?;
    let hard_limit = state.config.max_body_bytes.saturating_mul(2);
    Ok(ws
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| run(socket, state, model, info, slot)))
}

/// One frame's answer.
#[derive(Serialize)]
struct FrameAnswer {
    frame: u64,
    width: u32,
    height: u32,
    detections: Vec<Detection>,
    /// Frame received to answer ready (decode, queue, inference), in milliseconds.
    latency_ms: f64,
}

type Outcome = Result<FrameAnswer, ApiError>;

/// One frame's answer with tracking on: only tracked detections, each with its `track_id`.
#[derive(Serialize)]
struct TrackedAnswer {
    frame: u64,
    width: u32,
    height: u32,
    detections: Vec<TrackedDetection>,
    /// Cumulative line crossings per class label, with a `line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    counts: Option<LineCounts>,
    latency_ms: f64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Answer {
    Plain(FrameAnswer),
    Tracked(TrackedAnswer),
}

/// What the frame in flight gives back: its answer, and the connection's tracker (which
/// the frame took with it) when tracking.
type Done = (Result<Answer, ApiError>, Option<TrackState>);

struct InFlight {
    frame: u64,
    fut: Pin<Box<dyn Future<Output = Done> + Send>>,
}

struct PendingFrame {
    frame: u64,
    bytes: Bytes,
    /// What the detector runs with (the tracker's low threshold when tracking).
    options: DetectOptions,
    /// The tracking the frame was received with.
    track: Option<Arc<TrackPlan>>,
    received: Instant,
}

/// Tracking as an options message set it.
struct TrackPlan {
    /// Bumped each time the tracker must start afresh: a frame whose plan has another
    /// generation than the connection's tracker starts a new one.
    generation: u64,
    settings: TrackSettings,
    /// What is returned of the tracked detections (see [`crate::tracking`]).
    threshold: f32,
    max_detections: usize,
}

/// The connection's tracker and the generation of the plan it was made for. Only the
/// frame in flight uses it: it travels with that frame and comes back with its answer.
struct TrackState {
    generation: u64,
    tracker: SequenceTracker,
}

/// Why the connection ends.
enum End {
    /// The client closed or went away.
    Client,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The client does not read: drop the connection without a close frame.
    Abort,
}

struct Conn {
    state: Arc<AppState>,
    model: Arc<ServedModel>,
    info: Arc<ModelInfo>,
    out: mpsc::Sender<Message>,
    next_frame: u64,
    options: DetectOptions,
    /// `Some` while tracking (set by the last options message).
    tracking: Option<Arc<TrackPlan>>,
    track_generation: u64,
    /// The tracker, between frames (the frame in flight holds it meanwhile).
    tracker: Option<TrackState>,
    in_flight: Option<InFlight>,
    pending: Option<PendingFrame>,
    /// Answers for frames newer than the one in inference, sent after it (frame order).
    held: VecDeque<(u64, String)>,
}

fn frame_error(frame: u64, e: &ApiError) -> String {
    json!({"frame": frame, "error": e.body().error}).to_string()
}

impl Conn {
    /// Queues a message for the writer, waiting while its buffer is full (the connection
    /// then reads no more frames); `Err` when the client has not read for [`WRITE_TIMEOUT`].
    async fn send(&mut self, text: String) -> Result<(), End> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.out.send(Message::Text(Utf8Bytes::from(text)))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Client),
            Err(_) => {
                tracing::info!("stream client does not read its answers: disconnecting");
                metrics::counter!(m::REJECTED, "reason" => "stream_slow_reader").increment(1);
                Err(End::Abort)
            }
        }
    }

    /// Sends a frame's answer now, or after the frame in inference (to keep frame order).
    async fn answer(&mut self, frame: u64, text: String) -> Result<(), End> {
        if self.in_flight.is_some() {
            if self.held.len() >= MAX_HELD {
                return Err(End::Close(close_code::POLICY, "too many frames sent during one inference"));
            }
            self.held.push_back((frame, text));
            Ok(())
        } else {
            self.send(text).await
        }
    }

    async fn on_frame(&mut self, bytes: Bytes) -> Result<(), End> {
        let frame = self.next_frame;
        self.next_frame += 1;
        let limit = self.state.config.max_body_bytes;
        if bytes.len() > limit {
            metrics::counter!(m::STREAM_FRAMES, "outcome" => "error").increment(1);
            let e = ApiError::too_large(
                "frame_too_large",
                format!("the frame is {} bytes, above this server's limit of {limit} bytes", bytes.len()),
            );
            return self.answer(frame, frame_error(frame, &e)).await;
        }
        let (options, track) = match &self.tracking {
            Some(plan) => (plan.settings.detect_options(&self.options), Some(plan.clone())),
            None => (self.options.clone(), None),
        };
        let new = PendingFrame { frame, bytes, options, track, received: Instant::now() };
        if self.in_flight.is_none() {
            self.start(new);
            return Ok(());
        }
        if let Some(old) = self.pending.replace(new) {
            metrics::counter!(m::STREAM_FRAMES, "outcome" => "dropped").increment(1);
            self.answer(old.frame, json!({"frame": old.frame, "dropped": true}).to_string()).await?;
        }
        Ok(())
    }

    fn start(&mut self, p: PendingFrame) {
        let fut =
            process(self.state.clone(), self.model.clone(), self.info.clone(), p.bytes, p.options, p.received, p.frame);
        let track = self.take_tracker(p.track);
        let info = self.info.clone();
        let fut = async move { with_tracking(fut.await, track, info).await };
        self.in_flight = Some(InFlight { frame: p.frame, fut: Box::pin(fut) });
    }

    /// The tracker for a frame received with `plan`: the connection's, or a new one when
    /// the plan has started a new generation; `None` (and the tracker forgotten) without
    /// tracking.
    fn take_tracker(&mut self, plan: Option<Arc<TrackPlan>>) -> ApiResult<Option<(Arc<TrackPlan>, TrackState)>> {
        let Some(plan) = plan else {
            self.tracker = None;
            return Ok(None);
        };
        let state = match self.tracker.take() {
            Some(t) if t.generation == plan.generation => t,
            _ => TrackState {
                generation: plan.generation,
                tracker: SequenceTracker::new(&plan.settings)
                    .map_err(|(field, msg)| ApiError::invalid_param(field, msg))?,
            },
        };
        Ok(Some((plan, state)))
    }

    async fn on_done(&mut self, frame: u64, (outcome, tracker): Done) -> Result<(), End> {
        self.in_flight = None;
        self.tracker = tracker;
        let text = match outcome {
            Ok(answer) => {
                metrics::counter!(m::STREAM_FRAMES, "outcome" => "processed").increment(1);
                serde_json::to_string(&answer)
                    .unwrap_or_else(|e| frame_error(frame, &ApiError::internal(e.to_string())))
            }
            Err(e) => {
                metrics::counter!(m::STREAM_FRAMES, "outcome" => "error").increment(1);
                frame_error(frame, &e)
            }
        };
        self.send(text).await?;
        let next = self.pending.take();
        let upto = next.as_ref().map_or(u64::MAX, |p| p.frame);
        while self.held.front().is_some_and(|(n, _)| *n < upto) {
            if let Some((_, text)) = self.held.pop_front() {
                self.send(text).await?;
            }
        }
        if let Some(p) = next {
            self.start(p);
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let msg = match parse_options(text, &self.info.labels) {
            Ok(options) => self.apply_options(options),
            Err(e) => json!({"error": e.body().error}),
        };
        self.send(msg.to_string()).await
    }

    /// Makes `o` the options of the frames that follow and returns the acknowledgement:
    /// `{"options":{...}}`, with `"track_reset"` when tracking (whether the tracker starts
    /// afresh with the next frame: tracking turned on, `classes` or a tracking option
    /// changed, or `"track_reset": true`).
    fn apply_options(&mut self, o: StreamOptions) -> Value {
        let StreamOptions { detect, track, track_reset } = o;
        let classes = detect
            .classes
            .as_ref()
            .map(|ids| ids.iter().filter_map(|&i| self.info.labels.get(i).cloned()).collect::<Vec<_>>());
        let mut options = json!({
            "threshold": detect.threshold,
            "max_detections": detect.max_detections,
            "classes": classes,
            "track": track.is_some(),
        });
        let mut reset = None;
        self.tracking = track.map(|settings| {
            let changed =
                self.tracking.as_ref().is_none_or(|p| p.settings != settings) || self.options.classes != detect.classes;
            if track_reset || changed {
                self.track_generation += 1;
            }
            reset = Some(track_reset || changed);
            let c = &settings.config;
            options["track_thresh"] = json!(c.track_thresh);
            options["match_thresh"] = json!(c.match_thresh);
            options["track_buffer"] = json!(c.track_buffer);
            options["line"] = json!(settings.line);
            Arc::new(TrackPlan {
                generation: self.track_generation,
                settings,
                threshold: detect.threshold,
                max_detections: detect.max_detections,
            })
        });
        self.options = detect;
        let mut ack = json!({ "options": options });
        if let Some(reset) = reset {
            ack["track_reset"] = json!(reset);
        }
        ack
    }
}

/// A parsed options message.
#[derive(Debug, Clone)]
pub(crate) struct StreamOptions {
    /// `threshold`, `max_detections`, `classes`.
    pub detect: DetectOptions,
    /// `Some` with `"track": true`: the tracker's settings and the counting line.
    pub track: Option<TrackSettings>,
    /// `"track_reset": true`: start the tracker afresh even when nothing changed.
    pub track_reset: bool,
}

/// Every field an options message may have.
#[derive(Deserialize)]
struct StreamParams {
    threshold: Option<f32>,
    max_detections: Option<usize>,
    classes: Option<Vec<String>>,
    track: Option<bool>,
    track_thresh: Option<f64>,
    match_thresh: Option<f64>,
    track_buffer: Option<u32>,
    line: Option<[[f64; 2]; 2]>,
    track_reset: Option<bool>,
}

const OPTION_NAMES: [&str; 9] = [
    "threshold",
    "classes",
    "max_detections",
    "track",
    "track_thresh",
    "match_thresh",
    "track_buffer",
    "line",
    "track_reset",
];

/// Parses an options message: a JSON object with only the fields of [`OPTION_NAMES`] (each
/// optional, omitted ones take their defaults; the tracking ones only with `"track": true`).
pub(crate) fn parse_options(text: &str, labels: &[String]) -> ApiResult<StreamOptions> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the options message is not valid JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::bad_request("invalid_json", "the options message must be a JSON object"));
    };
    if let Some(k) = obj.keys().find(|k| !OPTION_NAMES.contains(&k.as_str())) {
        return Err(ApiError::invalid_param(
            k.clone(),
            format!("unknown option {k:?}; the options are {}", OPTION_NAMES.join(", ")),
        ));
    }
    let p: StreamParams = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::invalid_param(path.clone(), format!("{path}: {}", e.inner()))
    })?;
    let detect = DetectParams { threshold: p.threshold, max_detections: p.max_detections, classes: p.classes }
        .to_options(labels)?;
    if p.track != Some(true) {
        let given = [
            ("track_thresh", p.track_thresh.is_some()),
            ("match_thresh", p.match_thresh.is_some()),
            ("track_buffer", p.track_buffer.is_some()),
            ("line", p.line.is_some()),
            ("track_reset", p.track_reset.is_some()),
        ];
        if let Some((name, _)) = given.iter().find(|(_, given)| *given) {
            return Err(ApiError::invalid_param(*name, format!("{name} applies only with \"track\": true")));
        }
        return Ok(StreamOptions { detect, track: None, track_reset: false });
    }
    let mut settings = TrackSettings { line: p.line, ..TrackSettings::default() };
    let c = &mut settings.config;
    c.track_thresh = p.track_thresh.unwrap_or(c.track_thresh);
    c.match_thresh = p.match_thresh.unwrap_or(c.match_thresh);
    c.track_buffer = p.track_buffer.unwrap_or(c.track_buffer);
    settings.validate().map_err(|(field, msg)| ApiError::invalid_param(field, msg))?;
    Ok(StreamOptions { detect, track: Some(settings), track_reset: p.track_reset == Some(true) })
}

/// One frame through the pipeline (one admission slot), under the frame's deadline.
async fn process(
    state: Arc<AppState>,
    model: Arc<ServedModel>,
    info: Arc<ModelInfo>,
    bytes: Bytes,
    options: DetectOptions,
    received: Instant,
    frame: u64,
) -> Outcome {
    let deadline = tokio::time::Instant::from_std(received) + state.config.request_timeout;
    pipeline::within(deadline, async {
        let _permit = state.admit(1)?;
        let out = pipeline::detect(&state, &model, &info, ImageSource::Bytes(bytes), options, deadline, false).await?;
        let latency_ms = millis(received.elapsed());
        Ok(FrameAnswer { frame, width: out.width, height: out.height, detections: out.detections, latency_ms })
    })
    .await
}

async fn in_flight_done(f: &mut Option<InFlight>) -> (u64, Done) {
    match f {
        Some(x) => {
            let done = x.fut.as_mut().await;
            (x.frame, done)
        }
        None => std::future::pending().await,
    }
}

/// Runs a processed frame through the tracker (on the blocking pool: association costs
/// grow with the number of boxes and tracks), giving the tracker back with the answer.
async fn with_tracking(
    outcome: Outcome,
    track: ApiResult<Option<(Arc<TrackPlan>, TrackState)>>,
    info: Arc<ModelInfo>,
) -> Done {
    let (plan, mut state) = match track {
        Ok(None) => return (outcome.map(Answer::Plain), None),
        Ok(Some(t)) => t,
        Err(e) => return (Err(e), None),
    };
    let answer = match outcome {
        Ok(a) => a,
        // The tracker predicts through this frame when the next one comes.
        Err(e) => return (Err(e), Some(state)),
    };
    let tracked = tokio::task::spawn_blocking(move || {
        let FrameAnswer { frame, width, height, detections, latency_ms } = answer;
        let labels = &info.labels;
        let result = state.tracker.update(frame, detections, plan.threshold, plan.max_detections, labels);
        let answer = result.map(|t| TrackedAnswer {
            frame,
            width,
            height,
            detections: t.detections,
            counts: t.counts,
            latency_ms,
        });
        (answer, state)
    })
    .await;
    match tracked {
        Ok((Ok(answer), state)) => (Ok(Answer::Tracked(answer)), Some(state)),
        Ok((Err(e), state)) => (Err(ApiError::internal(format!("tracking failed: {e}"))), Some(state)),
        Err(_) => (Err(ApiError::internal("the tracking task failed")), None),
    }
}

/// Sends queued answers; gives up (dropping the connection) on a write blocked for
/// [`WRITE_TIMEOUT`] or an error. Closes the socket when the queue is closed.
async fn write_loop(mut sink: SplitSink<WebSocket, Message>, mut rx: mpsc::Receiver<Message>) {
    while let Some(msg) = rx.recv().await {
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::info!("stream client does not read its answers: disconnecting");
                metrics::counter!(m::REJECTED, "reason" => "stream_slow_reader").increment(1);
                return;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}

/// A read error: 1009 for a message above the WebSocket limit, else a protocol error.
fn read_error_close(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => {
            End::Close(close_code::SIZE, "message too big: above twice the server's --max-body-bytes")
        }
        Some(tungstenite::Error::Protocol(_)) => End::Close(close_code::PROTOCOL, "WebSocket protocol error"),
        Some(tungstenite::Error::Utf8(_)) => End::Close(close_code::INVALID, "a text message is not valid UTF-8"),
        _ => End::Client,
    }
}

async fn run(socket: WebSocket, state: Arc<AppState>, model: Arc<ServedModel>, info: Arc<ModelInfo>, slot: StreamSlot) {
    let (sink, mut incoming) = socket.split();
    let (out, out_rx) = mpsc::channel::<Message>(OUT_BUFFER);
    let writer = tokio::spawn(write_loop(sink, out_rx));
    let mut shutdown = state.streams.shutdown_signal();
    tracing::info!(open = state.streams.open_streams(), "stream opened");
    let mut conn = Conn {
        state: state.clone(),
        model,
        info,
        out,
        next_frame: 0,
        options: DetectOptions::default(),
        tracking: None,
        track_generation: 0,
        tracker: None,
        in_flight: None,
        pending: None,
        held: VecDeque::new(),
    };
    let (idle_timeout, ping_every) = (state.config.stream_idle_timeout, state.config.stream_ping_interval);
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Frames and options messages count as activity; any frame (pongs too) shows the peer
    // is alive.
    let (mut last_message, mut last_heard) = (Instant::now(), Instant::now());
    let end = loop {
        let step = tokio::select! {
            _ = pings.tick() => {
                if conn.in_flight.is_none() && last_message.elapsed() >= idle_timeout {
                    metrics::counter!(m::REJECTED, "reason" => "stream_idle").increment(1);
                    Err(End::Close(close_code::AWAY, "idle: no frame or message within --stream-idle-timeout-secs"))
                } else if last_heard.elapsed() >= ping_every * 2 {
                    Err(End::Close(close_code::AWAY, "no answer to pings"))
                } else {
                    conn.out.try_send(Message::Ping(Bytes::from_static(b"rtdetr"))).map_err(|_| End::Client)
                }
            }
            _ = async {
                // (the `Ref` it returns must not live across the handlers' awaits)
                let _ = shutdown.wait_for(|s| *s).await;
            } => Err(End::Close(close_code::AWAY, "the server is shutting down")),
            _ = conn.out.closed() => Err(End::Client),
            (frame, done) = in_flight_done(&mut conn.in_flight) => conn.on_done(frame, done).await,
            msg = incoming.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    (last_message, last_heard) = (Instant::now(), Instant::now());
                    conn.on_frame(bytes).await
                }
                Some(Ok(Message::Text(text))) => {
                    (last_message, last_heard) = (Instant::now(), Instant::now());
                    conn.on_text(text.as_str()).await
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    last_heard = Instant::now();
                    Ok(())
                }
                Some(Ok(Message::Close(_))) | None => Err(End::Client),
                Some(Err(e)) => Err(read_error_close(e)),
            },
        };
        if let Err(end) = step {
            break end;
        }
    };
    // Frames not started are not run; a frame in inference is skipped by the batcher.
    conn.in_flight = None;
    conn.pending = None;
    conn.tracker = None;
    let frames = conn.next_frame;
    match end {
        End::Abort => writer.abort(),
        End::Client | End::Close(..) => {
            if let End::Close(code, reason) = end {
                let _ = conn.out.try_send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) })));
            }
            drop(conn);
            if tokio::time::timeout(WRITE_TIMEOUT, writer).await.is_err() {
                tracing::debug!("stream writer did not finish");
            }
        }
    }
    drop(incoming);
    drop(slot);
    tracing::info!(frames, "stream closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_messages() {
        let labels: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
        let o = parse_options(r#"{"threshold":0.3,"classes":["dog"],"max_detections":5}"#, &labels).unwrap();
        assert_eq!((o.detect.threshold, o.detect.max_detections, o.detect.classes), (0.3, 5, Some(vec![1])));
        assert!(o.track.is_none() && !o.track_reset);
        let o = parse_options("{}", &labels).unwrap();
        assert_eq!((o.detect.threshold, o.detect.max_detections, o.detect.classes), (0.5, 100, None));
        assert!(o.track.is_none());
        let o = parse_options(r#"{"track":false}"#, &labels).unwrap();
        assert!(o.track.is_none());
        // Tracking: the defaults, then every tracking option.
        let o = parse_options(r#"{"track":true}"#, &labels).unwrap();
        assert_eq!(o.track, Some(TrackSettings::default()));
        assert!(!o.track_reset);
        let o = parse_options(
            r#"{"track":true,"track_thresh":0.6,"match_thresh":0.8,"track_buffer":60,"line":[[0,10.5],[100,10.5]],"track_reset":true,"threshold":0.2}"#,
            &labels,
        )
        .unwrap();
        let t = o.track.unwrap();
        assert_eq!((t.config.track_thresh, t.config.match_thresh, t.config.track_buffer), (0.6, 0.8, 60));
        assert_eq!(t.line, Some([[0.0, 10.5], [100.0, 10.5]]));
        assert_eq!((o.track_reset, o.detect.threshold), (true, 0.2));
        let o = parse_options(r#"{"track":true,"line":null}"#, &labels).unwrap();
        assert_eq!(o.track.unwrap().line, None);

        let err = |t: &str| {
            let e = parse_options(t, &labels).unwrap_err();
            (e.code.unwrap_or(""), e.param.unwrap_or_default())
        };
        let invalid = |param: &str| ("invalid_parameter", param.to_string());
        assert_eq!(err("not json").0, "invalid_json");
        assert_eq!(err("[1]").0, "invalid_json");
        assert_eq!(err(r#"{"threshold":2}"#), invalid("threshold"));
        assert_eq!(err(r#"{"threshold":"x"}"#), invalid("threshold"));
        assert_eq!(err(r#"{"classes":["bird"]}"#), invalid("classes"));
        assert_eq!(err(r#"{"treshold":0.1}"#), invalid("treshold"));
        assert_eq!(err(r#"{"max_detections":0}"#), invalid("max_detections"));
        assert_eq!(err(r#"{"track":"yes"}"#), invalid("track"));
        assert_eq!(err(r#"{"track":true,"track_thresh":1.5}"#), invalid("track_thresh"));
        assert_eq!(err(r#"{"track":true,"track_thresh":-0.1}"#), invalid("track_thresh"));
        assert_eq!(err(r#"{"track":true,"match_thresh":2}"#), invalid("match_thresh"));
        assert_eq!(err(r#"{"track":true,"track_buffer":0}"#), invalid("track_buffer"));
        assert_eq!(err(r#"{"track":true,"track_buffer":301}"#), invalid("track_buffer"));
        assert_eq!(err(r#"{"track":true,"track_buffer":-1}"#), invalid("track_buffer"));
        assert_eq!(err(r#"{"track":true,"track_buffer":1.5}"#), invalid("track_buffer"));
        assert_eq!(err(r#"{"track":true,"line":[[1,2],[1,2]]}"#), invalid("line"));
        assert_eq!(err(r#"{"track":true,"line":[[1,2]]}"#), invalid("line"));
        assert_eq!(err(r#"{"track":true,"line":[[1,2],[3,4],[5,6]]}"#), invalid("line"));
        assert_eq!(err(r#"{"track":true,"line":[[1,2],[3,"x"]]}"#), invalid("line[1][1]"));
        assert_eq!(err(r#"{"track":true,"line":"0,0,1,1"}"#), invalid("line"));
        assert_eq!(err(r#"{"track":true,"track_reset":1}"#), invalid("track_reset"));
        // Tracking options without tracking.
        assert_eq!(err(r#"{"line":[[0,0],[1,1]]}"#), invalid("line"));
        assert_eq!(err(r#"{"track":false,"track_thresh":0.5}"#), invalid("track_thresh"));
        assert_eq!(err(r#"{"track_reset":true}"#), invalid("track_reset"));
        assert_eq!(err(r#"{"track_buffer":10}"#), invalid("track_buffer"));
    }

    #[test]
    fn query_key() {
        let uri: Uri = "/v1/stream?x=1&api_key=sk%2Ba%20b".parse().unwrap();
        assert_eq!(query_api_key(&uri).as_deref(), Some("sk+a b"));
        assert_eq!(query_api_key(&"/v1/stream".parse().unwrap()), None);
    }
}
