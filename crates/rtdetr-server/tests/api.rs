//! `rtdetr serve` end to end: a real server on 127.0.0.1:0 with the tiny fixture model,
//! exercised over HTTP. Every endpoint, status code and limit of the API.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use rtdetr::DetectOptions;
use rtdetr_server::{AddressPolicy, ApiKeys};
use serde_json::{json, Value};

fn opts(threshold: f32) -> DetectOptions {
    DetectOptions { threshold, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_endpoints_and_request_ids() {
    let t = start(config()).await;

    let (s, _, body) = t.get("/health").await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");

    let (s, _, body) = t.get("/v1/models").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert!(v["data"][0]["created"].is_u64() && v["data"][0]["owned_by"].is_string());
    let (s, _, _) = t.get(&format!("/v1/models/{MODEL}")).await;
    assert_eq!(s, 200);
    let (s, _, body) = t.get("/v1/models/gpt-4o").await;
    assert_eq!(s, 404);
    assert_eq!(error_code(&serde_json::from_str(&body).unwrap()), "model_not_found");

    let (s, h, body) = t.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("application/json"));
    let doc: Value = serde_json::from_str(&body).unwrap();
    for p in ["/v1/chat/completions", "/v1/detections", "/v1/models", "/health", "/metrics"] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    for s in ["Detection", "DetectionResponse", "ChatCompletionResponse", "ErrorResponse"] {
        assert!(doc["components"]["schemas"].get(s).is_some(), "openapi lacks schema {s}");
    }
    assert!(doc["components"]["securitySchemes"].get("bearer").is_some());

    let (s, h, body) = t.get("/docs").await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(body.contains("/openapi.json") && !body.contains("cdn") && !body.contains("https://"));
    // The web page works offline: everything inline, no external URL.
    let (s, _, body) = t.get("/").await;
    assert_eq!(s, 200);
    assert!(body.contains("/docs") && body.contains("/v1/detections") && body.contains("<canvas"));
    assert!(!body.contains("https://") && !body.contains("http://"));

    // Unknown route and wrong method: 404/405 in OpenAI's shape.
    let (s, h, body) = t.get("/v1/nope").await;
    assert_eq!(s, 404);
    assert_eq!(error_code(&serde_json::from_str(&body).unwrap()), "not_found");
    assert!(h.get("x-request-id").is_some());
    let (s, _, body) = t.get("/v1/detections").await;
    assert_eq!(s, 405);
    assert_eq!(error_code(&serde_json::from_str(&body).unwrap()), "method_not_allowed");

    // Request ids: echoed when sent, generated otherwise.
    let r = t.client.get(t.url("/health")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = t.client.get(t.url("/health")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    let r = t.client.get(t.url("/health")).header("x-request-id", "bad id\twith spaces").send().await.unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id\twith spaces");

    // Metrics after some traffic.
    let (s, _, _) = t.post_json("/v1/detections", &json!({"image": data_url("photo.png")})).await;
    assert_eq!(s, 200);
    let (s, h, text) = t.get("/metrics").await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/plain"));
    for name in [
        "rtdetr_http_requests_total",
        "rtdetr_http_request_duration_seconds_bucket",
        "rtdetr_queue_depth",
        "rtdetr_in_flight_images",
        "rtdetr_batch_size_bucket",
        "rtdetr_inference_duration_seconds_bucket",
        "rtdetr_decode_duration_seconds_bucket",
        "rtdetr_queue_wait_seconds_bucket",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    assert!(text.contains("route=\"/v1/detections\"") && text.contains("status=\"200\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_endpoint_matches_engine() {
    let t = start(config()).await;
    for name in ["photo.png", "photo_exif.jpg", "gray.png", "rgba.png"] {
        let (w, h, want) = reference(name, &opts(0.3));
        // Data URL.
        let (s, _, v) = t.post_json("/v1/detections", &json!({"image": data_url(name), "threshold": 0.3})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["model"], MODEL);
        assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(w as u64), Some(h as u64)), "{name}");
        assert_same(name, &detections(&v["detections"]), &want);
        for k in ["decode", "queue", "inference", "total"] {
            assert!(v["timings_ms"][k].as_f64().is_some_and(|x| x >= 0.0), "{v}");
        }
        assert!(v.get("annotated_image").is_none());
        // Raw base64.
        let raw = b64(&image_bytes(name));
        let (s, _, v) = t.post_json("/v1/detections", &json!({"image": raw, "threshold": 0.3, "model": MODEL})).await;
        assert_eq!(s, 200, "{v}");
        assert_same(name, &detections(&v["detections"]), &want);
        // Multipart upload.
        let bytes = image_bytes(name);
        let (ct, body) = multipart(&[("threshold", None, b"0.3"), ("image", Some(name), &bytes)]);
        let r = t.client.post(t.url("/v1/detections")).header("content-type", ct).body(body).send().await.unwrap();
        let (s, _, v) = split(r).await;
        assert_eq!(s, 200, "{v}");
        assert_same(name, &detections(&v["detections"]), &want);
    }

    // Options: class filter, cap, defaults.
    let (_, _, all) = reference("photo.png", &opts(0.0));
    let class = all[0].label.clone();
    let (s, _, v) = t
        .post_json(
            "/v1/detections",
            &json!({"image": data_url("photo.png"), "threshold": 0.0, "max_detections": 3, "classes": [class]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let d = detections(&v["detections"]);
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|x| x.label == class));
    let (_, _, want) = reference("photo.png", &DetectOptions::default());
    let (_, _, v) = t.post_json("/v1/detections", &json!({"image": data_url("photo.png")})).await;
    assert_same("defaults", &detections(&v["detections"]), &want);

    // Multipart with classes and return_image.
    let bytes = image_bytes("photo.png");
    let (ct, body) = multipart(&[
        ("image", Some("photo.png"), &bytes),
        ("threshold", None, b"0"),
        ("max_detections", None, b"2"),
        ("classes", None, class.as_bytes()),
        ("return_image", None, b"true"),
    ]);
    let r = t.client.post(t.url("/v1/detections")).header("content-type", ct).body(body).send().await.unwrap();
    let (s, _, v) = split(r).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(detections(&v["detections"]).len(), 2);

    // return_image: an annotated JPEG of the original size.
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": data_url("photo.png"), "return_image": true})).await;
    assert_eq!(s, 200);
    let url = v["annotated_image"].as_str().expect("annotated_image");
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(url.strip_prefix("data:image/jpeg;base64,").expect("jpeg data URL"))
        .unwrap();
    let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((img.width(), img.height()), (150, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_and_streaming() {
    let t = start(config()).await;
    let names = ["photo.png", "photo_exif.jpg", "gray.png"];
    let urls: Vec<String> = names.iter().map(|n| data_url(n)).collect();
    let (s, h, v) = t.post_json("/v1/chat/completions", &chat_body(&urls, json!({"threshold": 0.3}))).await;
    assert_eq!(s, 200, "{v}");
    assert!(h.get("x-request-id").is_some());
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].is_u64());
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let content_str = v["choices"][0]["message"]["content"].as_str().expect("content is a string").to_string();
    let content: Value = serde_json::from_str(&content_str).unwrap();
    let results = content["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let mut total = 0;
    for (name, r) in names.iter().zip(results) {
        let (w, h, want) = reference(name, &opts(0.3));
        assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(w as u64), Some(h as u64)));
        assert_same(name, &detections(&r["detections"]), &want);
        total += want.len() as u64;
    }
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], total);
    assert_eq!(v["usage"]["total_tokens"], 3 + total);

    // Plain string content and other OpenAI fields are accepted and ignored.
    let mut body = chat_body(&urls[..1], json!({"temperature": 0.2, "max_tokens": 50, "n": 1}));
    body["messages"].as_array_mut().unwrap().insert(0, json!({"role": "system", "content": "You detect objects."}));
    let (s, _, v) = t.post_json("/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{v}");

    // Streaming: the same content as chat.completion.chunk events, then [DONE].
    let body = chat_body(&urls, json!({"threshold": 0.3, "stream": true, "stream_options": {"include_usage": true}}));
    let r = t.client.post(t.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.trim().is_empty()).collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")), "{text}");
    assert_eq!(*events.last().unwrap(), "data: [DONE]", "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.trim_start_matches("data: ")).unwrap())
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == MODEL));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    let streamed: Value = serde_json::from_str(&streamed).unwrap();
    // Same images, but the batch they share may differ from the first request's, so compare within the
    // engine's batch tolerance rather than byte for byte.
    let streamed = streamed["results"].as_array().unwrap();
    assert_eq!(streamed.len(), results.len());
    for ((name, s), r) in names.iter().zip(streamed).zip(results) {
        assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (r["width"].as_u64(), r["height"].as_u64()));
        assert_same(name, &detections(&s["detections"]), &detections(&r["detections"]));
    }
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().map(Vec::len), Some(0));
    assert_eq!(usage["usage"]["prompt_tokens"], 3);

    // Errors.
    let mut wrong = chat_body(&urls[..1], json!({}));
    wrong["model"] = json!("gpt-4o");
    let (s, _, v) = t.post_json("/v1/chat/completions", &wrong).await;
    assert_eq!(s, 404);
    assert_eq!(error_code(&v), "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&[], json!({}))).await;
    assert_eq!(s, 400);
    assert_eq!(error_code(&v), "no_image");
    let (s, _, v) = t.post_json("/v1/chat/completions", &json!({"model": MODEL})).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["param"], "messages");
    let bad_part = json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]});
    let (s, _, v) = t.post_json("/v1/chat/completions", &bad_part).await;
    assert_eq!(s, 400);
    assert_eq!(error_code(&v), "unsupported_content_part");
    // Raw base64 is not an image_url.
    let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&[b64(&image_bytes("gray.png"))], json!({}))).await;
    assert_eq!(s, 400);
    assert_eq!(error_code(&v), "invalid_image_url");
    // Non-ASCII at byte 5 of the URL once panicked (a 500).
    for url in ["data\u{e9}:image/png;base64,AAAA", "\u{e9}\u{e9}\u{e9}\u{e9}"] {
        let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&[url.to_string()], json!({}))).await;
        assert_eq!((s, error_code(&v).as_str()), (400, "invalid_image_url"), "{url}: {v}");
    }
    let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&urls[..1], json!({"threshold": -1}))).await;
    assert_eq!(s, 422);
    assert_eq!(v["error"]["param"], "threshold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_statuses() {
    let t = start(config()).await;
    let post_raw = |ct: &'static str, body: Vec<u8>| {
        let req = t.client.post(t.url("/v1/detections")).header("content-type", ct).body(body);
        async move { split(req.send().await.unwrap()).await }
    };
    // 400: invalid JSON, invalid base64, not an image, unsupported format, truncated image.
    let (s, _, v) = post_raw("application/json", b"{not json".to_vec()).await;
    assert_eq!((s, error_code(&v).as_str()), (400, "invalid_json"));
    let cases: Vec<(String, u16, &str)> = vec![
        ("data:image/png;base64,@@@@".into(), 400, "invalid_base64"),
        ("!!!not-base64!!!".into(), 400, "invalid_base64"),
        (
            format!("data:image/png;base64,{}", b64(b"hello, this is text, not an image")),
            400,
            "unsupported_image_format",
        ),
        (b64(b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00"), 400, "unsupported_image_format"),
        (b64(&image_bytes("photo.png")[..300]), 400, "invalid_image"),
        (b64(&image_bytes("photo_exif.jpg")[..2000]), 400, "invalid_image"),
        // 415: a data URL of another media type.
        (format!("data:text/plain;base64,{}", b64(b"hello")), 415, "unsupported_media_type"),
        ("ftp://127.0.0.1/a.png".into(), 400, "invalid_url"),
        // Non-ASCII at byte 5 (inside a character) once panicked: a 500.
        ("abcd\u{e9}".into(), 400, "invalid_base64"),
        ("\u{e9}\u{e9}\u{e9}\u{e9}".into(), 400, "invalid_base64"),
    ];
    for (image, status, code) in cases {
        let (s, _, v) = t.post_json("/v1/detections", &json!({ "image": image })).await;
        assert_eq!((s, error_code(&v).as_str()), (status, code), "{image:.60}: {v}");
    }
    // 415: request bodies that are neither JSON nor multipart.
    let (s, _, v) = post_raw("text/plain", b"hello".to_vec()).await;
    assert_eq!((s, error_code(&v).as_str()), (415, "unsupported_media_type"));
    let r = t.client.post(t.url("/v1/chat/completions")).header("content-type", "application/x-www-form-urlencoded");
    let (s, _, v) = split(r.body("a=b").send().await.unwrap()).await;
    assert_eq!((s, error_code(&v).as_str()), (415, "unsupported_media_type"));
    // 422: parameters.
    let img = data_url("gray.png");
    for (body, param) in [
        (json!({"image": img, "threshold": 1.5}), "threshold"),
        (json!({"image": img, "threshold": "high"}), "threshold"),
        (json!({"image": img, "max_detections": 0}), "max_detections"),
        (json!({"image": img, "max_detections": -3}), "max_detections"),
        (json!({"image": img, "classes": ["dog"]}), "classes"),
        (json!({"image": img, "classes": []}), "classes"),
        (json!({"threshold": 0.5}), "image"),
        (json!({"image": 42}), "image"),
    ] {
        let (s, _, v) = t.post_json("/v1/detections", &body).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    let (ct, body) = multipart(&[("image", Some("g.png"), &image_bytes("gray.png")), ("threshold", None, b"abc")]);
    let (s, _, v) = post_raw(Box::leak(ct.into_boxed_str()), body).await;
    assert_eq!((s, v["error"]["param"].as_str()), (422, Some("threshold")));
    let (ct, body) = multipart(&[("threshold", None, b"0.5")]);
    let (s, _, v) = post_raw(Box::leak(ct.into_boxed_str()), body).await;
    assert_eq!((s, error_code(&v).as_str()), (400, "missing_image"));
    // 404: model.
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": img, "model": "other"})).await;
    assert_eq!((s, error_code(&v).as_str()), (404, "model_not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits() {
    let mut cfg = config();
    cfg.max_body_bytes = 40 * 1024;
    cfg.max_image_pixels = 150 * 200 - 1; // photo.png is 150x200
    let t = start(cfg).await;
    // Pixel limit from the header, before decoding.
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": data_url("photo_exif.jpg")})).await;
    assert_eq!(s, 200, "{v}"); // 180x120 = 21600 pixels: fine
    let bytes = image_bytes("photo.png"); // 57 KB: over the body limit as base64 or upload
    let small_png_bomb = {
        // A 4000x4000 PNG of zeros compresses to ~16 KB: refused from its header.
        use image::ImageEncoder;
        let mut out = Vec::new();
        let enc = image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::NoFilter,
        );
        enc.write_image(&vec![0u8; 4000 * 4000], 4000, 4000, image::ExtendedColorType::L8).unwrap();
        out
    };
    assert!(small_png_bomb.len() < 30 * 1024);
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": b64(&small_png_bomb)})).await;
    assert_eq!((s, error_code(&v).as_str()), (413, "image_too_large"), "{v}");
    // Body limit: JSON with Content-Length, chunked JSON, multipart.
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": b64(&bytes)})).await;
    assert_eq!((s, error_code(&v).as_str()), (413, "request_too_large"));
    let payload = serde_json::to_vec(&json!({"image": b64(&bytes)})).unwrap();
    let stream = futures_util::stream::iter(
        payload.chunks(4096).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    let r = t
        .client
        .post(t.url("/v1/detections"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let (s, _, v) = split(r).await;
    assert_eq!((s, error_code(&v).as_str()), (413, "request_too_large"), "chunked: {v}");
    let (ct, body) = multipart(&[("image", Some("photo.png"), &bytes)]);
    let r = t.client.post(t.url("/v1/detections")).header("content-type", ct).body(body).send().await.unwrap();
    let (s, _, v) = split(r).await;
    assert_eq!((s, error_code(&v).as_str()), (413, "request_too_large"));
    let urls = vec![data_url("photo.png")];
    let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&urls, json!({}))).await;
    assert_eq!((s, error_code(&v).as_str()), (413, "request_too_large"));
    // Too many images in one request.
    let urls: Vec<String> = (0..17).map(|_| "https://example.invalid/a.png".to_string()).collect();
    let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&urls, json!({}))).await;
    assert_eq!((s, error_code(&v).as_str()), (400, "too_many_images"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys() {
    let mut cfg = config();
    cfg.api_keys = ApiKeys::new(["key-one", "key-two,key-three"]);
    let t = start(cfg).await;
    let body = json!({"image": data_url("gray.png")});
    for (auth, want) in [
        (None, 401),
        (Some("Bearer wrong"), 401),
        (Some("Bearer key-one-but-longer"), 401),
        (Some("key-two"), 401),
        (Some("Basic a2V5LW9uZTo="), 401),
        (Some("Bearer key-two"), 200),
        (Some("Bearer key-three"), 200),
    ] {
        let mut req = t.client.post(t.url("/v1/detections")).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (s, h, v) = split(req.send().await.unwrap()).await;
        assert_eq!(s, want, "{auth:?}: {v}");
        if want == 401 {
            assert_eq!(error_code(&v), "invalid_api_key");
            assert_eq!(v["error"]["type"], "authentication_error");
            assert_eq!(h["www-authenticate"], "Bearer");
            assert!(!v.to_string().contains("key-one"));
        }
    }
    for path in ["/v1/models", "/v1/chat/completions"] {
        let r = t.client.get(t.url(path)).send().await.unwrap();
        assert!(r.status() == 401 || r.status() == 405, "{path}: {}", r.status());
    }
    let r = t.client.get(t.url("/v1/models")).bearer_auth("key-one").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Health, metrics and docs stay open.
    for path in ["/health", "/metrics", "/openapi.json", "/docs"] {
        assert_eq!(t.get(path).await.0, 200, "{path}");
    }
}

/// Concurrent requests are batched; every result equals one-by-one inference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_results_equal_single() {
    let mut cfg = config();
    cfg.max_batch_size = 4;
    cfg.max_batch_delay = Duration::from_millis(300);
    let t = Arc::new(start(cfg).await);
    let cases = [
        (
            "photo.png",
            json!({"threshold": 0.0, "max_detections": 50}),
            DetectOptions { threshold: 0.0, max_detections: 50, ..Default::default() },
        ),
        ("photo_exif.jpg", json!({"threshold": 0.3}), opts(0.3)),
        (
            "gray.png",
            json!({"threshold": 0.2, "max_detections": 5}),
            DetectOptions { threshold: 0.2, max_detections: 5, ..Default::default() },
        ),
        ("rgba.png", json!({}), DetectOptions::default()),
    ];
    let mut tasks = Vec::new();
    for round in 0..2 {
        for (name, extra, _) in &cases {
            let mut body = extra.clone();
            body["image"] = json!(data_url(name));
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let _ = round;
                t.post_json("/v1/detections", &body).await
            }));
        }
    }
    let mut batch_sizes = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let (s, _, v) = task.await.unwrap();
        assert_eq!(s, 200, "{v}");
        let (name, _, o) = &cases[i % cases.len()];
        let (_, _, want) = reference(name, o);
        assert_same(name, &detections(&v["detections"]), &want);
        batch_sizes.push(v["timings_ms"]["batch_size"].as_u64().unwrap());
    }
    let stats = t.server.queue().stats();
    assert!(stats.max_batch_seen.load(Ordering::Relaxed) >= 2, "no batching happened: {batch_sizes:?}");
    assert!(stats.batches.load(Ordering::Relaxed) < 8, "{batch_sizes:?}");
    assert!(batch_sizes.iter().any(|&b| b >= 2));
}

