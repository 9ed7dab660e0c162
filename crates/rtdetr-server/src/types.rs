//! Request and response bodies: OpenAI chat completions and the native detection API.

use rtdetr::{DetectOptions, Detection};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// Detection options shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct DetectParams {
    /// Keep detections with a score above this (0..1, default 0.5).
    #[schema(minimum = 0.0, maximum = 1.0, example = 0.5)]
    pub threshold: Option<f32>,
    /// At most this many detections per image (1..=10000, default 100).
    #[schema(minimum = 1, maximum = 10000, example = 100)]
    pub max_detections: Option<usize>,
    /// Keep only these classes (label names of the model).
    #[schema(min_items = 1)]
    pub classes: Option<Vec<String>>,
}

pub const MAX_DETECTIONS_LIMIT: usize = 10_000;

impl DetectParams {
    /// Validates the values (422 naming the parameter) and maps class names to ids.
    pub fn to_options(&self, labels: &[String]) -> Result<DetectOptions, ApiError> {
        let threshold = self.threshold.unwrap_or(0.5);
        if !threshold.is_finite() || !(0.0..=1.0).contains(&threshold) {
            return Err(ApiError::invalid_param("threshold", format!("threshold must be in [0, 1], got {threshold}")));
        }
        let max_detections = self.max_detections.unwrap_or(100);
        if max_detections == 0 || max_detections > MAX_DETECTIONS_LIMIT {
            return Err(ApiError::invalid_param(
                "max_detections",
                format!("max_detections must be in 1..={MAX_DETECTIONS_LIMIT}, got {max_detections}"),
            ));
        }
        let classes = match &self.classes {
            None => None,
            Some(names) if names.is_empty() => {
                return Err(ApiError::invalid_param("classes", "classes must not be empty (omit it to keep all)"))
            }
            // More names than the model has classes is never needed (and a long list would
            // cost time on the inference path).
            Some(names) if names.len() > labels.len().max(1) => {
                return Err(ApiError::invalid_param(
                    "classes",
                    format!("classes lists {} names; this model has {} classes", names.len(), labels.len()),
                ))
            }
            Some(names) => {
                let mut ids = Vec::with_capacity(names.len());
                for n in names {
                    let id = labels.iter().position(|l| l == n).ok_or_else(|| {
                        ApiError::invalid_param(
                            "classes",
                            format!("unknown class {n:?}; this model knows: {}", labels.join(", ")),
                        )
                    })?;
                    ids.push(id);
                }
                ids.sort_unstable();
                ids.dedup();
                Some(ids)
            }
        };
        Ok(DetectOptions { threshold, max_detections, classes })
    }
}

/// `POST /v1/detections` JSON body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct DetectionRequest {
    /// A data URL (`data:image/png;base64,...`), an `http(s)://` URL, or raw base64.
    #[schema(min_length = 1)]
    pub image: String,
    /// Optional: must equal the served model name when given.
    pub model: Option<String>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub threshold: Option<f32>,
    #[schema(minimum = 1, maximum = 10000)]
    pub max_detections: Option<usize>,
    #[schema(min_items = 1)]
    pub classes: Option<Vec<String>>,
    /// Also return the image with the boxes drawn, as a JPEG data URL (`annotated_image`).
    #[serde(default)]
    pub return_image: bool,
}

impl DetectionRequest {
    pub fn params(&self) -> DetectParams {
        DetectParams { threshold: self.threshold, max_detections: self.max_detections, classes: self.classes.clone() }
    }
}

/// `POST /v1/detections` multipart form (documentation only).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct DetectionForm {
    /// The image file.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
    #[schema(nullable = false, minimum = 0.0, maximum = 1.0)]
    pub threshold: Option<f32>,
    #[schema(nullable = false, minimum = 1, maximum = 10000)]
    pub max_detections: Option<usize>,
    /// Comma-separated label names (or the field repeated).
    #[schema(nullable = false, min_length = 1)]
    pub classes: Option<String>,
    #[schema(nullable = false)]
    pub return_image: Option<bool>,
    /// Must equal the served model name when given.
    #[schema(nullable = false)]
    pub model: Option<String>,
}

/// Milliseconds spent per stage for one image.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    /// Downloading the image (URL inputs only).
    pub fetch: f64,
    /// Base64 and image decoding plus preprocessing (resize), off the inference thread.
    pub decode: f64,
    /// Waiting in the inference queue.
    pub queue: f64,
    /// The forward pass and post-processing of the batch the image ran in.
    pub inference: f64,
    /// The whole request.
    pub total: f64,
    /// How many images shared the forward pass.
    pub batch_size: usize,
}

/// A duration in milliseconds, to the microsecond (`timings_ms`, `latency_ms`).
pub fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `POST /v1/detections` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DetectionResponse {
    pub model: String,
    pub width: u32,
    pub height: u32,
    #[schema(value_type = Vec<schema::Detection>)]
    pub detections: Vec<Detection>,
    pub timings_ms: Timings,
    /// The image with the boxes drawn, `data:image/jpeg;base64,...` (with `return_image`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotated_image: Option<String>,
}

/// One image's result inside a chat completion's `message.content`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageResult {
    pub width: u32,
    pub height: u32,
    #[schema(value_type = Vec<schema::Detection>)]
    pub detections: Vec<Detection>,
}

/// What `choices[0].message.content` holds, as a JSON string.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DetectionContent {
    /// One result per image, in request order.
    pub results: Vec<ImageResult>,
}

/// OpenAI chat-completions request. Other OpenAI fields (temperature, max_tokens, ...) are
/// accepted and ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// The served model name (see `GET /v1/models`).
    pub model: String,
    /// Messages; images are content parts `{"type":"image_url","image_url":{"url":...}}`,
    /// text parts are ignored.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<StreamOptions>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub threshold: Option<f32>,
    #[schema(minimum = 1, maximum = 10000)]
    pub max_detections: Option<usize>,
    #[schema(min_items = 1)]
    pub classes: Option<Vec<String>>,
}

impl ChatCompletionRequest {
    pub fn params(&self) -> DetectParams {
        DetectParams { threshold: self.threshold, max_detections: self.max_detections, classes: self.classes.clone() }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub content: serde_json::Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Images in the request.
    pub prompt_tokens: u64,
    /// Detections returned.
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    /// JSON string: `{"results":[{"width","height","detections":[...]}]}`.
    pub content: String,
    #[schema(value_type = Option<String>)]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<serde_json::Value>,
    /// Always `stop`.
    pub finish_reason: String,
}

/// `chat.completion` object.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[schema(value_type = Option<String>)]
    pub system_fingerprint: Option<String>,
}

/// `chat.completion.chunk` object (one SSE event of a stream).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    #[schema(value_type = Option<String>)]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models` entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// Always `model`.
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

/// `GET /v1/models` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Model>,
}

/// `GET /health` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The default model (for requests without `model`).
    pub model: String,
    /// Every served model, the default first.
    pub models: Vec<String>,
}

/// Schemas of engine types, for the OpenAPI document.
pub mod schema {
    use utoipa::ToSchema;

    /// A box in original-image pixels.
    #[allow(dead_code)]
    #[derive(ToSchema)]
    pub struct BoundingBox {
        pub xmin: f32,
        pub ymin: f32,
        pub xmax: f32,
        pub ymax: f32,
    }

    /// One detected object (same shape as `rtdetr detect --json`).
    #[allow(dead_code)]
    #[derive(ToSchema)]
    pub struct Detection {
        pub label: String,
        pub class_id: usize,
        pub score: f32,
        #[schema(rename = "box")]
        pub bbox: BoundingBox,
    }
}
