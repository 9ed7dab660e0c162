//! Image inputs: data URLs, raw base64, http(s) URLs and uploaded bytes, decoded with a
//! pixel limit read from the header before decoding (decompression bombs), then
//! preprocessed for the model. Runs on tokio's blocking pool, off the inference thread.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use base64::Engine;
use image::RgbImage;
use rtdetr::io::decode::{DecodeLimits, ImageHeader};
use rtdetr::io::preprocess::Preprocessor;
use rtdetr::PreparedImage;

use crate::error::ApiError;

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Base64 payload (from a data URL or raw), not yet decoded.
    Base64(String),
    /// An http(s) URL to fetch.
    Url(String),
    /// Uploaded bytes (multipart, stream frames).
    Bytes(Bytes),
}

/// Classifies an image reference string: `data:image/...;base64,...`, `http(s)://...`, or
/// (when `allow_raw_base64`) bare base64.
pub fn parse_image_ref(s: &str, allow_raw_base64: bool, param: &str) -> Result<ImageSource, ApiError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ApiError::bad_request("missing_image", "the image is empty").with_param(param));
    }
    // `get` rather than slicing: byte 5 of client text need not be a character boundary.
    if let Some(rest) = t.get(..5).filter(|p| p.eq_ignore_ascii_case("data:")).and(t.get(5..)) {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            ApiError::bad_request("invalid_image_url", "malformed data URL: no ',' before the data").with_param(param)
        })?;
        let mut parts = meta.split(';');
        let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let is_base64 = parts.any(|p| p.trim().eq_ignore_ascii_case("base64"));
        if !mime.is_empty() && !mime.starts_with("image/") && mime != "application/octet-stream" {
            return Err(ApiError::unsupported_media(
                "unsupported_media_type",
                format!("data URL has media type {mime:?}; send an image (image/jpeg, image/png, image/webp, ...)"),
            )
            .with_param(param));
        }
        if !is_base64 {
            return Err(ApiError::bad_request("invalid_image_url", "data URLs must be base64-encoded (';base64,')")
                .with_param(param));
        }
        return Ok(ImageSource::Base64(data.to_string()));
    }
    if t.contains("://") {
        // http(s) is checked when fetching; other schemes are refused there with a clear message.
        return Ok(ImageSource::Url(t.to_string()));
    }
    if allow_raw_base64 {
        return Ok(ImageSource::Base64(t.to_string()));
    }
    Err(ApiError::bad_request(
        "invalid_image_url",
        "image_url.url must be a data URL (data:image/png;base64,...) or an http(s) URL",
    )
    .with_param(param))
}

/// Decodes base64 (standard or URL-safe alphabet, padded or not, whitespace ignored).
pub fn decode_base64(data: &str, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact.len() / 4 * 3 > max_bytes {
        return Err(ApiError::too_large("image_too_large", format!("the image is larger than {max_bytes} bytes")));
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for e in engines {
        if let Ok(bytes) = e.decode(&compact) {
            if bytes.is_empty() {
                break;
            }
            return Ok(bytes);
        }
    }
    Err(ApiError::bad_request("invalid_base64", "the image is not valid base64"))
}

/// An image decoded and preprocessed for the model.
pub struct Prepared {
    /// Pixels for the network, their input size and the decoded image's (width, height).
    pub input: PreparedImage,
    /// The decoded image, kept when an annotated image is requested.
    pub image: Option<RgbImage>,
    pub decode_time: Duration,
}

/// Reads the image's header and checks it against `limits`: 400 for unsupported formats
/// and unreadable headers, 413 (`image_too_large`) above the pixel or side limit or the
/// JPEG scan limit. Cheap: no pixels are decoded.
pub fn read_header(bytes: &[u8], limits: &DecodeLimits) -> Result<ImageHeader, ApiError> {
    let header = ImageHeader::read(bytes).map_err(|e| {
        let msg = image_message(e);
        let code = if msg.contains("format") { "unsupported_image_format" } else { "invalid_image" };
        ApiError::bad_request(code, msg)
    })?;
    header.check(limits).map_err(|e| {
        ApiError::too_large("image_too_large", format!("the image ({}x{}) has {e}", header.width, header.height))
    })?;
    Ok(header)
}

fn image_message(e: rtdetr::Error) -> String {
    match e {
        rtdetr::Error::Image(m) => m,
        other => other.to_string(),
    }
}

/// Decodes (EXIF orientation applied) under `limits` and preprocesses. The header was
/// checked by [`read_header`]. Errors: 400 for undecodable data (corrupt, truncated, frames
/// larger than the header says, cancelled).
pub fn decode_and_prepare(
    bytes: &[u8],
    limits: &DecodeLimits,
    preprocessor: &Preprocessor,
    keep_image: bool,
) -> Result<Prepared, ApiError> {
    let start = Instant::now();
    let img = rtdetr::io::decode::decode_image_limited(bytes, limits)
        .map_err(|e| ApiError::bad_request("invalid_image", image_message(e)))?;
    if limits.cancel.as_ref().is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(ApiError::bad_request("invalid_image", "the decode was cancelled"));
    }
    let input = preprocessor
        .prepare(&img)
        .map_err(|e| ApiError::bad_request("invalid_image", format!("cannot preprocess the image: {e}")))?;
    metrics::counter!(crate::metrics::IMAGES).increment(1);
    Ok(Prepared { input, image: keep_image.then_some(img), decode_time: start.elapsed() })
}

