//! `GET /v1/stream` end to end: a real server on 127.0.0.1:0 with the tiny fixture model and
//! a tokio-tungstenite client. Per-frame results, latest-frame-wins, auth, limits, options,
//! slow readers, shutdown.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rtdetr::DetectOptions;
use rtdetr_server::ApiKeys;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

fn opts(threshold: f32) -> DetectOptions {
    DetectOptions { threshold, ..Default::default() }
}

fn ws_url(t: &TestServer, query: &str) -> String {
    format!("{}/v1/stream{query}", t.base.replacen("http://", "ws://", 1))
}

async fn try_connect(t: &TestServer, query: &str, bearer: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut req = ws_url(t, query).into_client_request()?;
    if let Some(k) = bearer {
        req.headers_mut().insert("authorization", format!("Bearer {k}").parse().expect("header"));
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

async fn connect(t: &TestServer, query: &str, bearer: Option<&str>) -> Ws {
    try_connect(t, query, bearer).await.expect("websocket connect")
}

/// The HTTP status and JSON body of a refused upgrade.
fn refused(r: Result<Ws, tungstenite::Error>) -> (u16, Value, Option<String>) {
    match r {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let retry = resp.headers().get("retry-after").and_then(|h| h.to_str().ok()).map(str::to_string);
            (resp.status().as_u16(), v, retry)
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The next JSON text message (pings and pongs skipped), within 30 s.
async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no answer within 30 s")
            .expect("stream ended")
            .expect("read");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON answer"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

async fn send_options(ws: &mut Ws, options: Value) -> Value {
    ws.send(Message::Text(options.to_string().into())).await.expect("send options");
    recv_json(ws).await
}

async fn send_frame(ws: &mut Ws, bytes: &[u8]) {
    ws.send(Message::Binary(bytes.to_vec().into())).await.expect("send frame");
}

/// The close code the server sends next (other messages skipped), within 20 s.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.ok()? {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_match_engine_and_options_apply() {
    let t = start(config()).await;
    let mut ws = connect(&t, "", None).await;
    let ack = send_options(&mut ws, json!({"threshold": 0.3})).await;
    assert_eq!(ack["options"]["threshold"].as_f64().map(|x| x as f32), Some(0.3), "{ack}");
    let names = ["photo.png", "photo_exif.jpg", "gray.png", "rgba.png"];
    for (n, name) in names.iter().enumerate() {
        send_frame(&mut ws, &image_bytes(name)).await;
        let v = recv_json(&mut ws).await;
        let (w, h, want) = reference(name, &opts(0.3));
        assert_eq!(v["frame"], n as u64, "{v}");
        assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(w as u64), Some(h as u64)), "{name}: {v}");
        assert_same(name, &detections(&v["detections"]), &want);
        assert!(v["latency_ms"].as_f64().is_some_and(|x| x > 0.0), "{v}");
        assert!(v.get("dropped").is_none() && v.get("error").is_none(), "{v}");
    }
    // Options change the following frames: threshold 0 with a cap, then a class filter.
    let (_, _, all) = reference("photo.png", &opts(0.0));
    assert!(all.len() > 3, "the fixture must have more than 3 detections at threshold 0");
    let ack = send_options(&mut ws, json!({"threshold": 0.0, "max_detections": 3})).await;
    assert_eq!(ack["options"]["max_detections"], 3, "{ack}");
    send_frame(&mut ws, &image_bytes("photo.png")).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["frame"], 4);
    assert_same("max_detections", &detections(&v["detections"]), &all[..3]);
    let class = all[0].label.clone();
    let ack = send_options(&mut ws, json!({"threshold": 0.0, "classes": [class]})).await;
    assert_eq!(ack["options"]["classes"], json!([class]));
    send_frame(&mut ws, &image_bytes("photo.png")).await;
    let v = recv_json(&mut ws).await;
    let want: Vec<_> = all.iter().filter(|d| d.label == class).cloned().collect();
    assert_same("classes", &detections(&v["detections"]), &want);

    // Invalid options: an error message, the connection stays open, the previous options stay.
    for (bad, code, param) in [
        (json!({"threshold": 2}), "invalid_parameter", Some("threshold")),
        (json!({"threshold": "high"}), "invalid_parameter", Some("threshold")),
        (json!({"classes": ["no-such-class"]}), "invalid_parameter", Some("classes")),
        (json!({"max_detections": 0}), "invalid_parameter", Some("max_detections")),
        (json!({"treshold": 0.1}), "invalid_parameter", Some("treshold")),
        (json!([1, 2]), "invalid_json", None),
    ] {
        let v = send_options(&mut ws, bad.clone()).await;
        assert_eq!(error_code(&v), code, "{bad}: {v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{bad}: {v}");
        assert!(v.get("frame").is_none());
    }
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(error_code(&recv_json(&mut ws).await), "invalid_json");
    send_frame(&mut ws, &image_bytes("photo.png")).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["frame"], 6);
    assert_same("options kept", &detections(&v["detections"]), &want);

    // A frame that is not an image: an error for that frame, then the stream goes on.
    send_frame(&mut ws, b"definitely not an image").await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["frame"], 7, "{v}");
    assert_eq!(error_code(&v), "unsupported_image_format");
    send_frame(&mut ws, &image_bytes("gray.png")).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["frame"], 8, "{v}");
    assert!(v["detections"].is_array(), "{v}");

    // The stream shows up in the metrics.
    let (_, _, text) = t.get("/metrics").await;
    assert!(text.contains("rtdetr_stream_frames_total{outcome=\"processed\"}"), "{text}");
    // At least this stream (tests running beside this one may hold others).
    let open: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("rtdetr_stream_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rtdetr_stream_connections gauge: {text}"));
    assert!(open >= 1.0, "{text}");
    let (_, _, doc) = t.get("/openapi.json").await;
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["paths"]["/v1/stream"]["get"].is_object(), "openapi lacks /v1/stream");
    ws.close(None).await.unwrap();
}

