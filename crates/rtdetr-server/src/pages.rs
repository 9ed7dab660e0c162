//! `GET /`: a placeholder page until the web UI lands. Replace [`routes`] to swap it.

use std::sync::Arc;

use axum::response::Html;
use axum::routing::get;
use axum::Router;

use crate::server::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/", get(index))
}

async fn index() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rtdetr</title></head>
<body style="font: 15px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto">
<h1>rtdetr</h1>
<p>RT-DETR object detection with an OpenAI-compatible API.</p>
<ul>
<li><a href="/docs">API documentation</a> (<a href="/openapi.json">OpenAPI JSON</a>)</li>
<li><code>POST /v1/chat/completions</code>, <code>POST /v1/detections</code>, <code>GET /v1/models</code></li>
<li><a href="/health">/health</a>, <a href="/metrics">/metrics</a></li>
</ul>
</body></html>
"#,
    )
}
