//! Multipart bodies of `POST /v1/detections` through the handler's multipart reader.
//! Input: the Content-Type header value, a newline, the body.
//! The harness is `rtdetr_server::fuzzing::multipart` (shared with the regression tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtdetr_server::fuzzing::multipart(data));
