//! The holes an attacker found in `rtdetr serve` (issue 19), one regression test each:
//! abandoned decodes, progressive-JPEG CPU amplification, connections without a timer,
//! admission before the body, memory beyond the pixel limit, silent WebSockets, and the
//! lower ones (truncated JPEGs, huge class lists).

mod common;

use std::io::Cursor;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).expect("png");
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A valid 1x1 PNG whose header then claims `w` x `h` (IHDR patched, CRC fixed).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut b = png(&image::RgbImage::new(1, 1));
    // Signature (8), IHDR length (4), "IHDR" (4), width, height, ...; CRC after 13 bytes.
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

fn progressive_jpeg(w: usize, h: usize) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_progressive_mode();
    c.set_size(w, h);
    let mut c = c.start_compress(Vec::new()).expect("compress");
    let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 13 % 241) as u8).collect();
    c.write_scanlines(&px).expect("scanlines");
    c.finish().expect("finish")
}

async fn post_bytes(t: &TestServer, bytes: &[u8], extra: &[(&str, Option<&str>, &[u8])]) -> (u16, Value) {
    let mut fields: Vec<(&str, Option<&str>, &[u8])> = vec![("image", Some("x.bin"), bytes)];
    fields.extend_from_slice(extra);
    let (ct, body) = multipart(&fields);
    let r = t.client.post(t.url("/v1/detections")).header("content-type", ct).body(body).send().await.expect("request");
    let (s, _, v) = split(r).await;
    (s, v)
}

/// Hole 3: a request dropped mid-decode (here its deadline passes) stops its decode, which
/// holds its CPU slot and memory until it has really stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_decodes_are_cancelled_and_hold_their_slot_until_they_stop() {
    let mut cfg = config();
    cfg.request_timeout = Duration::from_millis(60);
    let t = start(cfg).await;
    // 40 MP of one colour: a 100 KB file that takes far longer than 60 ms to inflate.
    let big = png(&image::RgbImage::from_pixel(8000, 5000, image::Rgb([30, 60, 90])));
    let t0 = Instant::now();
    let (s, v) = post_bytes(&t, &big, &[]).await;
    assert_eq!((s, error_code(&v).as_str()), (504, "timeout"), "{v}");
    let state = t.server.state().clone();
    while state.decodes_cancelled.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state.decodes_cancelled.load(Ordering::Relaxed), 1, "the decode was not cancelled");
    // Everything comes back once it stopped.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    while (state.decode_slots.available_permits() < cpus
        || state.decode_memory.available() < state.config.max_decode_memory)
        && t0.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state.decode_slots.available_permits(), cpus);
    assert_eq!(state.decode_memory.available(), state.config.max_decode_memory);
}

/// Hole 4: a progressive JPEG with more scans than `--max-jpeg-scans` is refused from its
/// header, before any decoding (each scan is a pass over the whole image).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpegs_with_too_many_scans_are_refused_before_decoding() {
    let t = start(config()).await;
    let jpeg = progressive_jpeg(64, 48);
    let (s, v) = post_bytes(&t, &jpeg, &[]).await;
    assert_eq!(s, 200, "a normal progressive JPEG is served: {v}");
    // Repeat the last scan until the file has 400 of them.
    let last_sos = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).expect("a scan");
    let eoi = jpeg.len() - 2;
    let mut many = jpeg[..eoi].to_vec();
    for _ in 0..400 {
        many.extend_from_slice(&jpeg[last_sos..eoi]);
    }
    many.extend_from_slice(&[0xFF, 0xD9]);
    let t0 = Instant::now();
    let (s, v) = post_bytes(&t, &many, &[]).await;
    assert_eq!((s, error_code(&v).as_str()), (413, "image_too_large"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("scans"), "{v}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// Hole 5: a connection that does not finish its headers, or sits idle after a response, is
/// closed after `--header-read-timeout-secs`; connections are capped and the cap recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_have_a_header_timeout_and_a_cap() {
    let mut cfg = config();
    cfg.header_read_timeout = Duration::from_millis(400);
    cfg.max_connections = 4;
    let t = start(cfg).await;
    let addr = t.server.local_addr();
    async fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
        let mut buf = [0u8; 4096];
        let t0 = Instant::now();
        loop {
            match tokio::time::timeout(d.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // a response (or a 408) before the close
                Err(_) => return false,
            }
        }
    }
    // Partial headers.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(closed_within(&mut partial, Duration::from_secs(5)).await, "a partial header was kept open");
    // Idle keep-alive after a response.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "an idle keep-alive connection was kept open");
    // Four silent connections fill the cap; a fifth is served once they time out.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    let (s, _, _) = t.get("/health").await;
    assert_eq!(s, 200);
    assert!(t0.elapsed() >= Duration::from_millis(200), "the fifth connection was accepted above the cap");
    for mut c in silent {
        assert!(closed_within(&mut c, Duration::from_secs(5)).await);
    }
}