/// A burst of frames faster than the model: every frame answered exactly once, in order,
/// the newest always processed, the ones superseded while a frame ran answered `dropped`.
/// HTTP requests share the queue meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_latest_frame_wins() {
    let mut cfg = config();
    cfg.test_batch_delay = Some(Duration::from_millis(100));
    let t = start(cfg).await;
    let mut ws = connect(&t, "", None).await;
    send_options(&mut ws, json!({"threshold": 0.3})).await;
    let bytes = image_bytes("photo.png");
    let (_, _, want) = reference("photo.png", &opts(0.3));
    const N: u64 = 30;
    let started = Instant::now();
    for _ in 0..N {
        send_frame(&mut ws, &bytes).await;
    }
    // An HTTP request while the stream is busy is served too.
    let http = {
        let (client, url) = (t.client.clone(), t.url("/v1/detections"));
        tokio::spawn(async move {
            split(client.post(url).json(&json!({"image": data_url("gray.png")})).send().await.unwrap()).await
        })
    };
    let mut answers: BTreeMap<u64, Value> = BTreeMap::new();
    let mut order = Vec::new();
    while answers.len() < N as usize {
        let v = recv_json(&mut ws).await;
        let n = v["frame"].as_u64().unwrap_or_else(|| panic!("no frame number: {v}"));
        assert!(answers.insert(n, v).is_none(), "frame {n} answered twice");
        order.push(n);
        assert!(started.elapsed() < Duration::from_secs(60), "burst not answered within 60 s");
    }
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "answers out of order");
    let processed: Vec<u64> = answers.iter().filter(|(_, v)| v["detections"].is_array()).map(|(n, _)| *n).collect();
    let dropped: Vec<u64> = answers.iter().filter(|(_, v)| v["dropped"] == true).map(|(n, _)| *n).collect();
    assert_eq!(processed.len() + dropped.len(), N as usize, "errors in the burst: {answers:?}");
    assert!(!dropped.is_empty(), "nothing dropped under a burst");
    assert!(processed.contains(&0) && processed.contains(&(N - 1)), "first and last must run: {processed:?}");
    // One frame in inference at a time, and at 100 ms per batch the burst could not all run.
    assert!(processed.len() < N as usize / 2, "{processed:?}");
    for n in &processed {
        assert_same(&format!("frame {n}"), &detections(&answers[n]["detections"]), &want);
    }
    let (s, _, v) = http.await.unwrap();
    assert_eq!(s, 200, "{v}");
    // After the burst the stream works normally.
    send_frame(&mut ws, &bytes).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["frame"], N);
    assert_same("after burst", &detections(&v["detections"]), &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_before_upgrade() {
    let mut cfg = config();
    cfg.api_keys = ApiKeys::new(["sk-stream-one", "sk-stream-two"]);
    let t = start(cfg).await;
    for (query, bearer) in [
        ("", None),
        ("?api_key=wrong", None),
        ("?api_key=", None),
        ("", Some("sk-stream-one-but-longer")),
        // The header wins over the query parameter.
        ("?api_key=sk-stream-one", Some("wrong")),
    ] {
        let (s, v, _) = refused(try_connect(&t, query, bearer).await);
        assert_eq!(s, 401, "{query} {bearer:?}: {v}");
        assert_eq!(error_code(&v), "invalid_api_key");
        assert!(!v.to_string().contains("sk-stream"), "{v}");
    }
    let gray = image_bytes("gray.png");
    for (query, bearer) in
        [("", Some("sk-stream-one")), ("?api_key=sk-stream-two", None), ("?x=1&api_key=sk-stream-one", None)]
    {
        let mut ws = connect(&t, query, bearer).await;
        send_frame(&mut ws, &gray).await;
        let v = recv_json(&mut ws).await;
        assert_eq!(v["frame"], 0, "{query}: {v}");
        assert!(v["detections"].is_array(), "{query}: {v}");
        ws.close(None).await.unwrap();
    }
    // Not a WebSocket request: 426 (with a key), 401 without.
    let r = t.client.get(t.url("/v1/stream")).bearer_auth("sk-stream-one").send().await.unwrap();
    let (s, _, v) = split(r).await;
    assert_eq!((s, error_code(&v).as_str()), (426, "websocket_required"), "{v}");
    let (s, _, _) = t.get("/v1/stream").await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_stream_limit() {
    let mut cfg = config();
    cfg.api_keys = ApiKeys::new(["key-a", "key-b"]);
    cfg.max_streams_per_key = 2;
    let t = start(cfg).await;
    let a1 = connect(&t, "?api_key=key-a", None).await;
    let mut a2 = connect(&t, "", Some("key-a")).await;
    let (s, v, retry) = refused(try_connect(&t, "?api_key=key-a", None).await);
    assert_eq!((s, error_code(&v).as_str()), (429, "too_many_streams"), "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(retry.as_deref(), Some("1"));
    // Another key has its own allowance.
    let mut b = connect(&t, "?api_key=key-b", None).await;
    send_frame(&mut b, &image_bytes("gray.png")).await;
    assert!(recv_json(&mut b).await["detections"].is_array());
    // The first two still work; closing one frees a slot.
    send_frame(&mut a2, &image_bytes("gray.png")).await;
    assert!(recv_json(&mut a2).await["detections"].is_array());
    drop(a1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut a3 = loop {
        match try_connect(&t, "?api_key=key-a", None).await {
            Ok(ws) => break ws,
            Err(e) => {
                let (s, _, _) = refused(Err(e));
                assert_eq!(s, 429);
                assert!(Instant::now() < deadline, "slot not released after the client closed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    send_frame(&mut a3, &image_bytes("gray.png")).await;
    assert!(recv_json(&mut a3).await["detections"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames() {
    let mut cfg = config();
    cfg.max_body_bytes = 40 * 1024;
    let t = start(cfg).await;
    let mut ws = connect(&t, "", None).await;
    // photo.png (57 KB) is above the limit: an error for that frame, the stream goes on.
    send_frame(&mut ws, &image_bytes("photo.png")).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["frame"], 0, "{v}");
    assert_eq!(error_code(&v), "frame_too_large");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    send_frame(&mut ws, &image_bytes("gray.png")).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["frame"], 1, "{v}");
    assert!(v["detections"].is_array(), "{v}");
    // A message above twice the limit is not read: the server closes with 1009. The client
    // writes only the frame header (1 MiB announced, masked, binary), no payload.
    let mut header = vec![0x82u8, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    ws.get_mut().write_all(&header).await.unwrap();
    ws.get_mut().flush().await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
}

/// A client that sends frames but never reads its answers is disconnected (after
/// `WRITE_TIMEOUT`); other streams keep working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_disconnected() {
    let mut cfg = config();
    cfg.max_body_bytes = 1024;
    let t = start(cfg).await;
    let mut other = connect(&t, "", None).await;
    let mut slow = connect(&t, "", None).await;
    // Oversize frames are answered at once (no inference), about 200 bytes each: enough of
    // them fill the socket buffers and the connection's answer buffer.
    let junk = vec![0u8; 1025];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(30) && sent < 1_000_000 {
        match tokio::time::timeout(Duration::from_secs(2), slow.send(Message::Binary(junk.clone().into()))).await {
            Ok(Ok(())) => sent += 1,
            // The server stopped reading (its answers are not read), or dropped the connection.
            _ => break,
        }
    }
    // A small image, under this server's 1 KiB frame limit: served while `slow` is stuck.
    let mut tiny = Vec::new();
    image::RgbImage::from_pixel(16, 16, image::Rgb([200, 30, 30]))
        .write_to(&mut std::io::Cursor::new(&mut tiny), image::ImageFormat::Png)
        .unwrap();
    assert!(tiny.len() < 1024);
    let asked = Instant::now();
    send_frame(&mut other, &tiny).await;
    let v = recv_json(&mut other).await;
    assert_eq!(v["frame"], 0, "{v}");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(16), Some(16)), "{v}");
    assert!(asked.elapsed() < Duration::from_secs(5), "the other stream was held up: {:?}", asked.elapsed());
    if started.elapsed() < Duration::from_secs(8) {
        // Not dropped for a mere burst: only after WRITE_TIMEOUT (10 s) without reading.
        assert_eq!(state_open(&t), 2, "the slow client was dropped before it stopped reading for long");
    }
    // Without reading anything on `slow`, the server drops it.
    let state = t.server.state().clone();
    let deadline = Instant::now() + rtdetr_server::stream::WRITE_TIMEOUT * 3;
    while state.streams.open_streams() > 1 {
        assert!(Instant::now() < deadline, "a client that never reads was not disconnected ({sent} frames sent)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, _, text) = t.get("/metrics").await;
    assert!(text.contains("reason=\"stream_slow_reader\""), "{text}");
    drop(slow);
    // The other stream still works.
    send_frame(&mut other, &tiny).await;
    assert_eq!(recv_json(&mut other).await["frame"], 1);
}

fn state_open(t: &TestServer) -> usize {
    t.server.state().streams.open_streams()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_streams() {
    let t = start(config()).await;
    let mut ws = connect(&t, "", None).await;
    send_frame(&mut ws, &image_bytes("gray.png")).await;
    assert!(recv_json(&mut ws).await["detections"].is_array());
    let state = t.server.state().clone();
    assert_eq!(state.streams.open_streams(), 1);
    t.server.shutdown();
    assert_eq!(close_code(&mut ws).await, Some(1001));
    let stopped = tokio::time::timeout(Duration::from_secs(15), t.server.wait()).await;
    assert!(stopped.expect("server did not stop").is_ok());
    assert_eq!(state.streams.open_streams(), 0);
}

/// Frame `i` of a clip: a 320x240 window panning right 12 px per frame across
/// `examples/shapes-1.png`, so its triangle moves left (box centre x 246 in frame 0, 115 in
/// frame 11) and a rectangle enters at the top.
fn pan_frame(i: u32) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shapes-1.png");
    let img = image::open(path).expect("example image").to_rgb8();
    let crop = image::imageops::crop_imm(&img, 12 * i, 30, 320, 240).to_image();
    let mut png = Vec::new();
    crop.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    png
}

/// The bundled demo model, whose detections are meaningful on drawn shapes.
fn demo_loader() -> rtdetr_server::ModelLoader {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes-demo");
    Box::new(move || Ok(rtdetr::Detector::from_dir(&dir, &rtdetr::LoadOptions::default())?))
}

/// A tracked answer's detections as (label, track_id), checking that every one has an id,
/// scores above `threshold` and that ids are unique within the frame.
fn tracked(v: &Value, threshold: f64) -> Vec<(String, u64)> {
    let dets = v["detections"].as_array().unwrap_or_else(|| panic!("no detections: {v}"));
    let out: Vec<(String, u64)> = dets
        .iter()
        .map(|d| {
            let id = d["track_id"].as_u64().unwrap_or_else(|| panic!("detection without track_id: {v}"));
            assert!(id >= 1, "{v}");
            assert!(d["score"].as_f64().unwrap() > threshold, "{v}");
            assert!(d["box"]["xmin"].is_number() && d["label"].is_string(), "{v}");
            (d["label"].as_str().unwrap().to_string(), id)
        })
        .collect();
    let mut ids: Vec<u64> = out.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), out.len(), "track ids repeat within a frame: {v}");
    out
}

fn id_of(dets: &[(String, u64)], label: &str) -> Option<u64> {
    dets.iter().find(|(l, _)| l == label).map(|(_, id)| *id)
}

/// `{"track": true}` on the demo model: stable ids across frames and across frame-number
/// gaps, what resets the tracker and what does not, line-crossing counts, bad tracking
/// options answered with errors, and tracking turned off again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_ids_counts_and_reset() {
    let mut cfg = config();
    cfg.served_model_name = "shapes-demo".into();
    let t = start_with(cfg, demo_loader()).await;
    t.server.wait_ready().await.expect("model ready");
    let mut ws = connect(&t, "", None).await;
    let ack = send_options(&mut ws, json!({"track": true, "threshold": 0.3})).await;
    let o = &ack["options"];
    assert_eq!(
        (o["track"].as_bool(), o["track_thresh"].as_f64(), o["match_thresh"].as_f64()),
        (Some(true), Some(0.5), Some(0.9)),
        "{ack}"
    );
    assert_eq!((o["track_buffer"].as_u64(), &o["line"]), (Some(30), &Value::Null), "{ack}");
    assert_eq!(ack["track_reset"], true, "{ack}");

    // Frames 0-3 of the clip, then two frames that are not images (numbers 4 and 5: the
    // tracker predicts through them), then frames 6-11 where the clip has moved on.
    let mut triangle = Vec::new();
    let mut rectangle = Vec::new();
    for n in 0..12u32 {
        if n == 4 || n == 5 {
            send_frame(&mut ws, b"not an image").await;
            let v = recv_json(&mut ws).await;
            assert_eq!((v["frame"].as_u64(), error_code(&v).as_str()), (Some(n as u64), "unsupported_image_format"));
            continue;
        }
        send_frame(&mut ws, &pan_frame(n)).await;
        let v = recv_json(&mut ws).await;
        assert_eq!(v["frame"], n, "{v}");
        assert!(v.get("counts").is_none(), "counts without a line: {v}");
        assert!(v["latency_ms"].as_f64().is_some_and(|x| x > 0.0), "{v}");
        let dets = tracked(&v, 0.3);
        triangle.extend(id_of(&dets, "triangle"));
        rectangle.extend(id_of(&dets, "rectangle"));
    }
    // The triangle scores 0.67-0.96 in every frame: one track from the first frame (the
    // first frame's tracks are confirmed at once), across the gap.
    assert_eq!(triangle, vec![1; 10], "triangle ids");
    // The rectangle enters: once confirmed, its id stays.
    assert!(rectangle.len() >= 3 && rectangle.iter().all(|&id| id == rectangle[0] && id > 1), "{rectangle:?}");
    let (tri, rect) = (triangle[0], rectangle[0]);

    // The same options again, or another threshold: the tracker goes on.
    for options in [json!({"track": true, "threshold": 0.3}), json!({"track": true, "threshold": 0.2})] {
        let ack = send_options(&mut ws, options).await;
        assert_eq!(ack["track_reset"], false, "{ack}");
        send_frame(&mut ws, &pan_frame(11)).await;
        let dets = tracked(&recv_json(&mut ws).await, 0.2);
        assert_eq!((id_of(&dets, "triangle"), id_of(&dets, "rectangle")), (Some(tri), Some(rect)));
    }
    // Without a reset, jumping back to frame 0 makes a new (not yet confirmed) track: the
    // triangle is not returned. After `track_reset` it is the first frame of a new tracker:
    // confirmed at once, id 1 again.
    let ack = send_options(&mut ws, json!({"track": true, "threshold": 0.3, "track_reset": true})).await;
    assert_eq!(ack["track_reset"], true, "{ack}");
    send_frame(&mut ws, &pan_frame(0)).await;
    assert_eq!(tracked(&recv_json(&mut ws).await, 0.3), [("triangle".to_string(), 1)]);
    send_frame(&mut ws, &pan_frame(11)).await;
    let dets = tracked(&recv_json(&mut ws).await, 0.3);
    assert_eq!(
        id_of(&dets, "triangle"),
        None,
        "a 130 px jump is a new track, unconfirmed in its first frame: {dets:?}"
    );
    // A class filter change resets the tracker too.
    let ack = send_options(&mut ws, json!({"track": true, "threshold": 0.3, "classes": ["triangle"]})).await;
    assert_eq!(ack["track_reset"], true, "{ack}");
    send_frame(&mut ws, &pan_frame(11)).await;
    assert_eq!(tracked(&recv_json(&mut ws).await, 0.3), [("triangle".to_string(), 1)]);

    // A vertical line at x = 180, drawn top to bottom: the triangle's centre crosses it
    // leftwards (in) between frames 5 and 6; the rectangle's (x 286 to 188) never does.
    let line = json!([[180, 0], [180, 240]]);
    let ack = send_options(&mut ws, json!({"track": true, "threshold": 0.3, "line": line})).await;
    assert_eq!((&ack["options"]["line"], &ack["track_reset"]), (&json!([[180.0, 0.0], [180.0, 240.0]]), &json!(true)));
    let mut last = Value::Null;
    for n in 0..12u32 {
        send_frame(&mut ws, &pan_frame(n)).await;
        let v = recv_json(&mut ws).await;
        tracked(&v, 0.3);
        let counts = &v["counts"];
        assert!(counts["in"].is_object() && counts["out"].is_object(), "{v}");
        if n <= 4 {
            assert_eq!(counts, &json!({"in": {}, "out": {}}), "frame {n}: {v}");
        }
        last = v;
    }
    assert_eq!(last["counts"], json!({"in": {"triangle": 1}, "out": {}}), "{last}");
    let tri = id_of(&tracked(&last, 0.3), "triangle");

    // Bad tracking options: an error each, the connection and the tracker go on.
    for (bad, param) in [
        (json!({"track": true, "track_thresh": 2}), "track_thresh"),
        (json!({"track": true, "match_thresh": "high"}), "match_thresh"),
        (json!({"track": true, "track_buffer": 0}), "track_buffer"),
        (json!({"track": true, "line": [[5, 5], [5, 5]]}), "line"),
        (json!({"track": true, "line": [[5, 5]]}), "line"),
        (json!({"line": [[0, 0], [10, 10]]}), "line"),
        (json!({"track_reset": true}), "track_reset"),
        (json!({"track": 1}), "track"),
        (json!({"track": true, "trak_thresh": 0.5}), "trak_thresh"),
    ] {
        let v = send_options(&mut ws, bad.clone()).await;
        assert_eq!(error_code(&v), "invalid_parameter", "{bad}: {v}");
        assert_eq!(v["error"]["param"].as_str(), Some(param), "{bad}: {v}");
    }
    send_frame(&mut ws, &pan_frame(11)).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["counts"], json!({"in": {"triangle": 1}, "out": {}}), "{v}");
    assert_eq!(id_of(&tracked(&v, 0.3), "triangle"), tri);

    // Tracking off: plain detections again (no track_id, no counts, untracked ones too).
    let ack = send_options(&mut ws, json!({"threshold": 0.3})).await;
    assert_eq!((&ack["options"]["track"], ack.get("track_reset")), (&json!(false), None), "{ack}");
    send_frame(&mut ws, &pan_frame(11)).await;
    let v = recv_json(&mut ws).await;
    let dets = v["detections"].as_array().unwrap();
    assert!(dets.len() >= 3 && dets.iter().all(|d| d.get("track_id").is_none()), "{v}");
    assert!(v.get("counts").is_none(), "{v}");
    ws.close(None).await.unwrap();
}