/// A full queue answers 429 with Retry-After at once; admitted requests still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429() {
    let mut cfg = config();
    cfg.max_queue = 2;
    cfg.max_batch_size = 1;
    cfg.test_batch_delay = Some(Duration::from_millis(700));
    let t = Arc::new(start(cfg).await);
    let body = json!({"image": data_url("gray.png")});
    let mut admitted = Vec::new();
    for _ in 0..2 {
        let (t, body) = (t.clone(), body.clone());
        admitted.push(tokio::spawn(async move { t.post_json("/v1/detections", &body).await }));
    }
    let state = t.server.state().clone();
    let t0 = Instant::now();
    while state.permits.available_permits() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "requests were not admitted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = Instant::now();
    let (s, h, v) = t.post_json("/v1/detections", &body).await;
    assert_eq!(s, 429, "{v}");
    assert!(start.elapsed() < Duration::from_millis(500), "429 must be immediate");
    assert_eq!(error_code(&v), "queue_full");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(h["retry-after"], "1");
    let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&[data_url("gray.png")], json!({}))).await;
    assert_eq!((s, error_code(&v).as_str()), (429, "queue_full"));
    for a in admitted {
        let (s, _, v) = a.await.unwrap();
        assert_eq!(s, 200, "{v}");
    }
    // Slots are released: a request more than the queue holds is refused, then one fits.
    let urls: Vec<String> = (0..3).map(|_| data_url("gray.png")).collect();
    let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&urls, json!({}))).await;
    assert_eq!((s, error_code(&v).as_str()), (400, "too_many_images"));
    let (s, _, _) = t.post_json("/v1/detections", &body).await;
    assert_eq!(s, 200);
}