/// Hole 6: admission is taken after the body is read, so slow uploads hold no slot; the
/// body itself has a deadline (408) and bodies in memory a budget (429 `server_busy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_hold_no_admission_slot_and_time_out() {
    let mut cfg = config();
    cfg.max_queue = 1;
    cfg.body_read_timeout = Duration::from_millis(800);
    cfg.max_body_bytes = 256 * 1024;
    cfg.max_body_memory = 256 * 1024;
    let t = start(cfg).await;
    let addr = t.server.local_addr();
    // A slow upload: headers and 200 KB of a 250 KB body, then nothing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head =
        "POST /v1/detections HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 256000\r\n\r\n";
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&vec![b' '; 200_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The only admission slot is free: a normal request is served.
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": data_url("gray.png")})).await;
    assert_eq!(s, 200, "{v}");
    // Body memory: the slow upload holds 200 KB of the 256 KB budget.
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": b64(&vec![7u8; 100_000])})).await;
    assert_eq!((s, error_code(&v).as_str()), (429, "server_busy"), "{v}");
    // The slow upload gets 408 when its body deadline passes.
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    // And its memory came back.
    assert_eq!(t.server.state().body_memory.available(), 256 * 1024);
}

/// Hole 7: memory is bounded by what decoding really allocates, not only the header's pixel
/// count: frames larger than the GIF's screen, absurd sides, and the decode memory budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_memory_is_bounded_beyond_the_pixel_limit() {
    let mut cfg = config();
    cfg.max_decode_memory = 24 << 20;
    let t = start(cfg).await;
    // A 1x1 screen with a 4000x4000 frame (64 MB as RGBA).
    let mut gif = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut gif, 1, 1, &[0, 0, 0, 255, 255, 255]).unwrap();
        let frame =
            gif::Frame { width: 4000, height: 4000, buffer: vec![1u8; 16_000_000].into(), ..gif::Frame::default() };
        enc.write_frame(&frame).unwrap();
    }
    let (s, v) = post_bytes(&t, &gif, &[]).await;
    assert_eq!((s, error_code(&v).as_str()), (400, "invalid_image"), "{v}");
    // 40,000,000 x 1: within the pixel limit, refused by the side limit.
    let (s, v) = post_bytes(&t, &png_claiming(40_000_000, 1), &[]).await;
    assert_eq!((s, error_code(&v).as_str()), (413, "image_too_large"), "{v}");
    // 3000x3000 needs ~54 MB to decode: above this server's 24 MiB.
    let (s, v) = post_bytes(&t, &png(&image::RgbImage::new(3000, 3000)), &[]).await;
    assert_eq!((s, error_code(&v).as_str()), (413, "image_too_large"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("decode memory"), "{v}");
    // return_image: the kept image is charged until drawn, then returned.
    let (s, v) = post_bytes(&t, &png(&image::RgbImage::new(1000, 800)), &[("return_image", None, b"true")]).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["annotated_image"].as_str().is_some_and(|u| u.starts_with("data:image/jpeg;base64,")));
    assert_eq!(t.server.state().decode_memory.available(), 24 << 20);
}

/// Hole 8: a silent stream is pinged, then closed (1001) after the idle timeout, and its
/// per-key slot is free again; a text message that is not UTF-8 closes with 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_are_closed_and_invalid_utf8_is_1007() {
    let mut cfg = config();
    cfg.stream_idle_timeout = Duration::from_millis(600);
    cfg.stream_ping_interval = Duration::from_millis(200);
    cfg.max_streams_per_key = 1;
    let t = start(cfg).await;
    let url = format!("{}/v1/stream", t.base.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("connect");
    let (mut pings, mut close) = (0, None);
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match msg {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Close(f)) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(pings >= 1, "no ping");
    assert_eq!(close, Some(1001), "not closed as idle");
    drop(ws);
    // The slot is free: a new stream opens (the limit is one).
    let mut ok = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            ok = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ws = ok.expect("the idle stream's slot was not released");
    let frame = Frame::message(vec![0xC3u8, 0x28], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match msg {
            Ok(Message::Close(f)) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1007));
}

/// Hole 9: a truncated JPEG with an end marker appended is refused rather than padded with
/// grey; a class list longer than the model's classes is refused before inference; a form
/// with two images is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_jpegs_and_huge_class_lists_are_refused() {
    let t = Arc::new(start(config()).await);
    let mut jpeg = Vec::new();
    image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, 77]))
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let (s, v) = post_bytes(&t, &jpeg, &[]).await;
    assert_eq!(s, 200, "{v}");
    let mut cut = jpeg[..jpeg.len() * 2 / 3].to_vec();
    cut.extend_from_slice(&[0xFF, 0xD9]);
    let (s, v) = post_bytes(&t, &cut, &[]).await;
    assert_eq!((s, error_code(&v).as_str()), (400, "invalid_image"), "{v}");
    let labels = t.server.queue().wait_ready().await.expect("ready").labels.clone();
    let many: Vec<&str> = std::iter::repeat_n(labels[0].as_str(), labels.len() + 1).collect();
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": data_url("gray.png"), "classes": many})).await;
    assert_eq!((s, v["error"]["param"].as_str()), (422, Some("classes")), "{v}");
    let dup: Vec<&str> = std::iter::repeat_n(labels[0].as_str(), labels.len()).collect();
    let (s, _, v) = t.post_json("/v1/detections", &json!({"image": data_url("gray.png"), "classes": dup})).await;
    assert_eq!(s, 200, "{v}");
    // A second image (or option) in a form is refused, not silently preferred.
    let gray = image_bytes("gray.png");
    let (s, v) = post_bytes(&t, &gray, &[("image", Some("b.png"), &gray)]).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("image")), "{v}");
    let (s, v) = post_bytes(&t, &gray, &[("threshold", None, b"0.1"), ("threshold", None, b"0.9")]).await;
    assert_eq!((s, error_code(&v).as_str()), (400, "duplicate_field"), "{v}");
}