/// Draws the detections on the image itself (no second full-size copy) and encodes a JPEG
/// data URL.
pub fn annotated_jpeg_data_url(mut image: RgbImage, detections: &[rtdetr::Detection]) -> Result<String, ApiError> {
    rtdetr::io::draw::annotate_in_place(&mut image, detections);
    // JPEG stores each side in 16 bits: a longer side (a valid input, e.g. a 70000x100
    // panorama) is scaled down to fit, keeping the aspect ratio.
    let (w, h) = image.dimensions();
    if w.max(h) > MAX_JPEG_SIDE {
        let scale = f64::from(MAX_JPEG_SIDE) / f64::from(w.max(h));
        let fit = |v: u32| ((f64::from(v) * scale).round() as u32).clamp(1, MAX_JPEG_SIDE);
        image = image::imageops::resize(&image, fit(w), fit(h), image::imageops::FilterType::Triangle);
    }
    let mut jpeg = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90);
    image
        .write_with_encoder(encoder)
        .map_err(|e| ApiError::internal(format!("cannot encode the annotated image: {e}")))?;
    Ok(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(&jpeg)))
}

/// The largest side a baseline JPEG can store.
const MAX_JPEG_SIDE: u32 = 65_535;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_image_refs_are_client_errors() {
        // Byte 5 inside a multi-byte character used to panic (a 500).
        for s in ["abcdé", "éééé", "dataé:xx", "data\u{e9}", "ééééé,AAAA"] {
            match parse_image_ref(s, true, "image") {
                Ok(ImageSource::Base64(_)) => {}
                other => panic!("{s:?}: {:?}", other.map(|_| ()).map_err(|e| e.status)),
            }
            assert_eq!(parse_image_ref(s, false, "image").unwrap_err().status, 400, "{s:?}");
        }
        assert!(decode_base64("abcdé", 1 << 20).is_err());
    }

    #[test]
    fn annotated_images_longer_than_jpeg_allows_are_scaled_down() {
        let img = RgbImage::from_pixel(70_000, 3, image::Rgb([10, 200, 30]));
        let url = annotated_jpeg_data_url(img, &[]).expect("a valid input is no server error");
        let b64 = url.strip_prefix("data:image/jpeg;base64,").expect("a JPEG data URL");
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let (w, h) = image::load_from_memory(&bytes).unwrap().to_rgb8().dimensions();
        assert_eq!((w, h), (65_535, 3));
    }

    #[test]
    fn image_refs() {
        assert!(
            matches!(parse_image_ref("data:image/png;base64,AAAA", false, "x"), Ok(ImageSource::Base64(s)) if s == "AAAA")
        );
        assert!(matches!(parse_image_ref("DATA:;base64,AAAA", false, "x"), Ok(ImageSource::Base64(_))));
        assert_eq!(parse_image_ref("data:text/plain;base64,AAAA", false, "x").unwrap_err().status, 415);
        assert_eq!(parse_image_ref("data:image/png,rawbytes", false, "x").unwrap_err().status, 400);
        assert!(matches!(parse_image_ref("https://example.com/a.png", false, "x"), Ok(ImageSource::Url(_))));
        assert!(matches!(parse_image_ref("iVBORw0KGgo=", true, "x"), Ok(ImageSource::Base64(_))));
        assert_eq!(parse_image_ref("iVBORw0KGgo=", false, "x").unwrap_err().status, 400);
        assert_eq!(parse_image_ref("  ", true, "x").unwrap_err().status, 400);
    }

    #[test]
    fn base64_variants() {
        assert_eq!(decode_base64("aGVsbG8=", 100).unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\nbG8", 100).unwrap(), b"hello");
        assert_eq!(decode_base64("-_8", 100).unwrap(), vec![0xfb, 0xff]);
        assert_eq!(decode_base64("not base64!!", 100).unwrap_err().code, Some("invalid_base64"));
        assert_eq!(decode_base64("", 100).unwrap_err().code, Some("invalid_base64"));
        assert_eq!(decode_base64(&"A".repeat(400), 100).unwrap_err().status, 413);
    }
}