/// The per-request deadline answers 504 in OpenAI's shape: not 503, which load balancers retry
/// on another replica (the request already took this replica's time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_is_504() {
    let mut cfg = config();
    cfg.request_timeout = Duration::from_millis(300);
    cfg.test_batch_delay = Some(Duration::from_millis(1000));
    let t = start(cfg).await;
    let start = Instant::now();
    let (s, h, v) = t.post_json("/v1/detections", &json!({"image": data_url("gray.png")})).await;
    assert_eq!((s, error_code(&v).as_str()), (504, "timeout"), "{v}");
    assert_eq!(v["error"]["type"], "server_error");
    assert!(h.get("retry-after").is_none(), "no Retry-After on a passed deadline");
    assert!(start.elapsed() < Duration::from_millis(900));
    let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&[data_url("gray.png")], json!({}))).await;
    assert_eq!((s, error_code(&v).as_str()), (504, "timeout"), "{v}");
}

/// A client that goes away before inference does not cost a forward pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_clients_are_skipped() {
    let mut cfg = config();
    cfg.max_batch_size = 1;
    cfg.max_batch_delay = Duration::ZERO;
    cfg.test_batch_delay = Some(Duration::from_millis(400));
    let t = Arc::new(start(cfg).await);
    let body = json!({"image": data_url("gray.png")});
    let (t1, b1) = (t.clone(), body.clone());
    let first = tokio::spawn(async move { t1.post_json("/v1/detections", &b1).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // This client gives up after 150 ms, while its job waits behind the first.
    let impatient = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(150)).build().unwrap();
    assert!(impatient.post(t.url("/v1/detections")).json(&body).send().await.is_err());
    let (s, _, _) = first.await.unwrap();
    assert_eq!(s, 200);
    let stats = t.server.queue().stats();
    let t0 = Instant::now();
    while stats.skipped_disconnected.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.skipped_disconnected.load(Ordering::Relaxed), 1);
    assert_eq!(stats.images.load(Ordering::Relaxed), 1, "the abandoned image was inferred");
    // Its admission slot came back.
    assert_eq!(t.server.state().permits.available_permits(), t.server.state().config.max_queue);
}

