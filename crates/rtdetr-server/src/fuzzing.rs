//! Harnesses of the coverage-guided fuzz targets (`fuzz/`, `cargo fuzz`), here so that the
//! regression tests (`tests/fuzz_regressions.rs`) replay the committed corpora and every
//! crash found through the same code on stable. Each function feeds one input through a
//! request parser exactly as the handlers, the pipeline or the stream run it, and panics when
//! a guarantee breaks: a parser panics, answers a client's input with a 5xx, or accepts
//! values outside their documented ranges. Not a stable API.

use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::header;
use axum::response::IntoResponse;
use rtdetr::io::config::PreprocessorConfig;
use rtdetr::io::decode::DecodeLimits;
use rtdetr::io::preprocess::Preprocessor;
use rtdetr::DetectOptions;

use crate::error::{ApiError, ApiResult};
use crate::input::{decode_and_prepare, decode_base64, parse_image_ref, read_header, ImageSource};
use crate::types::{ChatCompletionRequest, DetectionRequest, MAX_DETECTIONS_LIMIT};

/// The label list that `classes` are validated against (one non-ASCII name).
pub fn labels() -> &'static [String] {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    LABELS.get_or_init(|| ["person", "cat", "dog", "traffic light", "café"].iter().map(|s| s.to_string()).collect())
}

/// A refused input is the client's fault (4xx, never a 5xx) and renders as a response.
fn client_error(e: ApiError) {
    assert!(e.status.is_client_error(), "{} answered to client input: {}", e.status, e.message);
    let _ = e.into_response();
}

/// Accepted options are within their documented ranges.
fn valid_options(o: &DetectOptions) {
    assert!(o.threshold.is_finite() && (0.0..=1.0).contains(&o.threshold), "threshold {}", o.threshold);
    assert!((1..=MAX_DETECTIONS_LIMIT).contains(&o.max_detections), "max_detections {}", o.max_detections);
    if let Some(ids) = &o.classes {
        assert!(!ids.is_empty() && ids.iter().all(|&i| i < labels().len()), "class ids {ids:?}");
    }
}

fn options(r: ApiResult<DetectOptions>) {
    match r {
        Ok(o) => valid_options(&o),
        Err(e) => client_error(e),
    }
}

// ---- image_input -------------------------------------------------------------------------

/// Small limits keep executions fast; the code paths are those of the server's defaults.
pub const IMAGE_MAX_PIXELS: u64 = 4 * 1024 * 1024;
pub const IMAGE_MAX_BASE64_BYTES: usize = 1 << 20;
pub const IMAGE_INPUT_SIZE: (usize, usize) = (64, 64);

fn preprocessor() -> &'static Preprocessor {
    static P: OnceLock<Preprocessor> = OnceLock::new();
    P.get_or_init(|| {
        let (h, w) = IMAGE_INPUT_SIZE;
        let json = format!(r#"{{"size":{{"height":{h},"width":{w}}},"do_normalize":true}}"#);
        let cfg: PreprocessorConfig = serde_json::from_str(&json).expect("preprocessor config");
        Preprocessor::from_config(&cfg).expect("preprocessor")
    })
}

/// Image bytes as the pipeline runs them: the header against the limits, the memory the
/// decode will need, then the bounded decode and preprocessing.
pub fn image_bytes(bytes: &[u8], keep_image: bool) {
    let limits = DecodeLimits { max_pixels: IMAGE_MAX_PIXELS, ..DecodeLimits::default() };
    let pre = preprocessor();
    let header = match read_header(bytes, &limits) {
        Ok(h) => h,
        Err(e) => {
            assert!(matches!(e.status.as_u16(), 400 | 413), "{} for an image header: {}", e.status, e.message);
            return client_error(e);
        }
    };
    assert!(header.width > 0 && header.height > 0 && header.pixels() <= IMAGE_MAX_PIXELS, "{header:?}");
    let _need = header.decode_bytes() + pre.scratch_bytes(header.width, header.height);
    match decode_and_prepare(bytes, &limits, pre, keep_image) {
        Ok(p) => {
            let (w, h) = p.input.image_size;
            // The decode produces what the header announced (EXIF orientation may swap sides).
            assert!(
                (w, h) == (header.width, header.height) || (h, w) == (header.width, header.height),
                "decoded {w}x{h}, header {}x{}",
                header.width,
                header.height
            );
            assert_eq!(p.input.input_size, IMAGE_INPUT_SIZE);
            assert_eq!(p.input.pixels.len(), 3 * IMAGE_INPUT_SIZE.0 * IMAGE_INPUT_SIZE.1);
            assert!(p.input.pixels.iter().all(|v| v.is_finite()));
            match p.image {
                Some(img) => assert_eq!(img.dimensions(), (w, h)),
                None => assert!(!keep_image),
            }
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400, "{} for image bytes: {}", e.status, e.message);
            client_error(e);
        }
    }
}

