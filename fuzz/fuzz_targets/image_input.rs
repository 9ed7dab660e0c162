//! The image input path: image reference strings (data URL, raw base64, URL) classified and
//! base64-decoded, image bytes sniffed, their header checked against the limits, decoded
//! (EXIF orientation) and preprocessed, as the pipeline runs every image.
//! The harness is `rtdetr_server::fuzzing::image_input` (shared with the regression tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtdetr_server::fuzzing::image_input(data));