/// Shutdown: while in-flight requests finish (and for at least `drain_delay`) the port stays
/// open and `/health` and new requests answer 503 `shutting_down` (a load balancer retries those
/// elsewhere); then new connections are refused and the server exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight() {
    let mut cfg = config();
    cfg.test_batch_delay = Some(Duration::from_millis(800));
    cfg.drain_delay = Duration::from_millis(300);
    let t = start(cfg).await;
    let (http, url, base) = (t.client.clone(), t.url("/v1/detections"), t.base.clone());
    let in_flight = tokio::spawn(async move {
        let r = http.post(url).json(&json!({"image": data_url("gray.png")})).send().await.unwrap();
        split(r).await
    });
    let state = t.server.state().clone();
    let t0 = Instant::now();
    while state.permits.available_permits() == state.config.max_queue {
        assert!(t0.elapsed() < Duration::from_secs(5), "the request was not admitted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shutdown_at = Instant::now();
    t.server.shutdown();
    let stopped = tokio::spawn(tokio::time::timeout(Duration::from_secs(10), t.server.wait()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Draining: fresh connections are still accepted, and answered 503.
    let health = client().get(format!("{base}/health")).send().await;
    let (s, h, v) = split(health.expect("a draining server still accepts connections")).await;
    assert_eq!((s, error_code(&v).as_str()), (503, "shutting_down"), "/health while draining");
    assert!(h.get("retry-after").is_some());
    let fresh =
        client().post(format!("{base}/v1/detections")).json(&json!({"image": data_url("gray.png")})).send().await;
    let (s, _, v) = split(fresh.expect("connect while draining")).await;
    assert_eq!((s, error_code(&v).as_str()), (503, "shutting_down"));
    assert!(state.draining.load(Ordering::SeqCst));
    let (s, _, v) = in_flight.await.unwrap();
    assert_eq!(s, 200, "in-flight request: {v}");
    assert!(stopped.await.unwrap().expect("server did not stop").is_ok());
    assert!(shutdown_at.elapsed() >= Duration::from_millis(300), "stopped before drain_delay");
    assert!(client().get(format!("{base}/health")).send().await.is_err(), "still accepting after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_warm_then_load_failure_stops() {
    let dir = fixture("tiny-bottleneck");
    let slow: rtdetr_server::ModelLoader = Box::new(move || {
        std::thread::sleep(Duration::from_millis(600));
        Ok(rtdetr::Detector::from_dir(&dir, &rtdetr::LoadOptions::default())?)
    });
    let t = start_with(config(), slow).await;
    let (s, h, body) = t.get("/health").await;
    assert_eq!(s, 503);
    assert!(h.get("retry-after").is_some());
    assert_eq!(error_code(&serde_json::from_str(&body).unwrap()), "not_ready");
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": data_url("gray.png")})).await;
    assert_eq!((s, error_code(&v).as_str()), (503, "not_ready"));
    assert_eq!(t.get("/v1/models").await.0, 200);
    t.server.wait_ready().await.unwrap();
    assert_eq!(t.get("/health").await.0, 200);

    let failing: rtdetr_server::ModelLoader = Box::new(|| anyhow::bail!("no such checkpoint: /nowhere"));
    let t = start_with(config(), failing).await;
    let r = tokio::time::timeout(Duration::from_secs(10), t.server.wait()).await.expect("did not stop");
    let e = r.expect_err("load failure must be an error");
    assert!(format!("{e:#}").contains("no such checkpoint"), "{e:#}");
}

/// Image URLs: fetched from loopback only with --allow-private-urls; content type, size,
/// status and redirect rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_inputs_with_private_urls_allowed() {
    let files = file_server(100 * 1024).await;
    let mut cfg = config().allow_private_urls(true);
    cfg.max_body_bytes = 64 * 1024;
    let t = start(cfg).await;
    let (_, _, want) = reference("photo.png", &opts(0.3));
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": files.url("/photo.png"), "threshold": 0.3})).await;
    assert_eq!(s, 200, "{v}");
    assert_same("url", &detections(&v["detections"]), &want);
    assert!(v["timings_ms"]["fetch"].as_f64().unwrap() > 0.0);
    let urls = vec![files.url("/photo.png"), files.url("/relative")];
    let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(&urls, json!({"threshold": 0.3}))).await;
    assert_eq!(s, 200, "{v}");
    let content: Value = serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    for r in content["results"].as_array().unwrap() {
        assert_same("chat url", &detections(&r["detections"]), &want);
    }
    for (path, status, code) in [
        ("/page", 415, "unsupported_content_type"),
        ("/big", 413, "image_too_large"),
        ("/missing", 400, "url_fetch_failed"),
        ("/loop", 400, "url_fetch_failed"),
    ] {
        let (s, _, v) = t.post_json("/v1/detections", &json!({"image": files.url(path)})).await;
        assert_eq!((s, error_code(&v).as_str()), (status, code), "{path}: {v}");
    }
    // Three redirects are followed, a fourth is not.
    let hop = |u: String| files.url(&format!("/to?u={}", url_escape(&u)));
    let three = hop(hop(hop(files.url("/photo.png"))));
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": three})).await;
    assert_eq!(s, 200, "{v}");
    let four = hop(hop(hop(hop(files.url("/photo.png")))));
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": four})).await;
    assert_eq!((s, error_code(&v).as_str()), (400, "url_fetch_failed"));
    assert!(v["error"]["message"].as_str().unwrap().contains("redirected more than 3"));
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// SSRF: loopback, IPv6 loopback, mapped and numeric forms are refused before any
/// connection (the file server sees no request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_loopback_refused() {
    let files = file_server(1024).await;
    let t = start(config()).await; // default: public addresses only
    let p = files.port;
    for url in [
        format!("http://127.0.0.1:{p}/photo.png"),
        format!("http://localhost:{p}/photo.png"),
        format!("http://[::1]:{p}/photo.png"),
        format!("http://[::ffff:127.0.0.1]:{p}/photo.png"),
        format!("http://2130706433:{p}/photo.png"),
        format!("http://0x7f.1:{p}/photo.png"),
        format!("http://0.0.0.0:{p}/photo.png"),
        format!("http://127.1.2.3:{p}/photo.png"),
    ] {
        let (s, _, v) = t.post_json("/v1/detections", &json!({ "image": url })).await;
        assert_eq!((s, error_code(&v).as_str()), (400, "url_not_allowed"), "{url}: {v}");
        let (s, _, v) = t.post_json("/v1/chat/completions", &chat_body(std::slice::from_ref(&url), json!({}))).await;
        assert_eq!((s, error_code(&v).as_str()), (400, "url_not_allowed"), "{url}: {v}");
    }
    for url in ["file:///etc/passwd", "gopher://127.0.0.1/", "http://user:pw@127.0.0.1/"] {
        let (s, _, v) = t.post_json("/v1/detections", &json!({ "image": url })).await;
        assert_eq!((s, error_code(&v).as_str()), (400, "invalid_url"), "{url}: {v}");
    }
    assert_eq!(files.hits(), 0, "a refused URL was fetched");
}

/// SSRF: metadata and private addresses, and a redirect from an allowed host to loopback.
/// The policy here records the default policy's verdict and never lets a non-loopback
/// address through, so a bug cannot send traffic off this machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_metadata_private_and_redirects_refused() {
    let public = file_server(1024).await; // plays a public host
    let internal = file_server(1024).await; // a loopback service that must stay unreachable
    let verdicts: Arc<Mutex<Vec<(SocketAddr, bool)>>> = Arc::default();
    let (v2, public_port) = (verdicts.clone(), public.port);
    let policy = AddressPolicy::Custom(Arc::new(move |a: SocketAddr| {
        let default_verdict = AddressPolicy::PublicOnly.allows(a);
        if let Ok(mut v) = v2.lock() {
            v.push((a, default_verdict));
        }
        a.ip().is_loopback() && a.port() == public_port
    }));
    let mut cfg = config();
    cfg.fetch.policy = policy;
    let t = start(cfg).await;

    for url in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/a.png",
        "http://192.168.1.1/a.png",
        "http://100.64.0.1/a.png",
        "http://[fe80::1]/a.png",
    ] {
        let (s, _, v) = t.post_json("/v1/detections", &json!({ "image": url })).await;
        assert_eq!((s, error_code(&v).as_str()), (400, "url_not_allowed"), "{url}: {v}");
        let host = reqwest::Url::parse(url).unwrap();
        let ip: std::net::IpAddr = host.host_str().unwrap().trim_matches(['[', ']']).parse().unwrap();
        let seen = verdicts.lock().unwrap().iter().any(|(a, ok)| a.ip() == ip && !ok);
        assert!(seen, "{url}: the default policy did not refuse {ip}");
    }

    // The allowed host works; its redirect to another loopback service or to the metadata
    // address is refused at the hop.
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": public.url("/relative")})).await;
    assert_eq!(s, 200, "{v}");
    for target in [internal.url("/photo.png"), "http://169.254.169.254/latest/meta-data/".to_string()] {
        let url = public.url(&format!("/to?u={}", url_escape(&target)));
        let (s, _, v) = t.post_json("/v1/detections", &json!({ "image": url })).await;
        assert_eq!((s, error_code(&v).as_str()), (400, "url_not_allowed"), "{target}: {v}");
    }
    assert_eq!(internal.hits(), 0, "the redirect reached the internal service");
    assert!(public.hits() >= 3);
}
