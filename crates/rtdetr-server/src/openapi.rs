//! `GET /openapi.json` (generated from the handlers by utoipa) and `GET /docs`, a
//! self-contained page that renders it (no CDN, works offline).

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorResponse};
use crate::handlers;
use crate::types::*;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer KEY` (when the server has API keys)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "api_key",
                "`?api_key=KEY`, for WebSocket clients that cannot set headers (browsers); `/v1/stream` only",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rtdetr API",
        description = "RT-DETR object detection, OpenAI-compatible. Send images as base64 data URLs or http(s) \
URLs and receive detections as JSON. Errors use OpenAI's shape `{\"error\":{\"message\",\"type\",\"param\",\"code\"}}`. \
Every response carries an `x-request-id` header."
    ),
    paths(
        handlers::chat_completions,
        handlers::detections,
        crate::stream::stream,
        handlers::list_models,
        handlers::get_model,
        handlers::health,
        handlers::metrics_endpoint,
    ),
    components(schemas(
        ChatCompletionRequest,
        ChatCompletionResponse,
        ChatCompletionChunk,
        ChatChoice,
        ChunkChoice,
        Delta,
        AssistantMessage,
        Usage,
        DetectionContent,
        ImageResult,
        DetectionRequest,
        DetectionForm,
        DetectionResponse,
        Timings,
        DetectParams,
        Model,
        ModelList,
        Health,
        ErrorResponse,
        ErrorBody,
        schema::Detection,
        schema::BoundingBox,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "openai", description = "OpenAI-compatible endpoints"),
        (name = "detection", description = "The native detection endpoint"),
        (name = "operations", description = "Health and metrics")
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as JSON.
pub fn openapi_string() -> String {
    let Ok(mut doc) = serde_json::to_value(ApiDoc::openapi()) else {
        return "{}".into();
    };
    // Server-Sent Events: each event's `data` is a chat.completion.chunk as JSON text, or
    // `[DONE]` (the shape OpenAPI 3.2 gives `text/event-stream`; utoipa cannot write it).
    if let Some(sse) = doc.pointer_mut("/paths/~1v1~1chat~1completions/post/responses/200/content/text~1event-stream") {
        sse["schema"] = serde_json::json!({
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"type": "string"},
                "data": {"anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"$ref": "#/components/schemas/ChatCompletionChunk"}
                    }
                ]}
            }
        });
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
}

pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_string()).into_response()
}

pub async fn docs_page() -> Html<&'static str> {
    Html(DOCS_HTML)
}

const DOCS_HTML: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rtdetr API</title>
<style>
 body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #1d2330; }
 h1 { margin-bottom: .2rem } .muted { color: #666 }
 .op { border: 1px solid #d7dbe3; border-radius: 6px; margin: 1rem 0; padding: .6rem 1rem; }
 .method { display: inline-block; min-width: 4rem; font-weight: 700; text-transform: uppercase; }
 .get { color: #0a7d32 } .post { color: #1f5fbf }
 code, pre { font-family: ui-monospace, monospace; font-size: 13px; }
 pre { background: #f5f6f8; padding: .6rem; overflow-x: auto; border-radius: 4px; }
 details summary { cursor: pointer; }
 table { border-collapse: collapse; } td { padding: 0 .8rem .2rem 0; vertical-align: top; }
</style>
</head>
<body>
<h1>rtdetr API</h1>
<p class="muted">Rendered from <a href="/openapi.json">/openapi.json</a>.</p>
<div id="intro"></div>
<div id="ops">Loading…</div>
<h2>Schemas</h2>
<div id="schemas"></div>
<script>
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function refName(s) {
  if (!s) return "";
  if (s.$ref) return s.$ref.split("/").pop();
  if (s.type === "array" && s.items) return refName(s.items) + "[]";
  return s.type || "";
}
fetch("/openapi.json").then(r => r.json()).then(doc => {
  document.getElementById("intro").appendChild(el("p", {}, doc.info.description || ""));
  const ops = document.getElementById("ops");
  ops.textContent = "";
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const box = el("div", { class: "op" });
      const h = el("div");
      h.appendChild(el("span", { class: "method " + method }, method));
      h.appendChild(el("code", {}, path));
      if (op.security) h.appendChild(el("span", { class: "muted" }, "  (Bearer key)"));
      box.appendChild(h);
      if (op.description || op.summary) box.appendChild(el("p", {}, op.summary || op.description));
      if (op.requestBody) {
        const t = el("table");
        for (const [ct, c] of Object.entries(op.requestBody.content || {})) {
          const tr = el("tr");
          tr.appendChild(el("td", {}, "body"));
          tr.appendChild(el("td", {}, ct));
          tr.appendChild(el("td", {}, refName(c.schema)));
          t.appendChild(tr);
        }
        box.appendChild(t);
      }
      const t = el("table");
      for (const [status, r] of Object.entries(op.responses || {})) {
        const tr = el("tr");
        tr.appendChild(el("td", {}, status));
        const types = Object.entries(r.content || {}).map(([ct, c]) => ct + " " + refName(c.schema)).join(", ");
        tr.appendChild(el("td", {}, (r.description || "") + (types ? " — " + types : "")));
        t.appendChild(tr);
      }
      box.appendChild(t);
      ops.appendChild(box);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, s] of Object.entries((doc.components || {}).schemas || {})) {
    const d = el("details");
    d.appendChild(el("summary", {}, name));
    d.appendChild(el("pre", {}, JSON.stringify(s, null, 2)));
    schemas.appendChild(d);
  }
}).catch(e => { document.getElementById("ops").textContent = "cannot load /openapi.json: " + e; });
</script>
</body>
</html>
"##;
