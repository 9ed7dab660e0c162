//! Prometheus metrics (`GET /metrics`) through the `metrics` facade.
//!
//! - `rtdetr_http_requests_total{route,status}` counter
//! - `rtdetr_http_request_duration_seconds{route}` histogram (total time per request)
//! - `rtdetr_queue_depth` gauge (images waiting for the inference thread)
//! - `rtdetr_in_flight_images` gauge (images admitted: decoding, queued or in inference)
//! - `rtdetr_batch_size` histogram (images per forward pass)
//! - `rtdetr_inference_duration_seconds` histogram (one forward pass + post-processing)
//! - `rtdetr_queue_wait_seconds` histogram (per image, enqueue to batch start)
//! - `rtdetr_decode_duration_seconds` histogram (per image: base64/URL bytes to preprocessed pixels)
//! - `rtdetr_connections` gauge (open HTTP connections, WebSockets included)
//! - `rtdetr_stream_connections` gauge (open `/v1/stream` WebSockets)
//! - `rtdetr_stream_frames_total{outcome}` counter (`processed`, `dropped`, `error`)
//! - `rtdetr_images_total`, `rtdetr_detections_total`, `rtdetr_rejected_total{reason}` counters

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "rtdetr_http_requests_total";
pub const REQUEST_DURATION: &str = "rtdetr_http_request_duration_seconds";
pub const QUEUE_DEPTH: &str = "rtdetr_queue_depth";
pub const IN_FLIGHT: &str = "rtdetr_in_flight_images";
pub const BATCH_SIZE: &str = "rtdetr_batch_size";
pub const INFERENCE_DURATION: &str = "rtdetr_inference_duration_seconds";
pub const QUEUE_WAIT: &str = "rtdetr_queue_wait_seconds";
pub const DECODE_DURATION: &str = "rtdetr_decode_duration_seconds";
pub const IMAGES: &str = "rtdetr_images_total";
pub const DETECTIONS: &str = "rtdetr_detections_total";
pub const REJECTED: &str = "rtdetr_rejected_total";
pub const CONNECTIONS: &str = "rtdetr_connections";
pub const STREAM_CONNECTIONS: &str = "rtdetr_stream_connections";
pub const STREAM_FRAMES: &str = "rtdetr_stream_frames_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];

fn builder() -> PrometheusBuilder {
    let b = PrometheusBuilder::new();
    let b = b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS).unwrap_or_else(|_| {
        // Only fails on an empty bucket list.
        PrometheusBuilder::new()
    });
    b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Installs the process-wide recorder once (several servers in one process share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| match builder().install_recorder() {
        Ok(h) => {
            describe();
            h
        }
        Err(e) => {
            // Another recorder owns the process: /metrics will be empty, serving still works.
            tracing::warn!("metrics recorder not installed: {e}");
            builder().build_recorder().handle()
        }
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, "HTTP requests by route and status");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Total time per HTTP request");
    describe_gauge!(QUEUE_DEPTH, "Images waiting for the inference thread");
    describe_gauge!(IN_FLIGHT, "Images admitted (decoding, queued or in inference)");
    describe_histogram!(BATCH_SIZE, "Images per forward pass");
    describe_histogram!(INFERENCE_DURATION, Unit::Seconds, "Forward pass and post-processing per batch");
    describe_histogram!(QUEUE_WAIT, Unit::Seconds, "Time an image waited in the queue");
    describe_histogram!(DECODE_DURATION, Unit::Seconds, "Fetch/decode/preprocess time per image");
    describe_counter!(IMAGES, "Images processed");
    describe_counter!(DETECTIONS, "Detections returned");
    describe_counter!(REJECTED, "Requests rejected before inference, by reason");
    describe_gauge!(STREAM_CONNECTIONS, "Open /v1/stream WebSocket connections");
    describe_counter!(STREAM_FRAMES, "Frames received on /v1/stream, by outcome (processed, dropped, error)");
}

/// Renders the Prometheus text format.
pub fn render() -> String {
    handle().render()
}

/// Keeps histogram memory bounded when /metrics is scraped rarely.
pub fn run_upkeep() {
    handle().run_upkeep();
}
