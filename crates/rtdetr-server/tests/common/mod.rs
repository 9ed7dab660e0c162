//! Helpers: a server on 127.0.0.1:0 with a fixture model, an HTTP client, fixture images,
//! and a loopback file server for URL inputs.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use rtdetr::{DetectOptions, Detection, Detector, LoadOptions};
use rtdetr_server::{RunningServer, ServerConfig};
use serde_json::Value;

pub const MODEL: &str = "tiny";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rtdetr/tests/fixtures").join(name)
}

pub fn image_path(name: &str) -> PathBuf {
    fixture("images").join(name)
}

pub fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(image_path(name)).expect("fixture image")
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn data_url(name: &str) -> String {
    let mime = if name.ends_with(".jpg") { "image/jpeg" } else { "image/png" };
    format!("data:{mime};base64,{}", b64(&image_bytes(name)))
}

pub fn config() -> ServerConfig {
    ServerConfig {
        served_model_name: MODEL.into(),
        max_batch_delay: Duration::from_millis(2),
        request_timeout: Duration::from_secs(20),
        ..ServerConfig::default()
    }
}

pub struct TestServer {
    pub server: RunningServer,
    pub base: String,
    pub client: reqwest::Client,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

pub fn loader() -> rtdetr_server::ModelLoader {
    let dir = fixture("tiny-bottleneck");
    Box::new(move || Ok(Detector::from_dir(&dir, &LoadOptions::default())?))
}

/// Starts a server and waits until it is ready.
pub async fn start(cfg: ServerConfig) -> TestServer {
    let t = start_with(cfg, loader()).await;
    t.server.wait_ready().await.expect("model ready");
    t
}

pub async fn start_with(cfg: ServerConfig, loader: rtdetr_server::ModelLoader) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = RunningServer::start(cfg, loader, listener).await.expect("start");
    let base = format!("http://{}", server.local_addr());
    TestServer { server, base, client: client() }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self.client.post(self.url(path)).json(body).send().await.expect("request");
        split(r).await
    }

    pub async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let r = self.client.get(self.url(path)).send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap_or_default())
    }
}

pub async fn split(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

/// Asserts OpenAI's error shape and returns `error.code`.
pub fn error_code(v: &Value) -> String {
    let e = v.get("error").unwrap_or_else(|| panic!("not an OpenAI error: {v}"));
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e["code"].as_str().unwrap_or("").to_string()
}

pub fn detections(v: &Value) -> Vec<Detection> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("detections {v}: {e}"))
}

/// The engine's one-by-one result for an image file.
pub fn reference(name: &str, opts: &DetectOptions) -> (u32, u32, Vec<Detection>) {
    let det = Detector::from_dir(&fixture("tiny-bottleneck"), &LoadOptions::default()).expect("model");
    let img = rtdetr::load_image(&image_path(name)).expect("image");
    let d = det.detect(&img, opts).expect("detect");
    (img.width(), img.height(), d)
}

/// Equal to one-by-one inference (the engine's batch tolerance: scores 1e-5, boxes 1e-3 px).
pub fn assert_same(what: &str, got: &[Detection], want: &[Detection]) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.class_id, &g.label), (w.class_id, &w.label), "{what}");
        assert!((g.score - w.score).abs() <= 1e-5, "{what}: score {} vs {}", g.score, w.score);
        for (a, b) in [
            (g.bbox.xmin, w.bbox.xmin),
            (g.bbox.ymin, w.bbox.ymin),
            (g.bbox.xmax, w.bbox.xmax),
            (g.bbox.ymax, w.bbox.ymax),
        ] {
            assert!((a - b).abs() <= 1e-3, "{what}: box {:?} vs {:?}", g.bbox, w.bbox);
        }
    }
}

pub fn chat_body(urls: &[String], extra: Value) -> Value {
    let mut parts = vec![serde_json::json!({"type": "text", "text": "What objects are in these images?"})];
    for u in urls {
        parts.push(serde_json::json!({"type": "image_url", "image_url": {"url": u, "detail": "auto"}}));
    }
    let mut body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": parts}],
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

pub fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----rtdetr-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, filename, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A loopback HTTP server for URL inputs; counts every request it receives.
pub struct FileServer {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
}

impl FileServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn reply(status: StatusCode, headers: &[(header::HeaderName, String)], body: Body) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(k, v);
    }
    b.body(body).expect("response")
}

/// Routes: `/photo.png`, `/photo_exif.jpg` (images), `/page` (text/html), `/big` (chunked
/// image/png body of `big_bytes`), `/missing` (404), `/to?u=URL` (302 to URL),
/// `/relative` (302 to /photo.png), `/loop` (302 to itself).
pub async fn file_server(big_bytes: usize) -> FileServer {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/photo.png",
            get(|| async {
                reply(StatusCode::OK, &[(header::CONTENT_TYPE, "image/png".into())], image_bytes("photo.png").into())
            }),
        )
        .route(
            "/photo_exif.jpg",
            get(|| async {
                reply(
                    StatusCode::OK,
                    &[(header::CONTENT_TYPE, "image/jpeg".into())],
                    image_bytes("photo_exif.jpg").into(),
                )
            }),
        )
        .route(
            "/page",
            get(|| async {
                reply(StatusCode::OK, &[(header::CONTENT_TYPE, "text/html".into())], "<html></html>".into())
            }),
        )
        .route(
            "/big",
            get(move || async move {
                let chunk = vec![0u8; 8192];
                let n = big_bytes.div_ceil(8192);
                let stream = futures_util::stream::iter(
                    (0..n).map(move |_| Ok::<_, std::io::Error>(axum::body::Bytes::from(chunk.clone()))),
                );
                reply(StatusCode::OK, &[(header::CONTENT_TYPE, "image/png".into())], Body::from_stream(stream))
            }),
        )
        .route("/missing", get(|| async { reply(StatusCode::NOT_FOUND, &[], Body::empty()) }))
        .route(
            "/to",
            get(|q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                let to = q.get("u").cloned().unwrap_or_default();
                reply(StatusCode::FOUND, &[(header::LOCATION, to)], Body::empty())
            }),
        )
        .route(
            "/relative",
            get(|| async { reply(StatusCode::FOUND, &[(header::LOCATION, "/photo.png".into())], Body::empty()) }),
        )
        .route(
            "/loop",
            get(|| async { reply(StatusCode::FOUND, &[(header::LOCATION, "/loop".into())], Body::empty()) }),
        )
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                next.run(req).await
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FileServer { port, hits }
}
