//! `GET /`: the web page (plain HTML/JS/CSS embedded in the binary, no CDN): drop or pick
//! an image and see the boxes drawn on a canvas, threshold slider and class filter applied
//! client-side, API key kept in the browser's local storage; webcam mode streams JPEG frames
//! over `/v1/stream` (one in flight) and draws the answers live with FPS and latency.
//! Tested in a real browser by `tests/browser` (chromium + playwright-core, run by CI).

use std::sync::Arc;

use axum::response::Html;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

static INDEX: &str = include_str!("../static/index.html");

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/", get(index))
}

async fn index() -> Html<&'static str> {
    Html(INDEX)
}