/// `image_input` target: the bytes as an uploaded image (multipart file, stream frame), and
/// as an image reference string (JSON `image`, chat `image_url.url`: data URL, raw base64,
/// URL) classified, base64-decoded and decoded in turn.
pub fn image_input(data: &[u8]) {
    image_bytes(data, data.first().is_some_and(|b| b & 1 == 1));
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut decoded = None;
    for raw_base64 in [true, false] {
        match parse_image_ref(text, raw_base64, "image") {
            Ok(ImageSource::Base64(b64)) => {
                if decoded.is_none() {
                    decoded = Some(decode_base64(&b64, IMAGE_MAX_BASE64_BYTES));
                }
            }
            Ok(ImageSource::Url(u)) => assert!(u.contains("://")),
            Ok(ImageSource::Bytes(_)) => panic!("a reference string yielded raw bytes"),
            Err(e) => client_error(e),
        }
    }
    match decoded {
        Some(Ok(bytes)) => {
            assert!(!bytes.is_empty() && bytes.len() <= IMAGE_MAX_BASE64_BYTES + 3);
            image_bytes(&bytes, false);
        }
        Some(Err(e)) => client_error(e),
        None => {}
    }
}

// ---- request_json ------------------------------------------------------------------------

fn json_source(s: &ImageSource) {
    match s {
        ImageSource::Url(u) => assert!(u.contains("://")),
        ImageSource::Base64(_) => {}
        ImageSource::Bytes(_) => panic!("a JSON body yielded raw bytes"),
    }
}

/// `request_json` target: the bytes as the JSON body of `POST /v1/detections` and of
/// `POST /v1/chat/completions` (body, image references, options), as the handlers parse them.
pub fn request_json(data: &[u8]) {
    match crate::handlers::parse_json::<DetectionRequest>(data) {
        Ok(req) => {
            match parse_image_ref(&req.image, true, "image") {
                Ok(src) => json_source(&src),
                Err(e) => client_error(e),
            }
            options(req.params().to_options(labels()));
        }
        Err(e) => client_error(e),
    }
    match crate::handlers::parse_json::<ChatCompletionRequest>(data) {
        Ok(req) => {
            match crate::handlers::collect_images(&req.messages) {
                Ok(images) => images.iter().for_each(json_source),
                Err(e) => client_error(e),
            }
            options(req.params().to_options(labels()));
        }
        Err(e) => client_error(e),
    }
}

// ---- multipart ---------------------------------------------------------------------------

/// The body limit (`--max-body-bytes`) of the multipart target: small, so that inputs of a
/// few KiB reach the 413 paths.
pub const MULTIPART_LIMIT: usize = 3 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

/// `multipart` target: the first line is the Content-Type header value, the rest the body of
/// a `POST /v1/detections`, read by the handler's multipart reader (axum's `Multipart`, i.e.
/// multer), then its options and base64 checked as the handler does.
pub fn multipart(data: &[u8]) {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else { return };
    let (content_type, body) = (&data[..nl], &data[nl + 1..]);
    let Ok(content_type) = header::HeaderValue::from_bytes(content_type) else { return };
    // The handler reads the body whole first (`read_body`, which refuses it above the
    // limit), then parses the form from memory.
    if body.len() > MULTIPART_LIMIT {
        return;
    }
    let req = Request::builder()
        .method("POST")
        .uri("/v1/detections")
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(())
        .expect("request");
    let (parts, ()) = req.into_parts();
    let bytes = axum::body::Bytes::copy_from_slice(body);
    match runtime().block_on(crate::handlers::read_multipart(parts, bytes, MULTIPART_LIMIT)) {
        Ok((source, params, _model, _return_image)) => {
            match source {
                ImageSource::Base64(b64) => {
                    if let Err(e) = decode_base64(&b64, MULTIPART_LIMIT) {
                        client_error(e);
                    }
                }
                ImageSource::Bytes(b) => assert!(b.len() <= MULTIPART_LIMIT),
                ImageSource::Url(u) => assert!(u.contains("://")),
            }
            options(params.to_options(labels()));
        }
        Err(e) => client_error(e),
    }
}

// ---- stream_options ----------------------------------------------------------------------

/// `stream_options` target: a `/v1/stream` text message (options), as the stream parses it.
pub fn stream_options(data: &[u8]) {
    // WebSocket text messages are UTF-8 (refused before the handler otherwise).
    let Ok(text) = std::str::from_utf8(data) else { return };
    options(crate::stream::parse_options(text, labels()).map(|o| o.detect));
}
