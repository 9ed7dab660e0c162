//! Several models in one server (issue 17): an RT-DETR, an RT-DETRv2 and a D-FINE checkpoint
//! of different classes and input sizes, plus the first one again at another size and again
//! in bf16 (per-model precision), chosen by the request's `model`; each answer equals the engine's for that model, batches are per
//! model, unknown models are 404, `/v1/models`, `/health` and `/metrics` name them all.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rtdetr::{DetectOptions, Detector, LoadOptions, Precision};
use rtdetr_server::{ModelSpec, RunningServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// An input size override `(height, width)`.
type Size = Option<(usize, usize)>;

/// (served name, fixture, input size override, precision)
const MODELS: [(&str, &str, Size, Precision); 5] = [
    ("v1", "tiny-bottleneck", None, Precision::F32),
    ("v2", "tiny-v2", None, Precision::F32),
    ("v1-small", "tiny-bottleneck", Some((64, 64)), Precision::F32),
    ("v1-bf16", "tiny-bottleneck", None, Precision::Bf16),
    ("dfine", "tiny-dfine-n", None, Precision::F32),
];

fn load_options(size: Size, precision: Precision) -> LoadOptions {
    LoadOptions { size, precision, ..LoadOptions::default() }
}

async fn start_models(cfg: rtdetr_server::ServerConfig) -> TestServer {
    let specs = MODELS
        .iter()
        .map(|&(name, fixture_name, size, precision)| {
            let dir = fixture(fixture_name);
            ModelSpec {
                name: name.to_string(),
                loader: Box::new(move || Ok(Detector::from_dir(&dir, &load_options(size, precision))?)),
            }
        })
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = RunningServer::start_models(cfg, specs, listener).await.expect("start");
    let base = format!("http://{}", server.local_addr());
    server.wait_ready().await.expect("models ready");
    TestServer { server, base, client: client() }
}

/// The engine's one-by-one answer of a served model for a fixture image.
fn reference_of(model: &str, image: &str, opts: &DetectOptions) -> Vec<rtdetr::Detection> {
    let &(_, fixture_name, size, precision) = MODELS.iter().find(|m| m.0 == model).expect("a served model");
    let det = Detector::from_dir(&fixture(fixture_name), &load_options(size, precision)).expect("model");
    let img = rtdetr::load_image(&image_path(image)).expect("image");
    det.detect(&img, opts).expect("detect")
}

fn opts() -> DetectOptions {
    DetectOptions { threshold: 0.0, max_detections: 20, classes: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_runs_on_the_model_it_names() {
    let t = start_models(config()).await;
    // Listing and health: every model, the default (first) first.
    let (s, _, v) = t.get("/v1/models").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&v).unwrap();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["v1", "v2", "v1-small", "v1-bf16", "dfine"]);
    let (s, _, h) = t.get("/health").await;
    let h: Value = serde_json::from_str(&h).unwrap();
    assert_eq!((s, h["model"].as_str(), h["models"].as_array().map(Vec::len)), (200, Some("v1"), Some(5)));
    let (s, _, _) = t.get("/v1/models/v1-small").await;
    assert_eq!(s, 200);

    for image in ["photo.png", "rgba.png"] {
        for (name, _, _, _) in MODELS {
            let want = reference_of(name, image, &opts());
            let body = json!({"image": data_url(image), "model": name, "threshold": 0.0, "max_detections": 20});
            let (s, _, v) = t.post_json("/v1/detections", &body).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["model"], name);
            assert_same(&format!("{name} {image} detections"), &detections(&v["detections"]), &want);
            let chat = chat_body(&[data_url(image)], json!({"model": name, "threshold": 0.0, "max_detections": 20}));
            let (s, _, v) = t.post_json("/v1/chat/completions", &chat).await;
            assert_eq!((s, v["model"].as_str()), (200, Some(name)), "{v}");
            let content: Value = serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
            assert_same(&format!("{name} {image} chat"), &detections(&content["results"][0]["detections"]), &want);
        }
    }
    // The models differ (classes, sizes): the test would not see a wrong routing otherwise.
    let a = reference_of("v1", "photo.png", &opts());
    let b = reference_of("v2", "photo.png", &opts());
    let c = reference_of("v1-small", "photo.png", &opts());
    let e = reference_of("dfine", "photo.png", &opts());
    assert!(a != b && a != c && a != e && b != e, "fixtures too alike to tell models apart");
    // Per-model precision: the bf16 model answers as the engine does in bf16, which differs
    // from f32 where the CPU has bf16 dot products (elsewhere bf16 runs f32, bit for bit).
    let d = reference_of("v1-bf16", "photo.png", &opts());
    if Precision::Bf16.effective() == Precision::Bf16 {
        assert!(a != d, "the bf16 model answered exactly as f32");
    } else {
        assert_eq!(a, d, "the bf16 fallback is not f32");
    }
    // No `model` on the native endpoint: the default model.
    let (s, _, v) = t
        .post_json("/v1/detections", &json!({"image": data_url("photo.png"), "threshold": 0.0, "max_detections": 20}))
        .await;
    assert_eq!((s, v["model"].as_str()), (200, Some("v1")));
    assert_same("default model", &detections(&v["detections"]), &a);
    // Unknown models: 404 model_not_found everywhere, naming the served ones.
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": data_url("photo.png"), "model": "v3"})).await;
    assert_eq!((s, error_code(&v).as_str()), (404, "model_not_found"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("v1-small"), "{v}");
    let (s, _, v) =
        t.post_json("/v1/chat/completions", &chat_body(&[data_url("photo.png")], json!({"model": "v3"}))).await;
    assert_eq!((s, error_code(&v).as_str()), (404, "model_not_found"), "{v}");
    let (s, _, _) = t.get("/v1/models/v3").await;
    assert_eq!(s, 404);
    // Classes are the chosen model's: v2 has 5 classes, v1 6.
    let (s, _, v) = t
        .post_json("/v1/detections", &json!({"image": data_url("photo.png"), "model": "v2", "classes": ["class_5"]}))
        .await;
    assert_eq!((s, v["error"]["param"].as_str()), (422, Some("classes")), "{v}");
    let (s, _, v) = t
        .post_json("/v1/detections", &json!({"image": data_url("photo.png"), "model": "v1", "classes": ["class_5"]}))
        .await;
    assert_eq!(s, 200, "{v}");

    // The stream picks its model with ?model=.
    let ws_base = t.base.replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_base}/v1/stream?model=v2")).await.expect("connect");
    ws.send(Message::Text(json!({"threshold": 0.0, "max_detections": 20}).to_string().into())).await.unwrap();
    ws.send(Message::Binary(image_bytes("photo.png").into())).await.unwrap();
    let mut answer = None;
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(text) = msg {
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v.get("frame").is_some() {
                answer = Some(v);
                break;
            }
        }
    }
    let answer = answer.expect("a frame answer");
    assert_same("stream v2", &detections(&answer["detections"]), &b);
    let refused = tokio_tungstenite::connect_async(format!("{ws_base}/v1/stream?model=v3")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 404),
        other => panic!("an unknown model was accepted: {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_per_model_and_metrics_name_the_model() {
    let mut cfg = config();
    cfg.max_batch_size = 4;
    cfg.max_batch_delay = Duration::from_millis(50);
    cfg.test_batch_delay = Some(Duration::from_millis(200));
    let t = Arc::new(start_models(cfg).await);
    let mut jobs = Vec::new();
    // Three concurrent requests for each of three architectures.
    const BATCHED: [(usize, &str); 3] = [(0, "v1"), (1, "v2"), (4, "dfine")];
    for i in 0..9 {
        let t = t.clone();
        let model = BATCHED[i % 3].1;
        jobs.push(tokio::spawn(async move {
            let body = json!({"image": data_url("photo.png"), "model": model, "threshold": 0.0, "max_detections": 20});
            let (s, _, v) = t.post_json("/v1/detections", &body).await;
            (model, s, v)
        }));
    }
    for job in jobs {
        let (model, s, v) = job.await.unwrap();
        assert_eq!(s, 200, "{v}");
        assert_same(
            &format!("{model} concurrent"),
            &detections(&v["detections"]),
            &reference_of(model, "photo.png", &opts()),
        );
    }
    let state = t.server.state();
    for (i, name) in BATCHED {
        assert_eq!(MODELS[i].0, name);
        let stats = state.models[i].queue.stats();
        assert_eq!(stats.images.load(Ordering::Relaxed), 3, "{name}: images on its own queue");
        assert!(stats.max_batch_seen.load(Ordering::Relaxed) >= 2, "{name}: concurrent requests were not batched");
    }
    assert_eq!(state.models[2].queue.stats().images.load(Ordering::Relaxed), 0);
    let (_, _, metrics) = t.get("/metrics").await;
    for (_, name) in BATCHED {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("rtdetr_batch_size_count") && l.contains(&format!("model=\"{name}\""))),
            "/metrics lacks batch sizes of {name}"
        );
    }
}
